import { spawn } from "node:child_process";
import http from "node:http";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { startUpstream, upstreamCommand, type UpstreamServer } from "../../src/cli/upstream.js";

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function request(
  port: number,
  path: string,
  opts: { method?: string; headers?: Record<string, string | string[]>; body?: string } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port, path, method: opts.method ?? "GET", headers: opts.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(opts.body);
  });
}

function json(reply: Reply): Record<string, unknown> {
  return JSON.parse(reply.body.toString("utf8")) as Record<string, unknown>;
}

describe("demo upstream", () => {
  let up: UpstreamServer;

  beforeAll(async () => {
    up = await startUpstream({ port: 0 });
  });
  afterAll(async () => {
    await up.close();
  });
  beforeEach(async () => {
    await request(up.port, "/__hits", { method: "DELETE" });
  });

  it("listens on a free loopback port", () => {
    expect(up.host).toBe("127.0.0.1");
    expect(up.port).toBeGreaterThan(0);
  });

  it("echoes a request on /anything", async () => {
    const r = await request(up.port, "/anything/a/b?x=1&y=2&x=3&empty=", {
      method: "POST",
      headers: { "X-Test-Header": "hello", "Content-Type": "text/plain" },
      body: "héllo body",
    });
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("application/json");
    expect(r.headers["x-upstream-port"]).toBe(String(up.port));
    const e = json(r);
    expect(e.method).toBe("POST");
    expect(e.path).toBe("/anything/a/b");
    expect(e.query).toEqual({ x: ["1", "3"], y: "2", empty: "" });
    expect((e.headers as Record<string, string>)["x-test-header"]).toBe("hello");
    expect(e.body).toBe("héllo body");
    expect(e.url).toBe(`http://127.0.0.1:${up.port}/anything/a/b?x=1&y=2&x=3&empty=`);
    expect(e.origin).toBe("127.0.0.1");
  });

  it("accepts any method on /anything", async () => {
    for (const method of ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"]) {
      const r = await request(up.port, "/anything", { method });
      expect(r.status).toBe(200);
      expect(json(r).method).toBe(method);
    }
    const head = await request(up.port, "/anything", { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.body.length).toBe(0);
  });

  it("does not treat /anythingelse as /anything", async () => {
    const r = await request(up.port, "/anythingelse");
    expect(r.status).toBe(404);
  });

  it("answers /status/:code with that status", async () => {
    const r = await request(up.port, "/status/418");
    expect(r.status).toBe(418);
    expect(json(r)).toEqual({ status: 418 });
    expect(r.headers["x-upstream-port"]).toBe(String(up.port));

    const noBody = await request(up.port, "/status/204");
    expect(noBody.status).toBe(204);
    expect(noBody.body.length).toBe(0);

    const err = await request(up.port, "/status/503", { method: "POST" });
    expect(err.status).toBe(503);
    expect(json(err)).toEqual({ status: 503 });

    expect((await request(up.port, "/status/99")).status).toBe(400);
    expect((await request(up.port, "/status/abc")).status).toBe(404);
  });

  it("delays /delay/:ms and then echoes", async () => {
    const start = Date.now();
    const r = await request(up.port, "/delay/150?k=v");
    const took = Date.now() - start;
    expect(r.status).toBe(200);
    expect(took).toBeGreaterThanOrEqual(140);
    const e = json(r);
    expect(e.path).toBe("/delay/150");
    expect(e.query).toEqual({ k: "v" });
  });

  it("sends n bytes on /bytes/:n", async () => {
    const r = await request(up.port, "/bytes/1000");
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("application/octet-stream");
    expect(r.headers["content-length"]).toBe("1000");
    expect(r.body.length).toBe(1000);
    expect(r.headers["x-upstream-port"]).toBe(String(up.port));

    const zero = await request(up.port, "/bytes/0");
    expect(zero.body.length).toBe(0);
  });

  it("caps /bytes at 10 MiB", async () => {
    const r = await request(up.port, "/bytes/20000000");
    expect(r.body.length).toBe(10 * 1024 * 1024);
  });

  it("sets Cache-Control on /cache/:seconds", async () => {
    const r = await request(up.port, "/cache/30");
    expect(r.status).toBe(200);
    expect(r.headers["cache-control"]).toBe("public, max-age=30");
    expect(json(r).path).toBe("/cache/30");
  });

  it("answers 404 JSON for anything else", async () => {
    for (const path of ["/", "/nope", "/status", "/status/200/x", "/bytes/-1"]) {
      const r = await request(up.port, path);
      expect(r.status, path).toBe(404);
      expect(json(r)).toEqual({ message: "not found" });
      expect(r.headers["x-upstream-port"]).toBe(String(up.port));
    }
  });

  it("counts hits per path without the query and resets them", async () => {
    await request(up.port, "/anything/x?a=1");
    await request(up.port, "/anything/x?a=2");
    await request(up.port, "/status/500");
    await request(up.port, "/missing");
    const hits = await request(up.port, "/__hits");
    expect(hits.status).toBe(200);
    expect(hits.headers["x-upstream-port"]).toBe(String(up.port));
    expect(json(hits)).toEqual({ "/anything/x": 2, "/status/500": 1, "/missing": 1 });

    const reset = await request(up.port, "/__hits", { method: "DELETE" });
    expect(reset.status).toBe(204);
    expect(json(await request(up.port, "/__hits"))).toEqual({});
    expect((await request(up.port, "/__hits", { method: "POST" })).status).toBe(405);
  });

  it("tells two upstreams apart by X-Upstream-Port and keeps separate hits", async () => {
    const other = await startUpstream({ host: "127.0.0.1", port: 0 });
    try {
      expect(other.port).not.toBe(up.port);
      const r = await request(other.port, "/anything");
      expect(r.headers["x-upstream-port"]).toBe(String(other.port));
      expect(json(await request(up.port, "/__hits"))).toEqual({});
    } finally {
      await other.close();
    }
  });

  it("closes promptly with a keep-alive connection open", async () => {
    const other = await startUpstream({ port: 0 });
    const agent = new http.Agent({ keepAlive: true });
    await new Promise<void>((resolve, reject) => {
      http
        .get({ host: "127.0.0.1", port: other.port, path: "/anything", agent }, (res) => {
          res.resume();
          res.on("end", resolve);
        })
        .on("error", reject);
    });
    const start = Date.now();
    await other.close();
    expect(Date.now() - start).toBeLessThan(1000);
    agent.destroy();
  });

  it("rejects when the port is taken", async () => {
    await expect(startUpstream({ port: up.port })).rejects.toMatchObject({ code: "EADDRINUSE" });
  });
});

describe("krs upstream command", () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it("rejects bad arguments with exit code 2", async () => {
    const stderr = vi.spyOn(console, "error").mockImplementation(() => undefined);
    expect(await upstreamCommand(["--bogus"])).toBe(2);
    expect(await upstreamCommand(["--port", "abc"])).toBe(2);
    expect(await upstreamCommand(["--port"])).toBe(2);
    expect(stderr.mock.calls.map((c) => String(c[0]))).toEqual([
      expect.stringContaining("unknown argument: --bogus"),
      expect.stringContaining("invalid port: abc"),
      expect.stringContaining("--port needs a value"),
    ]);
  });

  it("fails with exit code 1 when the port is taken", async () => {
    const stderr = vi.spyOn(console, "error").mockImplementation(() => undefined);
    const up = await startUpstream({ port: 0 });
    try {
      expect(await upstreamCommand(["--port", String(up.port)])).toBe(1);
      expect(String(stderr.mock.calls[0]?.[0])).toContain("already in use");
    } finally {
      await up.close();
    }
  });

  it("runs in a child process, prints its URL and stops on SIGTERM", async () => {
    const script = [
      'import { upstreamCommand } from "./src/cli/upstream.ts";',
      "process.exitCode = await upstreamCommand(process.argv.slice(2));",
    ].join("\n");
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "--input-type=module", "-e", script, "--", "--port=0", "--host", "127.0.0.1"],
      { cwd: process.cwd(), stdio: ["ignore", "pipe", "pipe"] },
    );
    try {
      const line = await new Promise<string>((resolve, reject) => {
        let out = "";
        child.stdout.on("data", (d: Buffer) => {
          out += d.toString();
          if (out.includes("\n")) resolve(out.trim());
        });
        child.on("exit", (code) => reject(new Error(`exited early with ${code}`)));
        setTimeout(() => reject(new Error("no output")), 15_000);
      });
      const m = /^upstream listening on http:\/\/127\.0\.0\.1:(\d+)$/.exec(line);
      expect(m, line).not.toBeNull();
      const port = Number(m?.[1]);
      const r = await request(port, "/anything");
      expect(r.status).toBe(200);
      const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
    }
  }, 20_000);
});

/**
 * The local gateway as a user meets it: routing, strip_path, Kong's error shapes, phases,
 * PRIORITY order, scoping precedence, kong.response.exit, kong.ctx, plugin errors.
 * Real nginx + lua-nginx-module, real HTTP, the demo upstream behind it.
 */
import { request as httpRequest } from "node:http";
import { createServer, type Server } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { gateway, getJson, requestWithHost, stopAll, upstream, type TestGateway } from "../helpers/services.js";

let gw: TestGateway;
let upPort: number;

/** An upstream that records the exact request head it receives. */
const raw = { port: 0, heads: [] as string[], server: undefined as Server | undefined };

beforeAll(async () => {
  raw.server = createServer((socket) => {
    let data = "";
    socket.on("data", (chunk) => {
      data += chunk.toString("latin1");
      const end = data.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = data.slice(0, end);
      raw.heads.push(head);
      data = "";
      const via = head.startsWith("GET /base/via ") ? "Via: 1.0 upstream-proxy\r\n" : "";
      socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n${via}\r\nok`);
    });
    socket.on("error", () => undefined);
  });
  await new Promise<void>((r) => raw.server!.listen(0, "127.0.0.1", () => r()));
  raw.port = (raw.server.address() as { port: number }).port;
  const up = await upstream();
  upPort = up.port;
  const url = `http://127.0.0.1:${up.port}`;
  gw = await gateway({
    _format_version: "3.0",
    services: [
      {
        name: "svc",
        url,
        plugins: [{ name: "krs-test-second", config: { tag: "service" } }],
        routes: [
          { name: "strip", paths: ["/strip"] },
          { name: "nostrip", paths: ["/keep"], strip_path: false },
          { name: "longer", paths: ["/strip/longer"], strip_path: true, plugins: [{ name: "krs-test-first", config: { tag: "route" } }] },
          { name: "post-only", paths: ["/methods"], methods: ["POST"] },
          { name: "by-host", hosts: ["api.example.test"], paths: ["/"] },
          { name: "wild-host", hosts: ["*.wild.test"], paths: ["/"] },
          { name: "exit", paths: ["/exit"], plugins: [{ name: "krs-test-first", config: { tag: "exiter", exit_status: 418 } }] },
          { name: "exit-late", paths: ["/exit-late"], plugins: [{ name: "krs-test-first", config: { tag: "late", exit_status: 403, exit_in: "header_filter" } }] },
          { name: "exit-404", paths: ["/exit-404"], plugins: [{ name: "krs-test-first", config: { tag: "nobody", exit_status: 404, exit_body: false } }] },
          { name: "exit-401", paths: ["/exit-401"], plugins: [{ name: "krs-test-first", config: { tag: "nobody", exit_status: 401, exit_body: false } }] },
          { name: "serialize", paths: ["/serialize"], plugins: [{ name: "krs-test-second", config: { tag: "ser", serialize_probe: true } }] },
          { name: "boom", paths: ["/boom"], plugins: [{ name: "krs-test-first", config: { tag: "boom", error_in: "access" } }] },
          { name: "boom-late", paths: ["/boom-late"], plugins: [
            { name: "krs-test-first", config: { tag: "boom-late", error_in: "header_filter" } },
            { name: "krs-test-second", config: { tag: "after-boom" } },
          ] },
          { name: "boom-log", paths: ["/boom-log"], plugins: [
            { name: "krs-test-first", config: { tag: "boom-log", error_in: "log" } },
            { name: "krs-test-second", config: { tag: "after-boom-log" } },
          ] },
          { name: "auth", paths: ["/auth"], plugins: [{ name: "krs-test-auth" }] },
          { name: "auth-route", paths: ["/auth-route"], plugins: [
            { name: "krs-test-auth" },
            { name: "krs-test-second", config: { tag: "route" } },
          ] },
        ],
      },
      { name: "prefixed", url: `${url}/anything/base`, routes: [{ name: "prefixed", paths: ["/pre"] }] },
      { name: "down", url: "http://127.0.0.1:1", retries: 0, routes: [{ name: "down", paths: ["/down"] }] },
      { name: "raw", url: `http://127.0.0.1:${raw.port}/base`, routes: [{ name: "raw", paths: ["/raw"] }] },
      // Unnamed services and routes get distinct derived ids.
      { url, routes: [{ paths: ["/unnamed-a"] }] },
      { url, routes: [{ paths: ["/unnamed-b"] }] },
    ],
    consumers: [
      { username: "alice", plugins: [{ name: "krs-test-second", config: { tag: "alice" } }] },
      { username: "bob" },
    ],
    plugins: [{ name: "krs-test-second", config: { tag: "global" } }],
  });
});

afterAll(async () => {
  raw.server?.close();
  await stopAll();
});

/** The request head the raw upstream got for the last request. */
async function rawHeadFor(path: string): Promise<string> {
  raw.heads.length = 0;
  const res = await fetch(`${gw.proxyUrl}${path}`);
  await res.arrayBuffer();
  expect(res.status).toBe(200);
  return raw.heads[raw.heads.length - 1];
}

describe("routing", () => {
  it("strips the matched prefix (strip_path true)", async () => {
    const { status, body } = await getJson(`${gw.proxyUrl}/strip/anything/x?a=1&a=2`);
    expect(status).toBe(200);
    expect(body.path).toBe("/anything/x");
    expect(body.query).toEqual({ a: ["1", "2"] });
    expect(body.headers["x-forwarded-prefix"]).toBe("/strip");
    expect(body.headers.host).toBe(`127.0.0.1:${upPort}`);
  });

  it("keeps the path with strip_path false", async () => {
    const { status, body } = await getJson(`${gw.proxyUrl}/keep`);
    // The upstream has no /keep: its own 404 comes back through the gateway.
    expect(status).toBe(404);
    expect(body).toEqual({ message: "not found" });
  });

  it("prefers the longest matching prefix", async () => {
    const { body, headers } = await getJson(`${gw.proxyUrl}/strip/longer/anything`);
    expect(body.path).toBe("/anything");
    expect(headers.get("x-first-tag")).toBe("route");
  });

  it("joins the service path with the stripped request path", async () => {
    const { body } = await getJson(`${gw.proxyUrl}/pre/more`);
    expect(body.path).toBe("/anything/base/more");
  });

  it("matches methods and answers Kong's 404 otherwise", async () => {
    expect((await getJson(`${gw.proxyUrl}/methods/anything`, { method: "POST", body: "hi" })).body.body).toBe("hi");
    const miss = await getJson(`${gw.proxyUrl}/methods/anything`);
    expect(miss.status).toBe(404);
    // Kong's error template: pretty JSON carrying the request id of the response.
    expect(miss.body).toEqual({ message: "no Route matched with those values", request_id: miss.headers.get("x-kong-request-id") });
    expect(miss.headers.get("content-type")).toBe("application/json; charset=utf-8");
  });

  it("appends its Via to the client's (upstream) and to the upstream's (client), as Kong", async () => {
    raw.heads.length = 0;
    const res = await fetch(`${gw.proxyUrl}/raw/via`, { headers: { via: "1.1 client-proxy" } });
    await res.arrayBuffer();
    expect(raw.heads[0].split("\r\n")).toContain("Via: 1.1 client-proxy, 1.1 krs-gateway/0.1.0");
    expect(raw.heads[0].split("\r\n")).toContain("Connection: keep-alive");
    expect(res.headers.get("via")).toBe("1.0 upstream-proxy, 1.1 krs-gateway/0.1.0");
    expect(res.headers.get("x-kong-proxy-latency")).toMatch(/^\d+$/);
  });

  it("matches exact and wildcard hosts", async () => {
    expect((await requestWithHost(`${gw.proxyUrl}/anything`, "api.example.test")).status).toBe(200);
    expect((await requestWithHost(`${gw.proxyUrl}/anything`, "a.wild.test:8000")).status).toBe(200);
    expect((await requestWithHost(`${gw.proxyUrl}/anything`, "other.test")).status).toBe(404);
  });

  it("re-escapes the decoded path: no header injection or path/query mix-up upstream", async () => {
    const injected = await rawHeadFor("/raw/a%20HTTP/1.1%0D%0AX-Injected:%20yes%0D%0AX-Foo:%20b");
    const [requestLine, ...headers] = injected.split("\r\n");
    expect(requestLine).toBe("GET /base/a%20HTTP/1.1%0D%0AX-Injected:%20yes%0D%0AX-Foo:%20b HTTP/1.1");
    expect(headers.some((h) => /^x-injected/i.test(h))).toBe(false);
    expect(headers).toContain("X-Forwarded-Path: /raw/a%20HTTP/1.1%0D%0AX-Injected:%20yes%0D%0AX-Foo:%20b");
    const mixed = await rawHeadFor("/raw/a%3Fb=1?x=2");
    expect(mixed.split("\r\n")[0]).toBe("GET /base/a%3Fb=1?x=2 HTTP/1.1");
    const hash = await rawHeadFor("/raw/a%23c%25d/%C3%BC");
    expect(hash.split("\r\n")[0]).toBe("GET /base/a%23c%25d/%C3%BC HTTP/1.1");
  });

  it("gives unnamed services and routes distinct ids", async () => {
    expect((await getJson(`${gw.proxyUrl}/unnamed-a/anything`)).status).toBe(200);
    expect((await getJson(`${gw.proxyUrl}/unnamed-b/anything`)).status).toBe(200);
  });

  it("answers 502 in Kong's shape when the upstream refuses", async () => {
    const { status, body, headers } = await getJson(`${gw.proxyUrl}/down`);
    expect(status).toBe(502);
    expect(body).toEqual({ message: "An invalid response was received from the upstream server", request_id: headers.get("x-kong-request-id") });
    // nginx's internal redirect to the error page drops ngx.ctx; the gateway restores it,
    // so header_filter and log still see the plugins chosen in access.
    expect(headers.get("x-second-source")).toBe("error");
    await expect.poll(() => gw.errorLog().some((l) => l.includes("log phase ran tag=global status=502 source=error"))).toBe(true);
  });
});

describe("request id", () => {
  it("is 32 hex digits, the same to the client and the upstream, and unique across new connections", async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 200; i++) {
      raw.heads.length = 0;
      // A new connection each time, so that both workers answer some of them.
      const id = await new Promise<string>((resolve, reject) => {
        const req = httpRequest(`${gw.proxyUrl}/raw/id`, { agent: false }, (res) => {
          res.resume();
          res.on("end", () => resolve(String(res.headers["x-kong-request-id"] ?? "")));
        });
        req.on("error", reject);
        req.end();
      });
      expect(id).toMatch(/^[0-9a-f]{32}$/);
      expect(raw.heads[raw.heads.length - 1]).toContain(`\r\nX-Kong-Request-Id: ${id}\r\n`);
      ids.add(id);
    }
    expect(ids.size).toBe(200);
    expect(gw.errorLog().some((l) => l.includes("uninitialized variable"))).toBe(false);
  });
});

describe("plugins", () => {
  it("runs phases in order and plugins by PRIORITY (2000 before 1000)", async () => {
    const { headers } = await getJson(`${gw.proxyUrl}/strip/longer/anything`);
    expect(headers.get("x-trace")).toBe(
      "krs-test-second:rewrite,krs-test-first:access,krs-test-second:access,krs-test-first:header_filter,krs-test-second:header_filter",
    );
  });

  it("passes service-request headers set in access to the upstream", async () => {
    const { body } = await getJson(`${gw.proxyUrl}/strip/longer/anything`);
    expect(body.headers["x-trace-first"]).toBe("route");
    expect(body.headers["x-trace-second"]).toBe("service");
  });

  it("keeps kong.ctx.plugin private to each plugin", async () => {
    const { headers } = await getJson(`${gw.proxyUrl}/strip/longer/anything`);
    expect(headers.get("x-first-ctx")).toBe("route");
    expect(headers.get("x-second-ctx")).toBe("service");
  });

  it("applies Kong's scoping precedence", async () => {
    // global < service < route; consumer-scoped beats service-scoped
    expect((await getJson(`${gw.proxyUrl}/down-no-route`)).headers.get("x-second-tag")).toBe("global");
    expect((await getJson(`${gw.proxyUrl}/strip/anything`)).headers.get("x-second-tag")).toBe("service");
    const alice = await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { "x-consumer": "alice" } });
    expect(alice.headers.get("x-second-tag")).toBe("alice");
    expect(alice.headers.get("x-second-consumer")).toBe("alice");
    const bob = await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { "x-consumer": "bob" } });
    expect(bob.headers.get("x-second-tag")).toBe("service");
    // Kong's order: consumer+route+service, consumer+route, consumer+service, route+service,
    // consumer, route, service, global. So consumer alone beats route alone…
    const aliceOnRoute = await getJson(`${gw.proxyUrl}/auth-route/anything`, { headers: { "x-consumer": "alice" } });
    expect(aliceOnRoute.headers.get("x-second-tag")).toBe("alice");
    // …and route beats service.
    const bobOnRoute = await getJson(`${gw.proxyUrl}/auth-route/anything`, { headers: { "x-consumer": "bob" } });
    expect(bobOnRoute.headers.get("x-second-tag")).toBe("route");
  });

  it("kong.response.exit: JSON body, headers, header_filter and log still run", async () => {
    const { status, body, headers } = await getJson(`${gw.proxyUrl}/exit`);
    expect(status).toBe(418);
    expect(headers.get("content-type")).toBe("application/json; charset=utf-8");
    expect(headers.get("x-exit-by")).toBe("krs-test-first");
    expect(body.message).toBe("exit by krs-test-first");
    // lower-priority plugins did not run in access after the exit…
    expect(body.trace).toBe("krs-test-second:rewrite,krs-test-first:access");
    // …but header_filter ran, and the source is "exit"
    expect(headers.get("x-first-source")).toBe("exit");
    expect(headers.get("x-trace")).toContain("krs-test-first:header_filter");
    await expect.poll(() => gw.errorLog().some((l) => l.includes("log phase ran tag=exiter status=418 source=exit"))).toBe(true);
  });

  it("a plugin raising an error → 500 in Kong's shape and an [error] line naming the plugin", async () => {
    const { status, body, headers } = await getJson(`${gw.proxyUrl}/boom`);
    expect(status).toBe(500);
    expect(body).toEqual({ message: "An unexpected error occurred", request_id: headers.get("x-kong-request-id") });
    expect(headers.get("x-first-source")).toBe("error");
    const lines = gw.errorLog().filter((l) => l.includes("[error]") && l.includes("[krs-test-first]") && l.includes("boom from boom"));
    expect(lines.length).toBeGreaterThan(0);
  });

  it("an error in one plugin's header_filter or log is logged naming it, and the plugins after it still run that phase", async () => {
    const late = await getJson(`${gw.proxyUrl}/boom-late/anything`);
    expect(late.status).toBe(200);
    expect(late.headers.get("x-second-tag")).toBe("after-boom");
    const log = await getJson(`${gw.proxyUrl}/boom-log/anything`);
    expect(log.status).toBe(200);
    await expect.poll(() => gw.errorLog().some((l) => l.includes("log phase ran tag=after-boom-log"))).toBe(true);
    const lines = gw.errorLog();
    expect(lines.some((l) => /\[error\].*\[kong\] \[krs-test-first\] error in header_filter phase: .*boom from boom-late in header_filter/.test(l))).toBe(true);
    expect(lines.some((l) => /\[error\].*\[kong\] \[krs-test-first\] error in log phase: .*boom from boom-log in log/.test(l))).toBe(true);
    // The gateway's own lines after a failed handler carry no plugin's name.
    expect(lines.filter((l) => l.includes("[krs-test-first]") && !l.includes("boom from") && !l.includes("log phase ran") && !/stack traceback|^\s/.test(l))).toEqual([]);
  });

  it("an exit in access still runs the other plugins' header_filter and log, as Kong", async () => {
    const { status, headers } = await getJson(`${gw.proxyUrl}/exit`);
    expect(status).toBe(418);
    expect(headers.get("x-second-tag")).toBe("service");
    await expect.poll(() => gw.errorLog().some((l) => l.includes("log phase ran tag=service status=418 source=exit"))).toBe(true);
  });

  it("kong.response.exit in header_filter replaces the upstream body and keeps the connection sound", async () => {
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${gw.proxyUrl}/exit-late/anything`);
      const body = await res.text();
      expect(res.status).toBe(403);
      expect(body).toBe("replaced by krs-test-first");
      expect(res.headers.get("content-length")).toBe(String(body.length));
      // the next request on the same keep-alive connection is answered normally
      const next = await getJson(`${gw.proxyUrl}/strip/anything`);
      expect(next.status).toBe(200);
      expect(next.body.path).toBe("/anything");
    }
  });

  it("an exit without a body: Kong's error body for an error-page status, else nginx's page", async () => {
    const notFound = await fetch(`${gw.proxyUrl}/exit-404`);
    expect(notFound.status).toBe(404);
    expect(notFound.headers.get("content-type")).toBe("application/json; charset=utf-8");
    expect(await notFound.json()).toEqual({ message: "Not found", request_id: notFound.headers.get("x-kong-request-id") });
    const notFoundText = await fetch(`${gw.proxyUrl}/exit-404`, { headers: { accept: "text/plain" } });
    expect(await notFoundText.text()).toBe(`Not found\nrequest_id: ${notFoundText.headers.get("x-kong-request-id")}\n`);
    // 401 is not one of Kong's error_page statuses: nginx answers its own page, as under Kong.
    const unauthorized = await fetch(`${gw.proxyUrl}/exit-401`);
    expect(unauthorized.status).toBe(401);
    expect(unauthorized.headers.get("content-type")).toBe("text/html; charset=UTF-8");
    expect(await unauthorized.text()).toContain("<title>401 Authorization Required</title>");
  });

  it("kong.log.serialize: credentials redacted, dotted set_serialize_value, copies of entities", async () => {
    for (let i = 0; i < 3; i++) {
      const res = await getJson(`${gw.proxyUrl}/serialize/anything`, { headers: { authorization: "Bearer s3cr3t", "x-secret": "pw" } });
      // the log plugin set service.port = 1 on its entry: the live service is unchanged
      expect(res.status).toBe(200);
    }
    await expect.poll(() => gw.errorLog().some((l) => l.includes("serialized tag=ser authorization=REDACTED x-secret=HIDDEN added=krs-test-second"))).toBe(true);
    expect(gw.errorLog().join("\n")).not.toContain("s3cr3t");
  });

  it("kong.request.get_header sees a header behind 100 others", async () => {
    const headers: Record<string, string> = {};
    for (let i = 0; i < 100; i++) headers[`x-junk-${i}`] = "1";
    headers["x-consumer"] = "alice";
    const res = await getJson(`${gw.proxyUrl}/auth/anything`, { headers });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-second-consumer")).toBe("alice");
  });

  it("logs no unexpected errors", () => {
    expect(gw.unexpectedErrors([/boom from boom/, /connect\(\) failed/])).toEqual([]);
  });
});

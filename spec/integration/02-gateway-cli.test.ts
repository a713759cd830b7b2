/**
 * `krs gateway start|stop` as a user runs it: a bad config, a taken port or a missing
 * nginx → non-zero exit, one line naming the entity and field, and nothing left running.
 */
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { FIXTURE_LUA_PATH, FIXTURE_PLUGINS, ROOT, freePort, getJson, startRedis, stopAll, tempDir, upstream } from "../helpers/services.js";

afterAll(stopAll);

function krs(args: string[], env: Record<string, string> = {}) {
  const res = spawnSync("node", [join(ROOT, "bin", "krs.mjs"), ...args], {
    encoding: "utf8",
    env: { ...process.env, KONG_PLUGINS: ["bundled", ...FIXTURE_PLUGINS].join(","), KONG_LUA_PACKAGE_PATH: FIXTURE_LUA_PATH, ...env },
  });
  return { status: res.status, stdout: res.stdout, stderr: res.stderr };
}

async function startWith(yaml: string, env: Record<string, string> = {}, proxyPort?: number) {
  const prefix = tempDir("cli");
  const file = join(prefix, "kong.yml");
  writeFileSync(file, yaml);
  const proxy = proxyPort ?? (await freePort());
  const admin = await freePort();
  const res = krs(["gateway", "start", "--config", file, "--prefix", prefix, "--proxy", `127.0.0.1:${proxy}`, "--admin", `127.0.0.1:${admin}`], env);
  return { ...res, prefix, proxy, admin };
}

function nothingRunning(prefix: string): boolean {
  const pidFile = join(prefix, "logs", "nginx.pid");
  if (!existsSync(pidFile)) return true;
  const pid = Number(readFileSync(pidFile, "utf8"));
  try {
    process.kill(pid, 0);
    return false;
  } catch {
    return true;
  }
}

const BAD: [string, string, RegExp][] = [
  ["YAML syntax", `_format_version: "3.0"\nservices:\n  - name: a\n   url: [\n`, /YAML syntax error at line \d+/],
  ["unknown plugin", `_format_version: "3.0"\nplugins:\n  - name: no-such-plugin\n`, /plugin 'no-such-plugin' \(plugins\[1\]\): name: plugin 'no-such-plugin' not enabled/],
  ["wrong field type", `_format_version: "3.0"\nplugins:\n  - name: krs-test-first\n    config: { tag: 5 }\n`, /plugin 'krs-test-first' \(plugins\[1\]\): config\.tag: expected a string/],
  ["missing required field", `_format_version: "3.0"\nplugins:\n  - name: krs-test-first\n    config: {}\n`, /config\.tag: required field missing/],
  ["constraint", `_format_version: "3.0"\nplugins:\n  - name: krs-test-first\n    config: { tag: x, exit_status: 700 }\n`, /config\.exit_status: value should be between 100 and 599/],
  ["unknown config field", `_format_version: "3.0"\nplugins:\n  - name: krs-test-first\n    config: { tag: x, colour: red }\n`, /config\.colour: unknown field/],
  ["duplicate service name", `_format_version: "3.0"\nservices:\n  - name: a\n    url: http://127.0.0.1:1\n  - name: a\n    url: http://127.0.0.1:2\n`, /service 'a' \(services\[2\]\): name: duplicate service name 'a'/],
  ["duplicate route name", `_format_version: "3.0"\nservices:\n  - name: a\n    url: http://127.0.0.1:1\n    routes:\n      - { name: r, paths: ["/a"] }\n      - { name: r, paths: ["/b"] }\n`, /route 'r' \(routes\[2\]\) \(in service 'a' \(services\[1\]\)\): name: duplicate route name 'r'/],
  ["route to unknown service", `_format_version: "3.0"\nroutes:\n  - name: r\n    paths: ["/"]\n    service: ghost\n`, /route 'r' \(routes\[1\]\): service: references an unknown service 'ghost'/],
  ["route without matching attributes", `_format_version: "3.0"\nservices:\n  - name: a\n    url: http://127.0.0.1:1\n    routes:\n      - name: r\n`, /route 'r'.*must set one of 'methods', 'hosts', 'headers', 'paths'/],
  ["the same plugin twice on one scope", `_format_version: "3.0"\nplugins:\n  - name: krs-test-first\n    instance_name: a\n    config: { tag: x }\n  - name: krs-test-first\n    instance_name: b\n    config: { tag: y }\n`, /plugin 'krs-test-first' \(plugins\[2\]\): plugin 'krs-test-first' is configured twice on global/],
  ["an upstream TLS setting the local gateway cannot honour", `_format_version: "3.0"\nservices:\n  - name: a\n    url: https://127.0.0.1:1\n    tls_verify: true\n`, /service 'a' \(services\[1\]\): tls_verify: upstream certificate verification is not supported by the local gateway/],
  ["missing _format_version", `services: []\n`, /_format_version: required field missing/],
  ["a regex path PCRE cannot compile (unbalanced parenthesis)", `_format_version: "3.0"\nservices:\n  - name: a\n    url: http://127.0.0.1:1\n    routes:\n      - { name: r, paths: ["/ok", "~/((x"] }\n`, /^krs: invalid declarative config: route 'r' \(routes\[1\]\) \(in service 'a' \(services\[1\]\)\): paths\.2: invalid regex: '\/\(\(x' \(PCRE returned: pcre_compile\(\) failed: missing \) in "\/\(\(x"\)$/],
  ["a regex path PCRE cannot compile (unterminated class)", `_format_version: "3.0"\nroutes:\n  - { name: r, paths: ["~/[z"] }\n`, /route 'r' \(routes\[1\]\): paths\.1: invalid regex: '\/\[z' \(PCRE returned: pcre_compile\(\) failed: missing terminating \] for character class in "\/\[z"\)$/],
  ["a regex path without the slash after ~", `_format_version: "3.0"\nroutes:\n  - { name: r, paths: ["~abc"] }\n`, /route 'r' \(routes\[1\]\): paths\.1: should start with: \/ \(fixed path\) or ~\/ \(regex path\)$/],
  ["YAML .inf for a number (JSON would make it null, a default)", `_format_version: "3.0"\nservices:\n  - name: a\n    url: http://127.0.0.1:1\n    retries: .inf\n`, /^krs: .*kong\.yml: services\.0\.retries: expected a number JSON can carry \(not \.inf or \.nan\)$/],
  ["plugin not allowed on a consumer", `_format_version: "3.0"\nconsumers:\n  - username: u\n    plugins:\n      - name: krs-test-auth\n`, /plugin 'krs-test-auth' \(in consumer 'u' \(consumers\[1\]\)\): consumer: value must be null/],
];

describe("krs gateway start refuses bad input", () => {
  for (const [what, yaml, message] of BAD) {
    it(what, async () => {
      const res = await startWith(yaml);
      expect(res.status).toBe(1);
      const lines = res.stderr.trim().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(message);
      expect(nothingRunning(res.prefix)).toBe(true);
    });
  }

  it("a taken port", async () => {
    const blocker: Server = createServer();
    const port = await freePort();
    await new Promise<void>((r) => blocker.listen(port, "127.0.0.1", () => r()));
    try {
      const res = await startWith(`_format_version: "3.0"\n`, {}, port);
      expect(res.status).toBe(1);
      expect(res.stderr.trim()).toBe(`krs: proxy listen 127.0.0.1:${port}: address already in use`);
      expect(nothingRunning(res.prefix)).toBe(true);
    } finally {
      blocker.close();
    }
  });

  it("a missing nginx", async () => {
    const res = await startWith(`_format_version: "3.0"\n`, { KRS_NGINX: "/nonexistent/nginx" });
    expect(res.status).toBe(1);
    expect(res.stderr.trim()).toMatch(/^krs: nginx not found at KRS_NGINX=\/nonexistent\/nginx/);
  });

  it("bad arguments", () => {
    const res = krs(["gateway", "start", "--config", "x.yml"]);
    expect(res.status).toBe(2);
    expect(res.stderr).toContain("gateway start needs --config FILE and --prefix DIR");
  });
});

describe("krs gateway start/stop", () => {
  it("starts with a valid file, answers, and stops leaving nothing running", async () => {
    const res = await startWith(`_format_version: "3.0"\nservices:\n  - name: a\n    url: http://127.0.0.1:1\n    routes:\n      - { name: r, paths: ["/"] }\n`);
    expect(res.stderr).toBe("");
    expect(res.status).toBe(0);
    expect(res.stdout).toMatch(/^gateway started \(pid \d+\)/);
    const status = await fetch(`http://127.0.0.1:${res.admin}/status`);
    expect(status.status).toBe(200);
    const stop = krs(["gateway", "stop", "--prefix", res.prefix]);
    expect(stop.status).toBe(0);
    expect(nothingRunning(res.prefix)).toBe(true);
    await expect(fetch(`http://127.0.0.1:${res.proxy}/`)).rejects.toThrow();
  });

  it("starts with the repository's kong.yml", async () => {
    const res = await startWith(readFileSync(join(ROOT, "kong.yml"), "utf8"));
    expect(res.stderr).toBe("");
    expect(res.status).toBe(0);
    krs(["gateway", "stop", "--prefix", res.prefix]);
  });
});

describe("secrets on disk", () => {
  /** Every file under `dir`, recursively. */
  function filesUnder(dir: string): string[] {
    return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(join(dir, e.name)) : [join(dir, e.name)]));
  }

  const mode = (path: string) => (statSync(path).mode & 0o777).toString(8);

  function expectOwnerOnly(prefix: string): void {
    expect(mode(join(prefix, "krs"))).toBe("700");
    for (const f of ["config.json", "admin-state.jsonl", "gateway.json", "node_id"]) expect(`${f} ${mode(join(prefix, "krs", f))}`).toBe(`${f} 600`);
    expect(mode(join(prefix, "nginx.conf"))).toBe("600");
    expect(mode(join(prefix, "logs"))).toBe("700");
    for (const f of ["error.log", "access.log"]) expect(`${f} ${mode(join(prefix, "logs", f))}`).toBe(`${f} 600`);
  }

  it("files that may hold secrets are owner-only whatever the umask; vault references stay unresolved on disk", async () => {
    const password = "krs-disk-secret-7f3a9c";
    const redis = await startRedis(["--requirepass", password]);
    const up = await upstream();
    const prefix = tempDir("secrets");
    const file = join(prefix, "kong.yml");
    writeFileSync(file, `_format_version: "3.0"
services:
  - name: s
    url: http://127.0.0.1:${up.port}/anything
    routes: [{ name: r, paths: ["/limited"] }]
    plugins:
      - name: redis-rate-limit
        config:
          minute: 100
          fault_tolerant: false
          redis: { port: ${redis.port}, password: "{vault://env/KRS_TEST_PW}" }
`);
    const [proxy, admin] = [await freePort(), await freePort()];
    const start = () => spawnSync("sh", ["-c", 'umask 000 && exec node "$0" "$@"', join(ROOT, "bin", "krs.mjs"),
      "gateway", "start", "--config", file, "--prefix", prefix, "--proxy", `127.0.0.1:${proxy}`, "--admin", `127.0.0.1:${admin}`], {
      encoding: "utf8",
      env: { ...process.env, KRS_TEST_PW: password, KONG_PLUGINS: "bundled", KONG_LUA_PACKAGE_PATH: FIXTURE_LUA_PATH },
    });
    const adminUrl = `http://127.0.0.1:${admin}`;
    try {
      const started = start();
      expect(started.stderr).toBe("");
      expect(started.status).toBe(0);
      // The reference was resolved in memory: Redis (which wants the password) counts the request.
      const limited = await fetch(`http://127.0.0.1:${proxy}/limited?apikey=${password}-query`);
      await limited.arrayBuffer();
      expect(limited.status).toBe(200);
      expect(limited.headers.get("ratelimit-limit")).toBe("100");
      expectOwnerOnly(prefix);
      // The access log has the request, not its query string (where API keys may travel).
      await expect.poll(() => readFileSync(join(prefix, "logs", "access.log"), "utf8")).toContain('"GET /limited HTTP/1.1" 200');

      // Admin API changes are kept under the prefix: still owner-only, still the reference.
      const plugin = (await getJson(`${adminUrl}/plugins`)).body.data[0];
      const patched = await getJson(`${adminUrl}/plugins/${plugin.id}`, {
        method: "PATCH", headers: { "content-type": "application/json" }, body: JSON.stringify({ config: { minute: 50 } }),
      });
      expect(patched.status).toBe(200);
      expect((await getJson(`${adminUrl}/consumers`, { method: "POST", body: new URLSearchParams([["username", "u"]]) })).status).toBe(201);
      expect(readFileSync(join(prefix, "krs", "admin-state.jsonl"), "utf8")).toContain("{vault://env/KRS_TEST_PW}");
      expectOwnerOnly(prefix);
      for (const f of filesUnder(prefix)) expect(readFileSync(f).includes(password), f).toBe(false);

      // Files left readable by an older version are made owner-only at the next start.
      krs(["gateway", "stop", "--prefix", prefix]);
      for (const f of ["config.json", "admin-state.jsonl", "gateway.json", "node_id"]) chmodSync(join(prefix, "krs", f), 0o644);
      chmodSync(join(prefix, "krs"), 0o755);
      chmodSync(join(prefix, "logs"), 0o755);
      for (const f of ["error.log", "access.log"]) chmodSync(join(prefix, "logs", f), 0o644);
      const again = start();
      expect(again.status).toBe(0);
      expectOwnerOnly(prefix);
      for (const f of filesUnder(prefix)) expect(readFileSync(f).includes(password), f).toBe(false);
    } finally {
      krs(["gateway", "stop", "--prefix", prefix]);
    }
  });
});

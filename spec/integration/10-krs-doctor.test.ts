/**
 * `krs doctor --config FILE` against real redis-server processes with planted problems
 * (allkeys-lru, a wrong password, an unknown plugin, no persistence under key-auth), a
 * good setup that passes, and the judgement rules that cannot be planted here (an old
 * Redis, a far clock, a full noeviction cache) through the pure `evaluate`.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { evaluate, exitStatus, type Facts } from "../../src/cli/doctor.js";
import { runKrs } from "../helpers/krs-main.js";
import { startRedis, stopAll, tempDir } from "../helpers/services.js";

afterAll(stopAll);

const run = runKrs;

function configFile(plugins: object[]): string {
  const file = join(tempDir("doctor"), "kong.yml");
  writeFileSync(file, JSON.stringify({ _format_version: "3.0", services: [{ name: "s", url: "http://127.0.0.1:9", routes: [{ name: "r", paths: ["/"], plugins }] }] }));
  return file;
}

describe("krs doctor on real Redis", () => {
  it("passes a good setup (exit 0, every line ok)", async () => {
    const redis = await startRedis(["--appendonly", "yes", "--requirepass", "good-pw"]);
    const file = configFile([
      { name: "redis-rate-limit", config: { minute: 5, redis: { port: redis.port, password: "good-pw" } } },
      { name: "redis-key-auth", config: { redis: { port: redis.port, password: "good-pw" } } },
    ]);
    const r = await run("doctor", "--config", file);
    expect(r.err).toBe("");
    expect(r.out.split("\n").every((l) => l.startsWith("ok")), r.out).toBe(true);
    expect(r.out).toContain("every plugin known and valid");
    expect(r.out).toContain(`redis-key-auth (route r): Redis redis://127.0.0.1:${redis.port}/0 reachable with its settings`);
    expect(r.out).toMatch(/persistence AOF/);
    expect(r.out).not.toContain("good-pw");
    expect(r.code).toBe(0);
  });

  it("warns about allkeys-lru and persistence off under key-auth (exit 1)", async () => {
    const redis = await startRedis(["--maxmemory-policy", "allkeys-lru"]);
    const file = configFile([
      { name: "redis-rate-limit", config: { minute: 5, redis: { port: redis.port } } },
      { name: "redis-key-auth", config: { redis: { port: redis.port } } },
    ]);
    const r = await run("doctor", "--config", file, "--json");
    const { findings, status } = JSON.parse(r.out);
    expect(status).toBe(1);
    expect(r.code).toBe(1);
    const warns = findings.filter((f: any) => f.level === "warn").map((f: any) => f.message);
    expect(warns).toHaveLength(2);
    expect(warns[0]).toMatch(/maxmemory-policy allkeys-lru can evict any key: redis-rate-limit, redis-key-auth/);
    expect(warns[1]).toMatch(/persistence is off .* redis-key-auth/);
    expect(findings.every((f: any) => f.level === "ok" || f.fix)).toBe(true);
  });

  it("finds a wrong password and an unknown plugin (exit 2), without the password in any line", async () => {
    const redis = await startRedis(["--requirepass", "right-pw"]);
    const file = configFile([
      { name: "redis-cache", config: { redis: { port: redis.port, password: "wrong-pw" } } },
      { name: "no-such-plugin", config: {} },
    ]);
    const r = await run("doctor", "--config", file);
    expect(r.code).toBe(2);
    const lines = r.out.split("\n");
    expect(lines.find((l) => l.startsWith("error") && l.includes("no-such-plugin"))).toMatch(/plugin 'no-such-plugin'.*not enabled.* → fix the file/);
    expect(lines.find((l) => l.startsWith("error") && l.includes("redis-cache (route r)"))).toMatch(/WRONGPASS.* → set config.redis.password/);
    expect(r.out).not.toMatch(/wrong-pw|right-pw/);
  });

  it("finds a password Redis does not want (the gateway's AUTH is refused) and a database out of range", async () => {
    const redis = await startRedis(["--databases", "4"]);
    const file = configFile([
      { name: "redis-rate-limit", config: { minute: 5, redis: { port: redis.port, password: "not-needed" } } },
      { name: "redis-cache", config: { redis: { port: redis.port, database: 9 } } },
    ]);
    const r = await run("doctor", "--config", file);
    expect(r.code).toBe(2);
    expect(r.out).toMatch(/^error redis-rate-limit \(route r\): .*AUTH refused: .*without any password configured.* → Redis has no password: remove config.redis.password/m);
    expect(r.out).toMatch(/^error redis-cache \(route r\): Redis redis:\/\/127\.0\.0\.1:\d+\/9: .*DB index is out of range → set config.redis.database/m);
    expect(r.out).not.toContain("not-needed");
  });

  it("--redis checks one more server with the URL's credentials", async () => {
    const redis = await startRedis(["--requirepass", "url-pw", "--maxmemory-policy", "allkeys-random"]);
    const file = configFile([]);
    const r = await run("doctor", "--config", file, "--redis", `redis://:url-pw@127.0.0.1:${redis.port}/0`);
    expect(r.out).toMatch(new RegExp(`^warn\\s+Redis redis://:\\*\\*\\*@127\\.0\\.0\\.1:${redis.port}/0: maxmemory-policy allkeys-random`, "m"));
    expect(r.out).not.toContain("url-pw");
    expect(r.code).toBe(1);
    const bad = await run("doctor", "--config", file, "--redis", `redis://:nope-pw@127.0.0.1:${redis.port}/0`);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/^krs doctor: could not connect to redis at redis:\/\/:\*\*\*@127\.0\.0\.1:\d+\/0: AUTH refused: WRONGPASS/);
    expect(bad.err).not.toContain("nope-pw");
  });

  it("finds an unreachable Redis and a vault reference unset here", async () => {
    const file = configFile([{ name: "redis-rate-limit", config: { minute: 5, redis: { port: 1, password: "{vault://env/krs-doctor-test-pw}" } } }]);
    const r = await run("doctor", "--config", file);
    expect(r.code).toBe(2);
    expect(r.out).toMatch(/^warn\s+redis-rate-limit \(route r\): KRS_DOCTOR_TEST_PW is not set/m);
    expect(r.out).toMatch(/^error redis-rate-limit \(route r\): Redis redis:\/\/127\.0\.0\.1:1\/0: connect ECONNREFUSED.* → start Redis there/m);
  });

  it("judges eviction and persistence per server: a cache-only allkeys-lru Redis is fine next to a noeviction one for rate-limit and key-auth", async () => {
    const cache = await startRedis(["--maxmemory-policy", "allkeys-lru"]);
    const state = await startRedis(["--appendonly", "yes"]);
    const file = configFile([
      { name: "redis-cache", config: { redis: { port: cache.port } } },
      { name: "redis-rate-limit", config: { minute: 5, redis: { port: state.port } } },
      { name: "redis-key-auth", config: { redis: { port: state.port } } },
    ]);
    const r = await run("doctor", "--config", file);
    expect(r.out).toMatch(new RegExp(`^ok\\s+Redis redis://127\\.0\\.0\\.1:${cache.port}/0: maxmemory-policy allkeys-lru`, "m"));
    expect(r.out).not.toMatch(new RegExp(`Redis redis://127\\.0\\.0\\.1:${cache.port}/0: persistence`));
    expect(r.code, r.out).toBe(0);
  });

  it("leaves Kong's bundled plugins out of validation (one info line), validates the suite's, and does not connect-test rate-limiting with policy local", async () => {
    const redis = await startRedis(["--appendonly", "yes"]);
    const file = configFile([
      { name: "ip-restriction", config: { allow: ["127.0.0.1"] } },
      { name: "rate-limiting", config: { minute: 5, policy: "local", redis: { port: 1 } } },
      { name: "redis-key-auth", config: { redis: { port: redis.port } } },
    ]);
    const r = await run("doctor", "--config", file);
    expect(r.out).toMatch(/^info\s+.*Kong bundled plugins not validated here: ip-restriction, rate-limiting$/m);
    expect(r.out).toMatch(/^ok\s+.*every suite plugin known and valid/m);
    expect(r.out).not.toMatch(/^\S+\s+rate-limiting \(route r\)/m);
    expect(r.code, r.out).toBe(0);
    const bad = configFile([
      { name: "ip-restriction", config: { allow: ["127.0.0.1"] } },
      { name: "redis-key-auth", config: { no_such_field: 1, redis: { port: redis.port } } },
    ]);
    const b = await run("doctor", "--config", bad);
    expect(b.code).toBe(2);
    expect(b.out).toMatch(/^error .*no_such_field/m);
  });

  it("reports every invalid plugin entry, not only the first", async () => {
    const file = configFile([
      { name: "redis-key-auth", config: { bogus_one: 1 } },
      { name: "redis-rate-limit", config: { minute: 5, bogus_two: 1 } },
      { name: "redis-cache", config: {} },
    ]);
    const r = await run("doctor", "--config", file);
    expect(r.code).toBe(2);
    const errors = r.out.split("\n").filter((l) => l.startsWith("error") && l.includes("kong.yml"));
    expect(errors).toEqual([expect.stringMatching(/redis-key-auth.*bogus_one: unknown field/), expect.stringMatching(/redis-rate-limit.*bogus_two: unknown field/)]);
  });

  it("needs --config, and says so in one line (exit 2)", async () => {
    const r = await run("doctor");
    expect(r.code).toBe(2);
    expect(r.err).toBe("krs: required option '--config <file>' not specified");
    const missing = await run("doctor", "--config", "/nonexistent/kong.yml");
    expect(missing).toMatchObject({ code: 2, err: "krs doctor: --config: no such file /nonexistent/kong.yml" });
  });
});

describe("doctor's judgement", () => {
  const base = (server: Partial<Facts["servers"][0]>, plugins = ["redis-cache"]): Facts => ({
    config: "kong.yml",
    uses: plugins.map((name) => ({ name, where: "route r", redis: { host: "127.0.0.1", port: 6379, database: 0, ssl: false, ssl_verify: false, timeout: 2000 }, unresolved: [] })),
    connectErrors: plugins.map(() => undefined),
    servers: [{ endpoint: "redis://127.0.0.1:6379/0", version: "7.0.15", maxmemoryPolicy: "noeviction", maxmemory: 0, usedMemory: 1000, persistence: { aof: true, rdb: false }, clockSkewMs: 3, ...server }],
  });

  it("all good is exit 0", () => expect(exitStatus(evaluate(base({})))).toBe(0));

  it("a Redis too old for the scripts is an error", () => {
    const f = evaluate(base({ version: "3.2.12" }));
    expect(f.find((x) => x.level === "error")?.message).toMatch(/version 3\.2\.12 is older than 4\.0\.0/);
    expect(exitStatus(f)).toBe(2);
  });

  it("clocks more than 2 s apart are a warning", () => {
    expect(evaluate(base({ clockSkewMs: -2500 })).find((x) => x.level === "warn")?.message).toMatch(/clock behind this host by 2500 ms/);
    expect(exitStatus(evaluate(base({ clockSkewMs: 1500 })))).toBe(0);
  });

  it("volatile-* warns when a plugin with TTL'd keys uses that server, not for a cache-only one", () => {
    for (const plugin of ["redis-rate-limit", "redis-key-auth", "redis-ip-access"]) {
      const f = evaluate(base({ maxmemoryPolicy: "volatile-lru" }, [plugin]));
      const warn = f.find((x) => x.level === "warn");
      expect(warn?.message).toMatch(new RegExp(`volatile-lru evicts exactly the keys with a TTL: ${plugin}`));
      expect(warn?.fix).toMatch(/noeviction.*separate Redis for redis-cache/);
    }
    expect(exitStatus(evaluate(base({ maxmemoryPolicy: "volatile-ttl" })))).toBe(0);
  });

  it("noeviction with a nearly full cache warns; CONFIG refused is said, not guessed", () => {
    expect(evaluate(base({ maxmemory: 1000, usedMemory: 950 })).find((x) => x.level === "warn")?.message).toMatch(/noeviction with memory 95% full/);
    const refused = evaluate(base({ maxmemoryPolicy: undefined, persistence: undefined }, ["redis-key-auth"]));
    expect(refused.filter((x) => x.level === "warn").map((x) => x.message)).toEqual([
      expect.stringMatching(/could not read maxmemory-policy/),
      expect.stringMatching(/could not read persistence settings/),
    ]);
  });
});

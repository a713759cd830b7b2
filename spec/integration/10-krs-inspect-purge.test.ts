/**
 * `krs inspect` and `krs purge` on real redis-server processes filled by the test with keys
 * of every kind in src/cli/key-kinds.ts (the table docs/redis-keys.md is generated from).
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runKrs } from "../helpers/krs-main.js";
import { KEY_KINDS } from "../../src/cli/key-kinds.js";
import type { InspectReport } from "../../src/cli/inspect.js";
import { ROOT, startRedis, stopAll } from "../helpers/services.js";

const KRS = join(ROOT, "bin", "krs.mjs");

const run = runKrs;

const sha = (s: string) => createHash("sha256").update(s).digest("hex");
const pad = (i: number) => "x".repeat(10 + (i * 7919) % 300);

/** Keys of every kind; sizes vary so the memory estimate has something to estimate. */
async function fill(redis: Redis, n: { rl: number; ka: number; cache: number; other: number; ip?: number; usage?: number; jwt?: number; metricNodes?: number; streams?: number }, gen = 3): Promise<Record<string, string[]>> {
  const made: Record<string, string[]> = {
    counters: [], key: [], ids: [], expiring: [], generation: [], entry: [], fill: [], refresh: [], other: [],
    entries: [], reasons: [], version: [], hits: [], day: [], month: [], quota: [],
    credentials: [], "revoked-token": [], "revoked-subject": [], "revoked-consumer": [], node: [], nodes: [], stream: [],
  };
  let p = redis.pipeline();
  let queued = 0;
  const flush = async (force = false) => {
    if (queued >= 5000 || (force && queued > 0)) {
      await p.exec();
      p = redis.pipeline();
      queued = 0;
    }
  };
  for (let i = 0; i < n.rl; i++) {
    const k = `krs:redis-rate-limit:v1:{plugin-${i % 7}:ip:10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}}`;
    p.hset(k, "minute:start", "1", "minute:count", pad(i), "minute:prev", "0");
    p.pexpire(k, 600_000 + i);
    made.counters.push(k);
    queued++;
    await flush();
  }
  for (let i = 0; i < n.ka; i++) {
    const k = `krs:redis-key-auth:v1:{k}:key:${sha("key" + i)}`;
    p.hset(k, "id", `id-${i}`, "consumer_username", pad(i), "expires_at", "0");
    if (i % 2 === 0) p.expire(k, 7200);
    made.key.push(k);
    queued++;
    await flush();
  }
  p.hset("krs:redis-key-auth:v1:{k}:ids", "a", "{}");
  p.zadd("krs:redis-key-auth:v1:{k}:expiring", 1, "a");
  made.ids.push("krs:redis-key-auth:v1:{k}:ids");
  made.expiring.push("krs:redis-key-auth:v1:{k}:expiring");
  p.set("krs:redis-cache:v1:{ns}:generation", String(gen));
  made.generation.push("krs:redis-cache:v1:{ns}:generation");
  for (let i = 0; i < n.cache; i++) {
    const tag = `{${gen}.${sha("c" + i)}}`;
    const kind = i % 10 < 8 ? "entry" : i % 10 === 8 ? "fill" : "refresh";
    const k = `krs:redis-cache:v1:${tag}:${kind}`;
    p.set(k, kind === "entry" ? `1|60000|0|E|${pad(i)}` : "tok", "PX", kind === "entry" ? 90_000_000 : 600_000);
    made[kind].push(k);
    queued++;
    await flush();
  }
  // redis-ip-access: n.ip lists, each with its entries, reasons, version and one ban counter.
  for (let i = 0; i < (n.ip ?? 0); i++) {
    const base = `krs:redis-ip-access:v1:{list-${i}}`;
    p.zadd(`${base}:entries`, Date.now() + 600_000, `203.0.113.${i % 256}`);
    p.pexpire(`${base}:entries`, 600_000);
    p.hset(`${base}:reasons`, `203.0.113.${i % 256}`, pad(i));
    p.pexpire(`${base}:reasons`, 600_000);
    p.set(`${base}:version`, `${Date.now()}-${i}`, "PX", 600_000);
    p.set(`${base}:hits:198.51.100.${i % 256}`, "1", "PX", 600_000);
    made.entries.push(`${base}:entries`);
    made.reasons.push(`${base}:reasons`);
    made.version.push(`${base}:version`);
    made.hits.push(`${base}:hits:198.51.100.${i % 256}`);
    queued += 6;
    await flush();
  }
  // redis-usage: a few consumers' day and month buckets and quota overrides (no TTL, by design).
  for (let i = 0; i < (n.usage ?? 0); i++) {
    const base = `krs:redis-usage:v1:{consumer:user-${i}}`;
    p.hset(`${base}:d:20261130`, "requests", pad(i));
    p.pexpire(`${base}:d:20261130`, 600_000);
    p.hset(`${base}:m:202611`, "requests", pad(i));
    p.pexpire(`${base}:m:202611`, 600_000);
    p.hset(`${base}:quota`, "month", "100");
    made.day.push(`${base}:d:20261130`);
    made.month.push(`${base}:m:202611`);
    made.quota.push(`${base}:quota`);
    queued += 5;
    await flush();
  }
  // redis-jwt: the credentials hash and n.jwt revocations of each kind.
  if ((n.jwt ?? 0) > 0) {
    p.hset("krs:redis-jwt:v1:{c}:credentials", "key:a", pad(1), "kid:b", pad(2));
    made.credentials.push("krs:redis-jwt:v1:{c}:credentials");
  }
  for (let i = 0; i < (n.jwt ?? 0); i++) {
    for (const [kind, k] of [["revoked-token", `jti:jti-${i}`], ["revoked-subject", `sub:user-${i}`], ["revoked-consumer", `consumer:c-${i}`]]) {
      const key = `krs:redis-jwt:v1:{r}:${k}`;
      p.set(key, kind === "revoked-token" ? "1" : pad(i), "PX", 600_000);
      made[kind].push(key);
    }
    queued += 3;
    await flush();
  }
  // redis-metrics: n.metricNodes nodes' snapshots and the index of live nodes.
  for (let i = 0; i < (n.metricNodes ?? 0); i++) {
    const id = `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`;
    p.set(`krs:redis-metrics:v1:{cluster}:node:${id}`, `{"node_id":"${id}","values":{"${pad(i)}":1}}`, "PX", 600_000);
    p.zadd("krs:redis-metrics:v1:{cluster}:nodes", Date.now() + 600_000, id);
    made.node.push(`krs:redis-metrics:v1:{cluster}:node:${id}`);
    queued += 2;
    await flush();
  }
  if ((n.metricNodes ?? 0) > 0) {
    p.pexpire("krs:redis-metrics:v1:{cluster}:nodes", 600_000);
    made.nodes.push("krs:redis-metrics:v1:{cluster}:nodes");
  }
  // structured-log: n.streams streams of a few entries each.
  for (let i = 0; i < (n.streams ?? 0); i++) {
    const k = `krs:structured-log:v1:{stream-${i}}:stream`;
    for (let j = 0; j <= i % 5; j++) p.xadd(k, "*", "log", `{"n":"${pad(i + j)}"}`);
    p.expire(k, 604_800);
    made.stream.push(k);
    queued += 2;
    await flush();
  }
  for (let i = 0; i < n.other; i++) {
    p.set(`app:session:${i}`, "v");
    made.other.push(`app:session:${i}`);
    queued++;
    await flush();
  }
  await flush(true);
  return made;
}

async function allKeys(redis: Redis): Promise<Set<string>> {
  const keys = new Set<string>();
  let cursor = "0";
  do {
    const [next, batch] = await redis.scan(cursor, "COUNT", 5000);
    cursor = next;
    for (const k of batch) keys.add(k);
  } while (cursor !== "0");
  return keys;
}

afterAll(stopAll);

/**
 * Resolves once `child` has sent its first SCAN to `redis` (commandstats), and a moment
 * more: a fixed delay before Ctrl-C raced node's start-up on a loaded machine (SIGINT
 * before the handler existed).
 */
async function whenScanning(redis: Redis, child: ReturnType<typeof spawn>): Promise<void> {
  const scans = async () => Number(/cmdstat_scan:calls=(\d+)/.exec(await redis.info("commandstats"))?.[1] ?? 0);
  const before = await scans();
  for (let i = 0; i < 300 && child.exitCode === null; i++) {
    if ((await scans()) > before) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, 300));
}

describe("krs inspect on 200,000 suite keys", () => {
  let redis: Redis;
  let url: string;
  let made: Record<string, string[]>;
  const planted = "krs:redis-rate-limit:v1:{plugin-0:ip:planted}";

  beforeAll(async () => {
    const server = await startRedis();
    url = `redis://127.0.0.1:${server.port}`;
    redis = new Redis({ port: server.port });
    made = await fill(redis, { rl: 80_000, ka: 40_000, cache: 79_837, other: 1000, ip: 50, usage: 5, jwt: 40, metricNodes: 3, streams: 20 });
    await redis.hset(planted, "minute:count", "1"); // no TTL: must be flagged
    made.counters.push(planted);
  }, 120_000);
  afterAll(() => redis?.disconnect());

  it("counts every kind exactly, estimates memory within its stated error, flags the key without TTL", async () => {
    const r = await run("inspect", "--redis", url, "--json", "--sample", "300", "--max-ops-per-sec", "0");
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out) as InspectReport;
    const suiteKeys = Object.entries(made).filter(([k]) => k !== "other").reduce((a, [, v]) => a + v.length, 0);
    expect(suiteKeys).toBeGreaterThanOrEqual(200_000);
    expect(report).toMatchObject({ dbsize: suiteKeys + 1000, scanned: suiteKeys + 1000, complete: true, otherKeys: 1000 });
    for (const kind of KEY_KINDS.filter((k) => !k.channel)) {
      const row = report.kinds.find((k) => k.plugin === kind.plugin && k.kind === kind.kind)!;
      expect(row, kind.kind).toBeDefined();
      expect(row.count, kind.kind).toBe(made[kind.kind].length);
      // The real total, to hold the estimate against.
      const p = redis.pipeline();
      for (const k of made[kind.kind]) p.memory("USAGE", k);
      const actual = ((await p.exec()) ?? []).reduce((a, [, v]) => a + Number(v), 0);
      expect(row.memory.sampled, kind.kind).toBe(Math.min(300, row.count));
      expect(Math.abs(row.memory.bytes - actual), `${kind.kind}: ${row.memory.bytes} ± ${row.memory.error} vs ${actual}`).toBeLessThanOrEqual(row.memory.error);
      // Sizes vary in these kinds (pad()): the estimate must say it is one, and a useful one.
      if (["counters", "key", "entry"].includes(kind.kind)) {
        expect(row.memory.error).toBeGreaterThan(0);
        expect(row.memory.error).toBeLessThan(actual * 0.2);
      }
    }
    const counters = report.kinds.find((k) => k.kind === "counters")!;
    expect(counters).toMatchObject({ missingTtl: 1, missingTtlExamples: [planted] });
    expect(counters.ttl.none).toBe(1);
    expect(counters.ttl["<1h"]).toBe(80_000);
    // Optional TTL: half the API keys live until revoked, and that is no finding.
    expect(report.kinds.find((k) => k.kind === "key")).toMatchObject({ missingTtl: 0, ttl: { none: 20_000, "<1d": 20_000 } });
    expect(report.kinds.find((k) => k.kind === "generation")).toMatchObject({ count: 1, missingTtl: 0 });
  }, 120_000);

  it("prints a table naming the flagged key, with --plugin only that plugin", async () => {
    const r = await run("inspect", "--redis", url, "--plugin", "redis-rate-limit", "--batch", "5000", "--max-ops-per-sec", "0");
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^redis-rate-limit\s+counters\s+80001\s/m);
    expect(r.out).not.toMatch(/redis-cache|redis-key-auth|other keys/);
    expect(r.out).toContain(`flagged: 1 redis-rate-limit counters keys without a TTL`);
    expect(r.out).toContain(planted);
    expect(r.out).not.toMatch(/\x1b\[/); // not a terminal: no colors
  }, 60_000);

  it("shows a progress bar and colors on a terminal only, and no colors with NO_COLOR", () => {
    // Unpaced: these spawnSync calls block the test worker, which must answer vitest within 60 s.
    // The runner's own NO_COLOR and TERM are left out: each case sets what it tests.
    const { NO_COLOR: _n, TERM: _t, ...inherited } = process.env;
    const viaTty = (env: Record<string, string>) =>
      spawnSync("script", ["-qec", `node ${KRS} inspect --plugin redis-rate-limit --redis ${url} --max-ops-per-sec 0`, "/dev/null"], { encoding: "utf8", env: { ...inherited, ...env }, timeout: 60_000 });
    const tty = viaTty({});
    expect(tty.status).toBe(0);
    expect(tty.stdout).toMatch(/keys\/s \| ETA/);
    expect(tty.stdout).toMatch(/\x1b\[31m/); // TERM unset, as under CI: a terminal still gets colors
    expect(viaTty({ TERM: "xterm-256color" }).stdout).toMatch(/\x1b\[31m/);
    expect(viaTty({ TERM: "dumb" }).stdout).not.toMatch(/\x1b\[3\dm/);
    const noColor = viaTty({ NO_COLOR: "1" });
    expect(noColor.stdout).toContain("FLAGGED");
    expect(noColor.stdout).not.toMatch(/\x1b\[3\dm/);
    const piped = spawnSync("node", [KRS, "inspect", "--plugin", "redis-rate-limit", "--redis", url, "--max-ops-per-sec", "0"], { encoding: "utf8", timeout: 60_000 });
    expect(piped.status).toBe(0);
    expect(piped.stderr).toBe("");
    expect(piped.stdout).not.toMatch(/keys\/s|\x1b\[/);
  }, 120_000);

  it("Ctrl-C stops the walk and prints what it has (exit 130)", async () => {
    const child = spawn("node", [KRS, "inspect", "--redis", url, "--batch", "100", "--max-ops-per-sec", "2000", "--json"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    await whenScanning(redis, child);
    child.kill("SIGINT");
    const code = await new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
    expect(code).toBe(130);
    const report = JSON.parse(out) as InspectReport;
    expect(report.complete).toBe(false);
    expect(report.scanned).toBeGreaterThan(0);
    expect(report.scanned).toBeLessThan(report.dbsize);
  }, 30_000);
});

describe("krs purge", () => {
  let redis: Redis;
  let url: string;

  beforeAll(async () => {
    const server = await startRedis();
    url = `redis://127.0.0.1:${server.port}`;
    redis = new Redis({ port: server.port });
  });
  afterAll(() => redis?.disconnect());

  it("refuses without --plugin, or with an unknown plugin or kind, and removes nothing", async () => {
    await redis.flushdb();
    await fill(redis, { rl: 10, ka: 10, cache: 10, other: 10 });
    const before = await redis.dbsize();
    for (const [argv, msg] of [
      [[], /purge needs --plugin/],
      [["--plugin", "redis-nope"], /unknown plugin 'redis-nope'/],
      [["--plugin", "redis-cache", "--kind", "counters"], /redis-cache has no key kind 'counters' \(kinds: generation, entry, fill, refresh\)/],
    ] as const) {
      const r = await run("purge", "--redis", url, ...argv);
      expect(r.code).toBe(2);
      expect(r.err).toMatch(msg);
      expect(r.err.split("\n")).toHaveLength(1);
    }
    expect(await redis.dbsize()).toBe(before);
  });

  it("removes exactly one plugin's keys and nothing else, and says how many", async () => {
    await redis.flushdb();
    const made = await fill(redis, { rl: 3000, ka: 2000, cache: 3000, other: 500 });
    await redis.set("krs:redis-cache:v2:{ns}:other-version", "x", "EX", 60); // the plugin's too, of no kind in the table
    await redis.set("krs:redis-cachet:v1:{x}:entry", "x"); // a longer plugin name is not redis-cache
    const dry = await run("purge", "--plugin", "redis-cache", "--dry-run", "--redis", url);
    expect(dry).toMatchObject({ code: 0, out: `dry run: would remove 3002 redis-cache keys from ${url} (generation 1, entry 2400, fill 300, refresh 300, (unknown) 1)` });
    expect(await redis.exists(made.entry[0], made.generation[0])).toBe(2);
    const r = await run("purge", "--plugin", "redis-cache", "--redis", url, "--batch", "250");
    expect(r).toMatchObject({ code: 0, out: `removed 3002 redis-cache keys from ${url} (generation 1, entry 2400, fill 300, refresh 300, (unknown) 1)` });
    const left = await allKeys(redis);
    const expected = new Set([...made.counters, ...made.key, ...made.ids, ...made.expiring, ...made.other, "krs:redis-cachet:v1:{x}:entry"]);
    expect(left.size).toBe(expected.size);
    for (const k of expected) expect(left.has(k), k).toBe(true);
    expect((await run("purge", "--plugin", "redis-cache", "--redis", url, "--json")).out).toContain(`"total": 0`);
  }, 60_000);

  it("removes the redis-cache generation only after every entry (else old entries of generation 0 could be read again)", async () => {
    await redis.flushdb();
    await fill(redis, { rl: 0, ka: 0, cache: 2000, other: 0 }, 0);
    const monitor = await redis.monitor();
    const unlinked: string[] = [];
    monitor.on("monitor", (_time: string, args: string[]) => {
      if (String(args[0]).toLowerCase() === "unlink") unlinked.push(...args.slice(1));
    });
    const r = await run("purge", "--plugin", "redis-cache", "--redis", url, "--batch", "100");
    expect(r.code).toBe(0);
    for (let i = 0; i < 100 && unlinked.length < 2001; i++) await new Promise((res) => setTimeout(res, 20));
    monitor.disconnect();
    expect(unlinked).toHaveLength(2001);
    expect(unlinked.indexOf("krs:redis-cache:v1:{ns}:generation")).toBe(2000);
  });

  it("--kind and --match narrow it down; --max-ops-per-sec paces it", async () => {
    await redis.flushdb();
    const made = await fill(redis, { rl: 3000, ka: 1000, cache: 0, other: 0 });
    const started = Date.now();
    const r = await run("purge", "--plugin", "redis-key-auth", "--kind", "key", "--redis", url, "--max-ops-per-sec", "1000", "--batch", "100");
    const took = Date.now() - started;
    expect(r.out).toBe(`removed 1000 redis-key-auth keys from ${url} (key 1000)`);
    // 1000 keys unlinked and 4000 examined by SCAN at 1000 keys/s cannot take less than five seconds.
    expect(took).toBeGreaterThanOrEqual(5000);
    expect(await redis.exists(made.ids[0], made.expiring[0])).toBe(2);
    const m = await run("purge", "--plugin", "redis-rate-limit", "--match", "krs:redis-rate-limit:v1:{plugin-3:*", "--redis", url);
    const plugin3 = made.counters.filter((k) => k.includes("{plugin-3:")).length;
    expect(m.out).toBe(`removed ${plugin3} redis-rate-limit keys from ${url} (counters ${plugin3})`);
    expect(await redis.dbsize()).toBe(3000 - plugin3 + 3); // + ids, expiring, generation
  }, 60_000);

  it("Ctrl-C stops after the batch in flight, says how many went, and keeps the generation", async () => {
    await redis.flushdb();
    await fill(redis, { rl: 0, ka: 0, cache: 3000, other: 0 });
    expect(await redis.dbsize()).toBe(3003); // + key-auth ids and expiring, + generation
    const child = spawn("node", [KRS, "purge", "--plugin", "redis-cache", "--redis", url, "--batch", "50", "--max-ops-per-sec", "500"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    await whenScanning(redis, child);
    child.kill("SIGINT");
    const code = await new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
    expect(code).toBe(130);
    const removed = Number(/^removed (\d+) redis-cache keys .*; interrupted before the end, run again to finish$/m.exec(out)?.[1]);
    expect(removed).toBeGreaterThan(0);
    expect(await redis.dbsize(), out).toBe(3003 - removed);
    expect(await redis.exists("krs:redis-cache:v1:{ns}:generation")).toBe(1);
  }, 30_000);

  it("says in one line when Redis cannot be reached", async () => {
    const r = await run("purge", "--plugin", "redis-cache", "--redis", "redis://:secret-pw@127.0.0.1:1");
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^krs purge: could not connect to redis at redis:\/\/:\*\*\*@127\.0\.0\.1:1/);
    expect(r.err).not.toContain("secret-pw");
  });
});

describe("krs inspect and purge on a Redis shared with another application", () => {
  let redis: Redis;
  let url: string;

  beforeAll(async () => {
    const server = await startRedis();
    url = `redis://127.0.0.1:${server.port}`;
    redis = new Redis({ port: server.port });
  });
  afterAll(() => redis?.disconnect());

  it("purge asks Redis for the plugin's keys only (SCAN MATCH krs:<plugin>:*), and paces by keys examined, not by SCANs", async () => {
    await redis.flushdb();
    await fill(redis, { rl: 0, ka: 20, cache: 0, other: 3000 });
    const before = await redis.dbsize();
    const monitor = await redis.monitor();
    const scans: string[][] = [];
    monitor.on("monitor", (_time: string, args: string[]) => {
      if (String(args[0]).toLowerCase() === "scan") scans.push(args.map(String));
    });
    const started = Date.now();
    const r = await run("purge", "--plugin", "redis-key-auth", "--redis", url, "--max-ops-per-sec", "1000", "--batch", "500");
    const took = Date.now() - started;
    monitor.disconnect();
    const removed = Number(/^removed (\d+) redis-key-auth keys/.exec(r.out)?.[1]);
    expect(removed).toBeGreaterThanOrEqual(20);
    expect(scans.length).toBeGreaterThan(0);
    for (const args of scans) expect(args.slice(2, 4)).toEqual(["MATCH", "krs:redis-key-auth:*"]);
    // About 3,000 keys examined by SCAN at 1,000 keys/s: more than two seconds.
    expect(took).toBeGreaterThanOrEqual(2000);
    expect(await redis.dbsize()).toBe(before - removed);
    expect(await redis.exists("app:session:0", "app:session:2999")).toBe(2);
  }, 30_000);

  it("inspect is paced by default (5,000 keys a second)", async () => {
    await redis.flushdb();
    await fill(redis, { rl: 0, ka: 0, cache: 0, other: 8000 });
    const started = Date.now();
    const r = await run("inspect", "--redis", url, "--json");
    const took = Date.now() - started;
    expect(JSON.parse(r.out)).toMatchObject({ otherKeys: 8000, complete: true });
    // 8,000 keys examined at 5,000 keys/s cannot take less than 1.6 s.
    expect(took).toBeGreaterThanOrEqual(1500);
  }, 30_000);

  it("a key of no kind without TTL is flagged as not in the table", async () => {
    await redis.flushdb();
    await redis.set("krs:redis-key-auth:v0:stray", "x");
    const r = await run("inspect", "--redis", url, "--max-ops-per-sec", "0");
    expect(r.out).toContain("flagged: 1 redis-key-auth (unknown) keys without a TTL (of no kind in the table in docs/redis-keys.md), e.g. krs:redis-key-auth:v0:stray");
    expect(r.out).not.toContain("says they must have one");
  });
});

/**
 * redis-lua/ip-access-{add,remove,load}-3.lua against a real redis-server through the
 * CLI's functions (src/cli/ip.ts): entries with and without TTL, reasons, a new version
 * and one published message per change (none for a no-op removal), expired entries
 * skipped and pruned, every key with a TTL unless the list holds a permanent entry; and
 * the 100,000-entry measurement (Redis read time, worker parse+compile time and memory).
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addEntry, CHANNEL, listEntries, listKeys, removeEntry, withScripts, type IpRedis } from "../../src/cli/ip.js";
import { ROOT, startRedis, stopAll } from "../helpers/services.js";

let port: number;
let redis: IpRedis;
let subscriber: Redis;
const messages: string[] = [];

beforeAll(async () => {
  port = (await startRedis()).port;
  redis = withScripts(new Redis({ port }));
  subscriber = new Redis({ port });
  await subscriber.subscribe(CHANNEL);
  subscriber.on("message", (_channel: string, message: string) => messages.push(message));
});

afterAll(async () => {
  redis.disconnect();
  subscriber.disconnect();
  await stopAll();
});

const settle = () => new Promise((r) => setTimeout(r, 50));

describe("ip-access scripts", () => {
  it("add: entry, reason, a new version and one message; keys persist while an entry is permanent", async () => {
    const [entries, reasons, version] = listKeys("s1");
    messages.length = 0;
    expect(await addEntry(redis, "s1", "203.0.113.0/24", 0, "abuse")).toBe(true);
    const v1 = await redis.get(version);
    expect(await addEntry(redis, "s1", "203.0.113.0/24", 0, "still abuse")).toBe(false);
    const v2 = await redis.get(version);
    expect(v2).not.toBe(v1);
    expect(await redis.hget(reasons, "203.0.113.0/24")).toBe("still abuse");
    for (const k of [entries, reasons, version]) expect(await redis.pttl(k)).toBe(-1);
    await settle();
    expect(messages).toEqual(["s1", "s1"]);
    expect(await listEntries(redis, "s1")).toEqual([{ cidr: "203.0.113.0/24", expires_at: null, reason: "still abuse" }]);
  });

  it("add with TTL: every key expires, the version a day after the last entry", async () => {
    const [entries, reasons, version] = listKeys("s2");
    await addEntry(redis, "s2", "2001:db8::/32", 60, "x");
    const entriesTtl = await redis.pttl(entries);
    expect(entriesTtl).toBeGreaterThan(59_000);
    expect(entriesTtl).toBeLessThanOrEqual(60_000);
    expect(await redis.pttl(reasons)).toBeGreaterThan(59_000);
    expect(await redis.pttl(version)).toBeGreaterThan(86_400_000);
    const [e] = await listEntries(redis, "s2");
    expect(e.expires_at! * 1000).toBeGreaterThan(Date.now() + 59_000);
  });

  it("remove: a new version and a message only when something was removed; an emptied list keeps only its version", async () => {
    const [entries, reasons, version] = listKeys("s3");
    await addEntry(redis, "s3", "10.0.0.1", 0, "r");
    await settle();
    messages.length = 0;
    const before = await redis.get(version);
    expect(await removeEntry(redis, "s3", "10.0.0.2")).toBe(false);
    expect(await redis.get(version)).toBe(before);
    expect(await removeEntry(redis, "s3", "10.0.0.1")).toBe(true);
    expect(await redis.get(version)).not.toBe(before);
    expect(await redis.exists(entries, reasons)).toBe(0);
    expect(await redis.pttl(version)).toBeGreaterThan(86_000_000);
    await settle();
    expect(messages).toEqual(["s3"]);
  });

  it("load skips expired entries; the next change prunes them", async () => {
    const [entries] = listKeys("s4");
    await redis.zadd(entries, Date.now() - 1000, "10.9.9.9");
    await addEntry(redis, "s4", "10.8.8.8");
    expect((await listEntries(redis, "s4")).map((e) => e.cidr)).toEqual(["10.8.8.8"]);
    expect(await redis.zscore(entries, "10.9.9.9")).toBeNull();
  });

  it("hit: a ban prunes expired entries and their reasons, as add does", async () => {
    const [entries, reasons, version] = listKeys("s-bans");
    const now = Date.now();
    await redis.zadd(entries, now - 1000, "10.7.7.7");
    await redis.hset(reasons, "10.7.7.7", "old ban");
    const hit = readFileSync(join(ROOT, "redis-lua", "ip-access-hit-4.lua"), "utf8");
    const counter = "krs:redis-ip-access:v1:{s-bans}:hits:10.6.6.6";
    const reply = await redis.eval(hit, 4, counter, entries, reasons, version, "1", "60000", "1", String(now + 60000), "too many 401", String(now), CHANNEL, "s-bans", "10.6.6.6");
    expect(reply).toEqual([1, 1]);
    expect(await redis.zrange(entries, "0", "-1")).toEqual(["10.6.6.6"]);
    expect(await redis.hgetall(reasons)).toEqual({ "10.6.6.6": "too many 401" });
    expect(await redis.pttl(entries)).toBeGreaterThan(59000);
  });

  it("versions differ across a list's lifetimes (a worker that missed a delete and re-add still reloads)", async () => {
    const [, , version] = listKeys("s5");
    await addEntry(redis, "s5", "10.0.0.1");
    const first = await redis.get(version);
    await removeEntry(redis, "s5", "10.0.0.1");
    await redis.del(version);
    await new Promise((r) => setTimeout(r, 5));
    await addEntry(redis, "s5", "10.0.0.1");
    expect(await redis.get(version)).not.toBe(first);
  });

  it("refuses bad entries and list names before Redis, naming them", async () => {
    for (const bad of ["1.2.3.4/33", "::1/129", "1.2.3", "fe80::1%eth0", "", "01.2.3.4", "1.2.3.4/08"]) {
      await expect(addEntry(redis, "s6", bad)).rejects.toThrow(`'${bad}'`);
    }
    await expect(addEntry(redis, "bad name", "1.2.3.4")).rejects.toThrow("invalid list name");
    expect(await redis.exists(...listKeys("s6"))).toBe(0);
  });
});

describe("100,000 entries", () => {
  it("load in well under a second per worker, in bounded memory (measured)", async () => {
    const entries: string[] = [];
    for (let i = 0; i < 100_000; i++) entries.push(`${10 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}.0/24`);
    const [zset, , version] = listKeys("big");
    for (let i = 0; i < entries.length; i += 10_000) {
      const args: (string | number)[] = [];
      for (const e of entries.slice(i, i + 10_000)) args.push("+inf", e);
      await redis.zadd(zset, ...args);
    }
    await redis.set(version, `${Date.now()}-1`);

    const started = process.hrtime.bigint();
    const [, flat] = await redis.ipAccessLoad(...listKeys("big"), Date.now(), "0");
    const redisMs = Number(process.hrtime.bigint() - started) / 1e6;
    expect(flat.length).toBe(200_000);

    // The worker's part (parse + compile + one lookup) in LuaJIT, on the same entries.
    const lua = `
      local ip = require("kong.plugins.redis-ip-access.ip")
      local list = {}
      for line in io.lines(os.getenv("KRS_IP_ENTRIES")) do list[#list + 1] = line end
      collectgarbage("collect")
      local before = collectgarbage("count")
      local t0 = os.clock()
      local m = ip.compileList(list)
      local t1 = os.clock()
      collectgarbage("collect")
      local after = collectgarbage("count")
      assert(ip.contains(m, ip.parseAddress("10.1.2.3")))
      assert(not ip.contains(m, ip.parseAddress("127.0.0.1")))
      io.write(string.format("%d %.1f %.0f", m.size, (t1 - t0) * 1000, after - before))
    `;
    const file = join(ROOT, "build", "ip-access-100k.txt");
    const { writeFileSync, rmSync } = await import("node:fs");
    writeFileSync(file, entries.join("\n") + "\n");
    const run = spawnSync("luajit", ["-e", `package.path="${join(ROOT, "kong-plugins")}/?.lua;"..package.path`, "-e", lua], { encoding: "utf8", env: { ...process.env, KRS_IP_ENTRIES: file } });
    rmSync(file);
    expect(run.stderr).toBe("");
    const [size, compileMs, kib] = run.stdout.split(" ").map(Number);
    expect(size).toBe(100_000);
    console.log(`redis-ip-access 100,000 entries: Redis load script ${redisMs.toFixed(1)} ms (Node client), worker parse+compile ${compileMs} ms (LuaJIT CPU), matcher ${(kib / 1024).toFixed(1)} MiB of Lua heap`);
    expect(compileMs).toBeLessThan(1000);
    // Two 4-byte strings per merged range plus the arrays: tens of bytes per entry, not kilobytes.
    expect(kib).toBeLessThan(64 * 1024);
  }, 60_000);
});

/**
 * redis-lua/key-auth-create-3.lua against a real redis-server through ioredis: the record
 * and index it writes, TTLs, refusals that write nothing, purging of expired index
 * entries, odd consumer names, and many concurrent clients.
 */
import { createHash, randomUUID } from "node:crypto";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineScripts } from "../../src/cli/redis.js";
import { startRedis, stopAll } from "../helpers/services.js";


type Reply = [number, string | number];
interface Scripted {
  create(...keysAndArgs: (string | number)[]): Promise<Reply>;
}

let port: number;
let redis: Redis & Scripted;
let seq = 0;

function client(): Redis & Scripted {
  const r = new Redis({ port, lazyConnect: false });
  defineScripts(r, { create: "key-auth-create" });
  return r as Redis & Scripted;
}

/** A fresh key space (own hash tag) per test. */
function space() {
  seq++;
  const prefix = `krs:redis-key-auth:v1:{spec-create-${seq}}`;
  return {
    record: (sha: string) => `${prefix}:key:${sha}`,
    index: `${prefix}:ids`,
    expiring: `${prefix}:expiring`,
  };
}

const sha = (s: string) => createHash("sha256").update(s).digest("hex");

interface Input {
  id?: string;
  secret?: string;
  consumerId?: string;
  username?: string;
  customId?: string;
  createdAt?: number;
  ttl?: number;
  now?: number;
}

function create(r: Redis & Scripted, s: ReturnType<typeof space>, input: Input = {}): Promise<Reply> {
  const h = sha(input.secret ?? randomUUID());
  const createdAt = input.createdAt ?? 1_700_000_000;
  return r.create(
    s.record(h), s.index, s.expiring,
    input.id ?? randomUUID(), h, input.consumerId ?? "", input.username ?? "alice", input.customId ?? "",
    createdAt, input.ttl ?? 0, input.now ?? createdAt,
  );
}

beforeAll(async () => {
  port = (await startRedis()).port;
  redis = client();
});
afterAll(async () => {
  redis.disconnect();
  await stopAll();
});

describe("key-auth-create", () => {
  it("writes the record (no TTL) and the index entry, never the key", async () => {
    const s = space();
    const id = randomUUID();
    expect(await create(redis, s, { id, secret: "the-secret", consumerId: "c-1", customId: "cust", createdAt: 1_700_000_123 })).toEqual([1, 0]);
    const record = await redis.hgetall(s.record(sha("the-secret")));
    expect(record).toEqual({
      id,
      consumer_id: "c-1",
      consumer_username: "alice",
      consumer_custom_id: "cust",
      created_at: "1700000123",
      expires_at: "0",
    });
    expect(await redis.ttl(s.record(sha("the-secret")))).toBe(-1);
    const entry = JSON.parse((await redis.hget(s.index, id))!);
    expect(entry).toEqual({
      sha256: sha("the-secret"),
      consumer_id: "c-1",
      consumer_username: "alice",
      consumer_custom_id: "cust",
      created_at: 1_700_000_123,
      expires_at: 0,
    });
    expect(await redis.exists(s.expiring)).toBe(0);
    const everything = JSON.stringify(await Promise.all((await redis.keys(`*spec-create-${seq}*`)).map((k) => redis.dump(k))));
    expect(everything).not.toContain("the-secret");
  });

  it("expiring keys: Redis TTL, expires_at = created_at + ttl, indexed by expiry", async () => {
    const s = space();
    const id = randomUUID();
    expect(await create(redis, s, { id, secret: "exp", createdAt: 1_700_000_000, ttl: 3600 })).toEqual([1, 1_700_003_600]);
    const ttl = await redis.ttl(s.record(sha("exp")));
    expect(ttl).toBeGreaterThan(3590);
    // One second past expires_at: Redis's cleanup never cuts the key short.
    expect(ttl).toBeLessThanOrEqual(3601);
    expect(await redis.hget(s.record(sha("exp")), "expires_at")).toBe("1700003600");
    expect(await redis.zscore(s.expiring, id)).toBe("1700003600");
  });

  it("a TTL is at least that many seconds: a creation time with a fraction rounds expires_at up, created_at down", async () => {
    const s = space();
    const id = randomUUID();
    expect(await create(redis, s, { id, secret: "frac", createdAt: 1_700_000_000.7, ttl: 3, now: 1_700_000_000.7 })).toEqual([1, 1_700_000_004]);
    const record = await redis.hgetall(s.record(sha("frac")));
    expect(record.created_at).toBe("1700000000");
    expect(record.expires_at).toBe("1700000004");
    expect(await redis.pttl(s.record(sha("frac")))).toBeGreaterThan(3000);
    const entry = JSON.parse((await redis.hget(s.index, id))!);
    expect([entry.created_at, entry.expires_at]).toEqual([1_700_000_000, 1_700_000_004]);
    expect(await redis.zscore(s.expiring, id)).toBe("1700000004");
  });

  it("refuses an existing hash or id and writes nothing", async () => {
    const s = space();
    const id = randomUUID();
    await create(redis, s, { id, secret: "dup" });
    const before = await redis.hgetall(s.index);
    expect(await create(redis, s, { secret: "dup", username: "mallory" })).toEqual([0, "exists"]);
    expect(await create(redis, s, { id, secret: "other", username: "mallory" })).toEqual([0, "exists"]);
    expect(await redis.hgetall(s.index)).toEqual(before);
    expect(await redis.exists(s.record(sha("other")))).toBe(0);
    expect(await redis.hget(s.record(sha("dup")), "consumer_username")).toBe("alice");
  });

  it("drops index entries of expired keys, at most 100 per call", async () => {
    const s = space();
    for (let i = 0; i < 150; i++) await create(redis, s, { createdAt: 1_700_000_000, ttl: 10 });
    const live = randomUUID();
    await create(redis, s, { id: live, createdAt: 1_700_000_000, ttl: 1000 });
    expect(await redis.hlen(s.index)).toBe(151);
    // Clock past the 150 short-lived keys but not the long one.
    await create(redis, s, { createdAt: 1_700_000_100, now: 1_700_000_100 });
    expect(await redis.hlen(s.index)).toBe(52);
    expect(await redis.zcard(s.expiring)).toBe(51);
    await create(redis, s, { createdAt: 1_700_000_100, now: 1_700_000_100 });
    expect(await redis.hlen(s.index)).toBe(3);
    expect(await redis.zrange(s.expiring, "0", "-1")).toEqual([live]);
    expect(await redis.hexists(s.index, live)).toBe(1);
  });

  it("stores odd consumer names verbatim and they round-trip through the index JSON", async () => {
    const s = space();
    const odd = "a:b{c}d\ne\"f\\g ключ 🔑 \u0000 end";
    const id = randomUUID();
    expect((await create(redis, s, { id, secret: "odd", username: odd, customId: "{x}:y" }))[0]).toBe(1);
    expect(await redis.hget(s.record(sha("odd")), "consumer_username")).toBe(odd);
    const entry = JSON.parse((await redis.hget(s.index, id))!);
    expect(entry.consumer_username).toBe(odd);
    expect(entry.consumer_custom_id).toBe("{x}:y");
  });

  it("many concurrent clients: every distinct key is stored once, a contested hash exactly once", async () => {
    const s = space();
    const clients = Array.from({ length: 16 }, () => client());
    const distinct = await Promise.all(clients.flatMap((c, ci) => Array.from({ length: 25 }, (_, i) => create(c, s, { secret: `k-${ci}-${i}` }))));
    expect(distinct.every((r) => r[0] === 1)).toBe(true);
    expect(await redis.hlen(s.index)).toBe(400);
    const contested = await Promise.all(clients.flatMap((c) => Array.from({ length: 5 }, () => create(c, s, { secret: "contested" }))));
    expect(contested.filter((r) => r[0] === 1)).toHaveLength(1);
    expect(contested.filter((r) => r[1] === "exists")).toHaveLength(79);
    expect(await redis.hlen(s.index)).toBe(401);
    for (const c of clients) c.disconnect();
  });
});

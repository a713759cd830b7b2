/**
 * redis-lua/key-auth-revoke-3.lua against a real redis-server through ioredis: revoking
 * by key and by id, the invalidation published from inside the script (and only on a
 * revocation), the id guard, stale index entries of expired keys, purging, and many
 * concurrent revokers of one key.
 */
import { createHash, randomUUID } from "node:crypto";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineScripts } from "../../src/cli/redis.js";
import { startRedis, stopAll } from "../helpers/services.js";

const CHANNEL = "krs:redis-key-auth:v1:invalidations";

type Reply = [number, string | number];
interface Scripted {
  create(...keysAndArgs: (string | number)[]): Promise<Reply>;
  revoke(...keysAndArgs: (string | number)[]): Promise<Reply>;
}

let port: number;
let redis: Redis & Scripted;
let subscriber: Redis;
const messages: string[] = [];
let seq = 0;

function client(): Redis & Scripted {
  const r = new Redis({ port, lazyConnect: false });
  defineScripts(r, { create: "key-auth-create" });
  defineScripts(r, { revoke: "key-auth-revoke" });
  return r as Redis & Scripted;
}

function space() {
  seq++;
  const prefix = `krs:redis-key-auth:v1:{spec-revoke-${seq}}`;
  return { record: (h: string) => `${prefix}:key:${h}`, index: `${prefix}:ids`, expiring: `${prefix}:expiring` };
}

const sha = (s: string) => createHash("sha256").update(s).digest("hex");
const NOW = 1_700_000_000;

async function create(s: ReturnType<typeof space>, secret: string, opts: { ttl?: number; id?: string } = {}): Promise<string> {
  const id = opts.id ?? randomUUID();
  const reply = await redis.create(s.record(sha(secret)), s.index, s.expiring, id, sha(secret), "", "alice", "", NOW, opts.ttl ?? 0, NOW);
  expect(reply[0]).toBe(1);
  return id;
}

function revoke(r: Redis & Scripted, s: ReturnType<typeof space>, secretHash: string, wantedId = "", now = NOW): Promise<Reply> {
  return r.revoke(s.record(secretHash), s.index, s.expiring, secretHash, wantedId, CHANNEL, now);
}

/** Messages seen on the channel after `action` (published ones arrive before PING's answer). */
async function published(action: () => Promise<unknown>): Promise<string[]> {
  const from = messages.length;
  await action();
  await new Promise((r) => setTimeout(r, 50));
  return messages.slice(from);
}

beforeAll(async () => {
  port = (await startRedis()).port;
  redis = client();
  subscriber = new Redis({ port });
  await subscriber.subscribe(CHANNEL);
  subscriber.on("message", (_channel: string, message: string) => messages.push(message));
});
afterAll(async () => {
  redis.disconnect();
  subscriber.disconnect();
  await stopAll();
});

describe("key-auth-revoke", () => {
  it("by key: deletes record and index entries and publishes the hash", async () => {
    const s = space();
    const id = await create(s, "secret-1", { ttl: 600 });
    let reply: Reply = [0, ""];
    expect(await published(async () => (reply = await revoke(redis, s, sha("secret-1"))))).toEqual([sha("secret-1")]);
    expect(reply).toEqual([1, id]);
    expect(await redis.exists(s.record(sha("secret-1")))).toBe(0);
    expect(await redis.hexists(s.index, id)).toBe(0);
    expect(await redis.zscore(s.expiring, id)).toBeNull();
  });

  it("by id: revokes only when the record has that id", async () => {
    const s = space();
    const id = await create(s, "secret-2");
    const other = await create(s, "secret-3");
    expect(await published(async () => expect(await revoke(redis, s, sha("secret-2"), other)).toEqual([0, ""]))).toEqual([]);
    expect(await redis.exists(s.record(sha("secret-2")))).toBe(1);
    expect(await redis.hexists(s.index, other)).toBe(1);
    expect(await published(async () => expect(await revoke(redis, s, sha("secret-2"), id)).toEqual([1, id]))).toEqual([sha("secret-2")]);
  });

  it("unknown or already revoked: nothing published, nothing deleted", async () => {
    const s = space();
    const id = await create(s, "kept");
    expect(await published(async () => expect(await revoke(redis, s, sha("never-created"))).toEqual([0, ""]))).toEqual([]);
    expect(await published(() => revoke(redis, s, sha("kept")))).toEqual([sha("kept")]);
    expect(await published(async () => expect(await revoke(redis, s, sha("kept"))).toEqual([0, ""]))).toEqual([]);
    expect(await published(async () => expect(await revoke(redis, s, sha("kept"), id)).toEqual([0, ""]))).toEqual([]);
  });

  it("an expired key's index entry is dropped when its id and hash match, kept otherwise", async () => {
    const s = space();
    const id = await create(s, "gone");
    const victim = await create(s, "victim");
    // As if the record's TTL had run out.
    await redis.del(s.record(sha("gone")), s.record(sha("victim")));
    expect(await revoke(redis, s, sha("other-hash"), victim)).toEqual([0, ""]);
    expect(await redis.hexists(s.index, victim)).toBe(1);
    expect(await revoke(redis, s, sha("gone"), id)).toEqual([0, ""]);
    expect(await redis.hexists(s.index, id)).toBe(0);
  });

  it("purges index entries of keys expired by `now`", async () => {
    const s = space();
    const short = await create(s, "short", { ttl: 5 });
    const long = await create(s, "long", { ttl: 5000 });
    await revoke(redis, s, sha("nothing"), "", NOW + 10);
    expect(await redis.hexists(s.index, short)).toBe(0);
    expect(await redis.hexists(s.index, long)).toBe(1);
    expect(await redis.zrange(s.expiring, "0", "-1")).toEqual([long]);
  });

  it("many concurrent revokers of one key: exactly one revokes, one message", async () => {
    const s = space();
    const id = await create(s, "contested");
    const clients = Array.from({ length: 16 }, () => client());
    let replies: Reply[] = [];
    const seen = await published(async () => {
      replies = await Promise.all(clients.flatMap((c) => [revoke(c, s, sha("contested")), revoke(c, s, sha("contested"), id)]));
    });
    expect(replies.filter((r) => r[0] === 1)).toEqual([[1, id]]);
    expect(seen).toEqual([sha("contested")]);
    for (const c of clients) c.disconnect();
  });
});

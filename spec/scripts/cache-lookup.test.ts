/**
 * redis-lua/cache-lookup-3.lua against a real redis-server through ioredis: the fill
 * lock taken by exactly one of many concurrent callers, waiters told who holds it (or
 * that the fill was uncacheable), refresh-ahead inside the last fraction of the TTL taken
 * by exactly one caller, sliding TTL, Vary markers and malformed values.
 */
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineScripts } from "../../src/cli/redis.js";
import { startRedis, stopAll } from "../helpers/services.js";


type Reply = [1, string, 0 | 1] | [2] | [3, string] | [3, string, 1] | [4, string];

let port: number;
let redis: Redis;
let seq = 0;

function client(): Redis {
  const r = new Redis({ port });
  defineScripts(r, { cacheLookup: "cache-lookup" });
  return r;
}

interface Keys {
  entry: string;
  fill: string;
  refresh: string;
}

function freshKeys(): Keys {
  const tag = `{0.spec${++seq}}`;
  return { entry: `krs:redis-cache:v1:${tag}:entry`, fill: `krs:redis-cache:v1:${tag}:fill`, refresh: `krs:redis-cache:v1:${tag}:refresh` };
}

interface LookupOpts {
  lockMs?: number;
  refresh?: string;
  sliding?: boolean;
  /** ARGV[6]: the kinds the caller reads ("" = all). */
  readable?: string;
  /** ARGV[7]: take no lock (only-if-cached). */
  peek?: boolean;
}

function lookup(r: Redis, k: Keys, token: string, now: number, opts: LookupOpts = {}): Promise<Reply> {
  return (r as unknown as { cacheLookup(...a: (string | number)[]): Promise<Reply> }).cacheLookup(
    k.entry, k.fill, k.refresh, token, opts.lockMs ?? 3000, now, opts.refresh ?? "0", opts.sliding === true ? "1" : "0",
    opts.readable ?? "", opts.peek === true ? "1" : "0",
  );
}

const T0 = 1_700_000_000_000;
const entry = (ttl: number, storedAt: number, kind = "E") => `1|${ttl}|${storedAt}|${kind}|200\n\nbody`;

beforeAll(async () => {
  port = (await startRedis()).port;
  redis = client();
});
afterAll(async () => {
  redis.disconnect();
  await stopAll();
});

describe("cold key", () => {
  it("the first caller gets the fill lock (with lock_timeout as its TTL), later ones are told the holder", async () => {
    const k = freshKeys();
    expect(await lookup(redis, k, "tok-a", T0, { lockMs: 2500 })).toEqual([2]);
    expect(await redis.get(k.fill)).toBe("tok-a");
    const pttl = await redis.pttl(k.fill);
    expect(pttl).toBeGreaterThan(2000);
    expect(pttl).toBeLessThanOrEqual(2500);
    expect(await lookup(redis, k, "tok-b", T0)).toEqual([3, "tok-a"]);
    expect(await redis.get(k.fill)).toBe("tok-a");
    expect(await redis.exists(k.entry)).toBe(0);
  });

  it("reports the uncacheable marker", async () => {
    const k = freshKeys();
    await redis.set(k.fill, "!", "PX", 1000);
    expect(await lookup(redis, k, "tok", T0)).toEqual([3, "!"]);
  });

  it("after the lock expires the next caller takes it", async () => {
    const k = freshKeys();
    expect(await lookup(redis, k, "a", T0, { lockMs: 50 })).toEqual([2]);
    await new Promise((r) => setTimeout(r, 80));
    expect(await lookup(redis, k, "b", T0)).toEqual([2]);
    expect(await redis.get(k.fill)).toBe("b");
  });

  it("exactly one of 200 concurrent callers (own connections) gets the fill lock", async () => {
    const k = freshKeys();
    const clients = Array.from({ length: 20 }, () => client());
    try {
      const replies = await Promise.all(Array.from({ length: 200 }, (_, i) => lookup(clients[i % 20]!, k, `t${i}`, T0)));
      const fills = replies.filter((r) => r[0] === 2);
      expect(fills).toHaveLength(1);
      const holder = await redis.get(k.fill);
      expect(replies.filter((r) => r[0] === 3).every((r) => r[1] === holder)).toBe(true);
    } finally {
      for (const c of clients) c.disconnect();
    }
  });
});

describe("entry present", () => {
  it("returns it and takes no lock outside the refresh window", async () => {
    const k = freshKeys();
    const v = entry(10_000, T0);
    await redis.set(k.entry, v, "PX", 10_000);
    expect(await lookup(redis, k, "t", T0 + 7999, { refresh: "0.2" })).toEqual([1, v, 0]);
    expect(await redis.exists(k.fill, k.refresh)).toBe(0);
  });

  it("inside the last fraction of the TTL exactly one caller gets the refresh lock", async () => {
    const k = freshKeys();
    const v = entry(10_000, T0);
    await redis.set(k.entry, v, "PX", 10_000);
    const clients = Array.from({ length: 10 }, () => client());
    try {
      const replies = await Promise.all(Array.from({ length: 100 }, (_, i) => lookup(clients[i % 10]!, k, `r${i}`, T0 + 8000, { refresh: "0.2", lockMs: 1500 })));
      expect(replies.every((r) => r[0] === 1 && r[1] === v)).toBe(true);
      expect(replies.filter((r) => r[2] === 1)).toHaveLength(1);
      const winner = replies.findIndex((r) => r[2] === 1);
      expect(await redis.get(k.refresh)).toBe(`r${winner}`);
      expect(await redis.pttl(k.refresh)).toBeLessThanOrEqual(1500);
    } finally {
      for (const c of clients) c.disconnect();
    }
  });

  it("reads the fraction as a string; 0 never refreshes; Vary markers are never refreshed", async () => {
    const k = freshKeys();
    await redis.set(k.entry, entry(1000, T0), "PX", 10_000);
    expect((await lookup(redis, k, "t", T0 + 999, { refresh: "0" }))[2]).toBe(0);
    expect((await lookup(redis, k, "t", T0 + 749, { refresh: "0.25" }))[2]).toBe(0);
    expect((await lookup(redis, k, "t", T0 + 750, { refresh: "0.25" }))[2]).toBe(1);
    const m = freshKeys();
    await redis.set(m.entry, "1|1000|" + T0 + "|V|accept-language", "PX", 10_000);
    expect((await lookup(redis, m, "t", T0 + 999, { refresh: "0.5" }))[2]).toBe(0);
  });

  it("sliding TTL restarts the entry's own TTL; fixed leaves it", async () => {
    const k = freshKeys();
    await redis.set(k.entry, entry(60_000, T0), "PX", 1000);
    await lookup(redis, k, "t", T0, { sliding: false });
    expect(await redis.pttl(k.entry)).toBeLessThanOrEqual(1000);
    await lookup(redis, k, "t", T0, { sliding: true });
    expect(await redis.pttl(k.entry)).toBeGreaterThan(59_000);
  });

  it("a value without the prefix is returned as it is, for the gateway to reject", async () => {
    const k = freshKeys();
    await redis.set(k.entry, "garbage", "PX", 10_000);
    expect(await lookup(redis, k, "t", T0, { refresh: "0.5", sliding: true })).toEqual([1, "garbage", 0]);
    expect(await redis.pttl(k.entry)).toBeLessThanOrEqual(10_000);
  });
});

/** An encrypted entry as the gateway seals it (the payload is opaque to the script). */
const sealed = (ttl: number, storedAt: number, keyId: string) => `1|${ttl}|${storedAt}|K|${keyId}|\x01\x02ciphertext`;
const NODE_K2 = "C K0000beef";
const NODE_BOTH = "C K0000beef K0000abcd";

describe("an entry the caller cannot read (review finding 1)", () => {
  it("sliding TTL extends only entries the caller reads: its own key ids, plain on a plain node, C and markers on an encrypting one", async () => {
    const cases: [string, string, boolean][] = [
      [sealed(60_000, T0, "0000abcd"), NODE_K2, false],
      [sealed(60_000, T0, "0000abcd"), NODE_BOTH, true],
      [sealed(60_000, T0, "0000beef"), NODE_K2, true],
      [entry(60_000, T0), NODE_K2, false],
      [entry(60_000, T0), "E", true],
      [sealed(60_000, T0, "0000beef"), "E", false],
      [entry(60_000, T0, "C"), NODE_K2, true],
      [entry(60_000, T0, "C"), "E", false],
      ["1|60000|" + T0 + "|V|accept-language", NODE_K2, true],
    ];
    for (const [value, readable, extended] of cases) {
      const k = freshKeys();
      await redis.set(k.entry, value, "PX", 1000);
      await lookup(redis, k, "t", T0 + 10, { sliding: true, readable });
      const pttl = await redis.pttl(k.entry);
      if (extended) expect(pttl, `${readable} / ${value}`).toBeGreaterThan(59_000);
      else expect(pttl, `${readable} / ${value}`).toBeLessThanOrEqual(1000);
    }
  });

  it("while it is fresh: left as it is, no refresh lock; the first caller gets the fill lock ({4, value}), the others are told the holder and that it is foreign", async () => {
    const k = freshKeys();
    const v = sealed(10_000, T0, "0000abcd");
    await redis.set(k.entry, v, "PX", 10_000);
    expect(await lookup(redis, k, "tok-a", T0 + 9000, { refresh: "0.5", sliding: true, readable: NODE_K2, lockMs: 2500 })).toEqual([4, v]);
    expect(await redis.get(k.fill)).toBe("tok-a");
    expect(await redis.exists(k.refresh)).toBe(0);
    expect(await lookup(redis, k, "tok-b", T0 + 9000, { refresh: "0.5", readable: NODE_K2 })).toEqual([3, "tok-a", 1]);
    expect(await redis.get(k.entry)).toBe(v);
    expect(await redis.pttl(k.entry)).toBeLessThanOrEqual(10_000);
    // A node that reads it still hits it (and gets the refresh lock).
    expect(await lookup(redis, k, "tok-c", T0 + 9000, { refresh: "0.5", readable: NODE_BOTH })).toEqual([1, v, 1]);
  });

  it("once its own TTL has passed (stored at + ttl, whatever its Redis TTL): deleted, and the caller gets the fill lock to replace it", async () => {
    for (const value of [sealed(2000, T0, "0000abcd"), entry(2000, T0)]) {
      const k = freshKeys();
      // Kept alive past its TTL, as sliding TTL on a node that reads it would.
      await redis.set(k.entry, value, "PX", 60_000);
      expect(await lookup(redis, k, "tok", T0 + 2000, { sliding: true, readable: NODE_K2 })).toEqual([2]);
      expect(await redis.exists(k.entry)).toBe(0);
      expect(await redis.get(k.fill)).toBe("tok");
    }
  });

  it("a stale entry the caller reads is left alone (sliding TTL serves it)", async () => {
    const k = freshKeys();
    const v = sealed(2000, T0, "0000beef");
    await redis.set(k.entry, v, "PX", 60_000);
    expect(await lookup(redis, k, "tok", T0 + 5000, { readable: NODE_K2 })).toEqual([1, v, 0]);
    expect(await redis.get(k.entry)).toBe(v);
  });
});

describe("peek (only-if-cached)", () => {
  it("takes neither the fill lock on a cold key nor the refresh lock inside the refresh window", async () => {
    const k = freshKeys();
    expect(await lookup(redis, k, "peek", T0, { peek: true })).toEqual([3, ""]);
    expect(await redis.exists(k.fill)).toBe(0);
    // A real request still becomes the filler at once.
    expect(await lookup(redis, k, "real", T0)).toEqual([2]);
    expect(await lookup(redis, k, "peek", T0, { peek: true })).toEqual([3, "real"]);
    const r = freshKeys();
    const v = entry(10_000, T0);
    await redis.set(r.entry, v, "PX", 10_000);
    expect(await lookup(redis, r, "peek", T0 + 9000, { refresh: "0.5", peek: true })).toEqual([1, v, 0]);
    expect(await redis.exists(r.refresh)).toBe(0);
  });

  it("returns a fresh entry the caller cannot read as it is (a miss for the gateway), taking no lock", async () => {
    const k = freshKeys();
    const v = sealed(10_000, T0, "0000abcd");
    await redis.set(k.entry, v, "PX", 10_000);
    expect(await lookup(redis, k, "peek", T0, { readable: NODE_K2, peek: true })).toEqual([1, v, 0]);
    expect(await redis.exists(k.fill)).toBe(0);
  });
});

/**
 * redis-lua/rate-limit-lease-1.lua and rate-limit-return-1.lua against a real redis-server:
 * a lease counts every admission it grants, never more than 1/8 of the room left (1 near
 * the limit), both algorithms and several windows at once; counts plus outstanding leases
 * never exceed a limit under many concurrent takers; giving back restores the count in the
 * window the lease was counted in, or in its previous-window count once it moved on, never
 * below zero, keeps the TTL and never creates a hash; `lease:until` caps the wait a
 * rejection reports while leases may come back; and the arithmetic agrees with
 * rate-limit-1.lua's for a lease of one.
 */
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineScripts } from "../../src/cli/redis.js";
import { startRedis, stopAll } from "../helpers/services.js";

type Algorithm = "sliding" | "fixed";
interface Window { name: string; limit: number; start: number; length: number; prevStart: number; nextLength: number }
interface Scripts {
  rateLimit(key: string, ...args: (string | number)[]): Promise<number[]>;
  rateLimitLease(key: string, ...args: (string | number)[]): Promise<number[]>;
  rateLimitReturn(key: string, ...args: (string | number)[]): Promise<number>;
}

let port: number;
let redis: Redis & Scripts;
let seq = 0;
const MIN = 60000;
const HOUR = 3_600_000;
const T0 = 1_700_000_040_000; // a minute boundary
const freshKey = () => `krs:redis-rate-limit:v1:{lease-spec:${++seq}}`;

function client(): Redis & Scripts {
  return defineScripts<Scripts>(new Redis({ port }), { rateLimit: "rate-limit", rateLimitLease: "rate-limit-lease", rateLimitReturn: "rate-limit-return" });
}

function win(name: string, limit: number, length: number, now: number): Window {
  const start = now - (now % length);
  return { name, limit, start, length, prevStart: start - length, nextLength: length };
}

interface Grant { granted: number; retry: number; remaining: number[]; buckets: number[] }

async function lease(r: Redis & Scripts, key: string, now: number, algorithm: Algorithm, windows: Window[], want: number, until = now + 1000, ttl = 2 * HOUR): Promise<Grant> {
  const args: (string | number)[] = [now, algorithm, ttl, windows.length, want, until];
  for (const w of windows) args.push(w.name, w.limit, w.start, w.length, w.prevStart, w.nextLength);
  const raw = await r.rateLimitLease(key, ...args);
  const n = windows.length;
  expect(raw.length).toBe(2 + 4 * n);
  return { granted: raw[0]!, retry: raw[1]!, remaining: raw.slice(2, 2 + n), buckets: windows.map((_, i) => raw[2 + n + 3 * i]!) };
}

async function giveBack(r: Redis & Scripts, key: string, windows: Window[], buckets: number[], unused: number): Promise<number> {
  const args: (string | number)[] = [windows.length, unused];
  windows.forEach((w, i) => args.push(w.name, buckets[i]!, buckets[i]! + w.length));
  return r.rateLimitReturn(key, ...args);
}

beforeAll(async () => {
  port = (await startRedis()).port;
  redis = client();
});
afterAll(async () => {
  redis.disconnect();
  await stopAll();
});

describe("rate-limit-lease", () => {
  for (const algorithm of ["fixed", "sliding"] as const) {
    it(`${algorithm}: grants min(want, room / 8), at least 1, counts all of it, and shrinks to 1 near the limit`, async () => {
      const key = freshKey();
      const now = T0 + 10;
      const windows = [win("minute", 100, MIN, now)];
      const grants: number[] = [];
      let counted = 0;
      for (;;) {
        const g = await lease(redis, key, now, algorithm, windows, 50);
        if (g.granted === 0) break;
        const room = 100 - counted;
        expect(g.granted).toBe(Math.min(50, Math.max(1, Math.floor(room / 8))));
        counted += g.granted;
        expect(g.remaining).toEqual([100 - counted]);
        expect(Number(await redis.hget(key, "minute:count"))).toBe(counted);
        grants.push(g.granted);
      }
      expect(counted).toBe(100);
      // the last admissions are leased one at a time (room / 8 < 2)
      expect(grants.slice(-8)).toEqual(Array(8).fill(1));
      expect(grants[0]).toBe(12);
    });
  }

  it("every window at once: the tightest decides the grant, all count it", async () => {
    const key = freshKey();
    const now = T0 + 10;
    const windows = [win("second", 40, 1000, now), win("minute", 1000, MIN, now), win("hour", 5000, HOUR, now)];
    const g = await lease(redis, key, now, "sliding", windows, 100);
    expect(g.granted).toBe(5); // 40 / 8
    expect(g.remaining).toEqual([35, 995, 4995]);
    expect(await redis.hmget(key, "second:count", "minute:count", "hour:count")).toEqual(["5", "5", "5"]);
  });

  it("a lease of one decides as rate-limit-1.lua does (same counters, same remaining, same wait)", async () => {
    const [a, b] = [freshKey(), freshKey()];
    for (let i = 0; i < 14; i++) {
      const now = T0 + 20 + i * 7000; // across a minute boundary: the sliding weight at work
      const windows = [win("minute", 6, MIN, now)];
      const args: (string | number)[] = [now, "sliding", 2 * HOUR, 1];
      for (const w of windows) args.push(w.name, w.limit, w.start, w.length, w.prevStart, w.nextLength);
      const exact = await redis.rateLimit(a, ...args);
      const leased = await lease(redis, b, now, "sliding", windows, 1, 0);
      expect([leased.granted, leased.retry, ...leased.remaining]).toEqual([exact[0], exact[1], exact[2]]);
    }
    const fields = ["minute:start", "minute:count", "minute:prev"];
    expect(await redis.hmget(b, ...fields)).toEqual(await redis.hmget(a, ...fields));
  });

  it("rejected: writes nothing; the wait is capped by lease:until while leases may come back", async () => {
    const key = freshKey();
    const now = T0 + 100;
    const windows = [win("minute", 16, MIN, now)];
    const g = await lease(redis, key, now, "fixed", windows, 16, now + 2000);
    expect(g.granted).toBe(2);
    await lease(redis, key, now, "fixed", windows, 1, 0);
    while ((await lease(redis, key, now, "fixed", windows, 1, 0)).granted > 0);
    const before = await redis.hgetall(key);
    const r = await lease(redis, key, now + 500, "fixed", windows, 5);
    expect(r.granted).toBe(0);
    expect(r.retry).toBe(1500); // until lease:until, not the minute's end
    expect(await redis.hgetall(key)).toEqual(before);
    const later = await lease(redis, key, now + 2500, "fixed", windows, 5);
    expect(later.retry).toBe(T0 + MIN - (now + 2500)); // no lease out any more: the window's end
  });

  it("many concurrent takers never get more than the limit between them", async () => {
    const key = freshKey();
    const now = T0 + 10;
    const windows = [win("minute", 1000, MIN, now), win("hour", 1500, HOUR, now)];
    const clients = Array.from({ length: 8 }, () => client());
    const grants = await Promise.all(Array.from({ length: 400 }, (_, i) => lease(clients[i % 8]!, key, now, "sliding", windows, 1 + (i % 37))));
    clients.forEach((c) => c.disconnect());
    const total = grants.reduce((a, g) => a + g.granted, 0);
    expect(total).toBe(1000);
    expect(Number(await redis.hget(key, "minute:count"))).toBe(1000);
  });
});

describe("rate-limit-return", () => {
  it("gives unused admissions back to the window they were counted in, keeping the TTL", async () => {
    const key = freshKey();
    const now = T0 + 10;
    const windows = [win("minute", 100, MIN, now), win("hour", 1000, HOUR, now)];
    const g = await lease(redis, key, now, "fixed", windows, 12, now + 1000, 90_000);
    expect(g.granted).toBe(12);
    const ttl = await redis.pttl(key);
    expect(await giveBack(redis, key, windows, g.buckets, 7)).toBe(2);
    expect(await redis.hmget(key, "minute:count", "hour:count")).toEqual(["5", "5"]);
    expect(await redis.pttl(key)).toBeLessThanOrEqual(ttl);
    expect(await redis.pttl(key)).toBeGreaterThan(80_000);
    // never below zero
    await giveBack(redis, key, windows, g.buckets, 50);
    expect(await redis.hmget(key, "minute:count", "hour:count")).toEqual(["0", "0"]);
  });

  it("a window that moved on: off its previous-window count (the sliding weight); older: nothing", async () => {
    const key = freshKey();
    const now = T0 + 10;
    const windows = [win("minute", 100, MIN, now)];
    const g = await lease(redis, key, now, "sliding", windows, 12);
    // the next minute's first lease moves the count into minute:prev
    const next = T0 + MIN + 30_000;
    await lease(redis, key, next, "sliding", [win("minute", 100, MIN, next)], 1, 0);
    expect(await redis.hmget(key, "minute:count", "minute:prev")).toEqual(["1", "12"]);
    expect(await giveBack(redis, key, windows, g.buckets, 10)).toBe(1);
    expect(await redis.hmget(key, "minute:count", "minute:prev")).toEqual(["1", "2"]);
    // two minutes on: the lease's minute counts nowhere any more
    const later = T0 + 2 * MIN + 10;
    await lease(redis, key, later, "sliding", [win("minute", 100, MIN, later)], 1, 0);
    const before = await redis.hgetall(key);
    expect(await giveBack(redis, key, windows, g.buckets, 2)).toBe(0);
    expect(await redis.hgetall(key)).toEqual(before);
  });

  it("does not create a hash that expired meanwhile", async () => {
    const key = freshKey();
    expect(await giveBack(redis, key, [win("minute", 100, MIN, T0)], [T0], 5)).toBe(0);
    expect(await redis.exists(key)).toBe(0);
  });
});

/**
 * redis-lua/rate-limit-1.lua against a real redis-server through ioredis, with the clock
 * passed in ARGV as the gateway does: fixed and sliding windows across boundaries, the
 * exact Retry-After (checked against a brute-force search), nothing written on a
 * rejection, skewed clocks, TTLs, all six windows up to a calendar year, and exactness
 * under many concurrent clients.
 */
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineScripts } from "../../src/cli/redis.js";
import { startRedis, stopAll } from "../helpers/services.js";

const STEPS = 262144n;

interface Window {
  name: string;
  limit: number;
  start: number;
  length: number;
  prevStart: number;
  nextLength: number;
}

interface Reply {
  admitted: boolean;
  retry: number;
  remaining: number[];
}

/** The counters the script decided each window with: [start counted in, count, previous count]. */
type Counted = [number, number, number];

type Algorithm = "sliding" | "fixed";

let port: number;
let redis: Redis;
let seq = 0;

function client(): Redis {
  const r = new Redis({ port, lazyConnect: false });
  defineScripts(r, { rateLimit: "rate-limit" });
  return r;
}

async function callWithCounts(r: Redis, key: string, now: number, algorithm: Algorithm, windows: Window[], ttl = 120000): Promise<Reply & { counted: Counted[] }> {
  const args: (string | number)[] = [now, algorithm, ttl, windows.length];
  for (const w of windows) args.push(w.name, w.limit, w.start, w.length, w.prevStart, w.nextLength);
  const raw = await (r as unknown as { rateLimit(key: string, ...args: (string | number)[]): Promise<number[]> }).rateLimit(key, ...args);
  const n = windows.length;
  expect(raw.length).toBe(2 + 4 * n);
  const counted = windows.map((_, i): Counted => [raw[2 + n + 3 * i]!, raw[3 + n + 3 * i]!, raw[4 + n + 3 * i]!]);
  return { admitted: raw[0] === 1, retry: raw[1]!, remaining: raw.slice(2, 2 + n), counted };
}

async function call(r: Redis, key: string, now: number, algorithm: Algorithm, windows: Window[], ttl = 120000): Promise<Reply> {
  const { admitted, retry, remaining } = await callWithCounts(r, key, now, algorithm, windows, ttl);
  return { admitted, retry, remaining };
}

/** The window of `length` ms containing `now`, aligned on the epoch (as the gateway computes it). */
function win(name: string, limit: number, length: number, now: number): Window {
  const start = now - (now % length);
  return { name, limit, start, length, prevStart: start - length, nextLength: length };
}

function freshKey(): string {
  seq++;
  return `krs:redis-rate-limit:v1:{spec:${seq}}`;
}

beforeAll(async () => {
  port = (await startRedis()).port;
  redis = client();
});
afterAll(async () => {
  redis.disconnect();
  await stopAll();
});

const MIN = 60000;
// A minute boundary well in the past, so test times are plain numbers.
const T0 = 1_700_000_040_000;

describe("fixed window", () => {
  it("admits exactly the limit, reports remaining down to 0, and rejects until the window ends", async () => {
    const key = freshKey();
    const now = T0 + 1500;
    const seen: [number, number][] = [];
    for (let i = 0; i < 3; i++) {
      const r = await call(redis, key, now + i, "fixed", [win("minute", 3, MIN, now + i)]);
      expect(r.admitted).toBe(true);
      seen.push([r.remaining[0]!, r.retry]);
    }
    // the request that used the window up already says how long the next one must wait
    expect(seen).toEqual([[2, 0], [1, 0], [0, T0 + MIN - (now + 2)]]);
    const rejected = await call(redis, key, now + 10, "fixed", [win("minute", 3, MIN, now + 10)]);
    expect(rejected).toEqual({ admitted: false, retry: T0 + MIN - (now + 10), remaining: [0] });
    const next = await call(redis, key, T0 + MIN, "fixed", [win("minute", 3, MIN, T0 + MIN)]);
    expect(next).toEqual({ admitted: true, retry: 0, remaining: [2] });
  });

  it("writes nothing for a rejected request (hash and TTL unchanged)", async () => {
    const key = freshKey();
    const now = T0 + 100;
    await call(redis, key, now, "fixed", [win("minute", 1, MIN, now)], 50000);
    const before = await redis.hgetall(key);
    await new Promise((r) => setTimeout(r, 20));
    const ttlBefore = await redis.pttl(key);
    const r = await call(redis, key, now + 1, "fixed", [win("minute", 1, MIN, now + 1)], 99999);
    expect(r.admitted).toBe(false);
    expect(await redis.hgetall(key)).toEqual(before);
    expect(await redis.pttl(key)).toBeLessThanOrEqual(ttlBefore);
    expect(before).toEqual({ "minute:start": String(T0), "minute:count": "1", "minute:prev": "0" });
  });

  it("sets the TTL it is given on an admitted request", async () => {
    const key = freshKey();
    await call(redis, key, T0, "fixed", [win("minute", 5, MIN, T0)], 61234);
    const ttl = await redis.pttl(key);
    expect(ttl).toBeGreaterThan(60000);
    expect(ttl).toBeLessThanOrEqual(61234);
  });

  it("counts a request in no window when one window rejects it", async () => {
    const key = freshKey();
    const now = T0 + 10;
    const windows = (t: number) => [win("second", 2, 1000, t), win("minute", 5, MIN, t)];
    expect((await call(redis, key, now, "fixed", windows(now))).remaining).toEqual([1, 4]);
    expect(await call(redis, key, now + 1, "fixed", windows(now + 1))).toEqual({ admitted: true, retry: 1000 - 11, remaining: [0, 3] });
    const rejected = await call(redis, key, now + 2, "fixed", windows(now + 2));
    expect(rejected).toEqual({ admitted: false, retry: 1000 - 12, remaining: [0, 3] });
    expect(await redis.hget(key, "minute:count")).toBe("2");
    // the next second: the minute still has 3 left
    const later = await call(redis, key, T0 + 1000, "fixed", windows(T0 + 1000));
    expect(later).toEqual({ admitted: true, retry: 0, remaining: [1, 2] });
  });

  it("waits for the longest blocking window", async () => {
    const key = freshKey();
    const now = T0 + 59500;
    const windows = (t: number) => [win("second", 1, 1000, t), win("hour", 1, 3600000, t)];
    expect((await call(redis, key, now, "fixed", windows(now))).admitted).toBe(true);
    const rejected = await call(redis, key, now + 1, "fixed", windows(now + 1));
    const hourStart = (now + 1) - ((now + 1) % 3600000);
    expect(rejected.retry).toBe(hourStart + 3600000 - (now + 1));
  });
});

describe("sliding window", () => {
  it("weights the previous window by the part of it still inside the last window length", async () => {
    const key = freshKey();
    const first = T0 + 1000;
    for (let i = 0; i < 10; i++) {
      expect((await call(redis, key, first + i, "sliding", [win("minute", 10, MIN, first + i)])).admitted).toBe(true);
    }
    expect((await call(redis, key, first + 20, "sliding", [win("minute", 10, MIN, first + 20)])).admitted).toBe(false);
    // Half-way into the next minute, the previous 10 weigh 5: 5 more fit.
    const half = T0 + MIN + 30000;
    const remaining: number[] = [];
    let last: Reply | undefined;
    for (let i = 0; i < 5; i++) {
      last = await call(redis, key, half, "sliding", [win("minute", 10, MIN, half)]);
      expect(last.admitted).toBe(true);
      remaining.push(last.remaining[0]!);
    }
    expect(remaining).toEqual([4, 3, 2, 1, 0]);
    // 10 * weight + 6 * STEPS <= 10 * STEPS once weight <= 104857 steps, at 36001 ms into the minute.
    expect(last!.retry).toBe(6001);
    const rejected = await call(redis, key, half, "sliding", [win("minute", 10, MIN, half)]);
    expect(rejected.admitted).toBe(false);
    expect(rejected.retry).toBe(6001);
    expect(await redis.hgetall(key)).toEqual({ "minute:start": String(T0 + MIN), "minute:count": "5", "minute:prev": "10" });
    const early = await call(redis, key, T0 + MIN + 36000, "sliding", [win("minute", 10, MIN, T0 + MIN + 36000)]);
    expect(early.admitted).toBe(false);
    expect(early.retry).toBe(1);
    const onTime = await call(redis, key, T0 + MIN + 36001, "sliding", [win("minute", 10, MIN, T0 + MIN + 36001)]);
    // admitted, and the window is full again: 10 * weight + 7 * STEPS <= 10 * STEPS from 42001 ms on
    expect(onTime).toEqual({ admitted: true, retry: 6000, remaining: [0] });
  });

  it("forgets a window that is not the previous one", async () => {
    const key = freshKey();
    await call(redis, key, T0, "sliding", [win("minute", 1, MIN, T0)]);
    const twoLater = T0 + 2 * MIN + 5;
    const r = await call(redis, key, twoLater, "sliding", [win("minute", 1, MIN, twoLater)]);
    // limit 1, sliding: the next request waits until this one's window has fully passed out of the last minute
    expect(r).toEqual({ admitted: true, retry: 2 * MIN - 5, remaining: [0] });
    expect(await redis.hget(key, "minute:prev")).toBe("0");
  });

  it("when the current window alone is full, waits into the next window until it has decayed", async () => {
    const key = freshKey();
    const now = T0 + 10000;
    for (let i = 0; i < 4; i++) await call(redis, key, now, "sliding", [win("minute", 4, MIN, now)]);
    const r = await call(redis, key, now, "sliding", [win("minute", 4, MIN, now)]);
    expect(r.admitted).toBe(false);
    // Next minute: 4 * weight + 1 * STEPS <= 4 * STEPS once weight <= 196608 steps (3/4): 15 s in.
    expect(r.retry).toBe(MIN - 10000 + 15000);
  });
});

describe("clocks", () => {
  it("a node whose clock is behind uses the newer window instead of resetting it", async () => {
    const key = freshKey();
    const ahead = T0 + MIN + 10; // already in the next minute
    for (let i = 0; i < 3; i++) await call(redis, key, ahead, "fixed", [win("minute", 3, MIN, ahead)]);
    const behind = T0 + MIN - 50; // still in the previous minute on its clock
    const r = await call(redis, key, behind, "fixed", [win("minute", 3, MIN, behind)]);
    expect(r.admitted).toBe(false);
    expect(r.retry).toBe(T0 + 2 * MIN - behind);
    expect(await redis.hget(key, "minute:start")).toBe(String(T0 + MIN));
    expect(await redis.hget(key, "minute:count")).toBe("3");
  });
});

// ---------------------------------------------------------------- reference model

interface ModelWindow {
  start?: number;
  count: number;
  prev: number;
}

/**
 * Deliberately wrong readings of the rule, which the boundary cases must tell apart from
 * it: the weight rounded down, `count + 1 < limit`, the elapsed time one millisecond long.
 */
type Variant = "documented" | "weight-floor" | "strict-limit" | "elapsed-plus-one";

/** The documented decision on BigInts: count + 1 <= limit with the weight rounded up to 1/STEPS. */
function decide(state: ModelWindow[], now: number, algorithm: Algorithm, windows: Window[], variant: Variant = "documented"): { admitted: boolean; remaining: number[]; next: ModelWindow[] } {
  let admitted = true;
  const remaining: number[] = [];
  const next: ModelWindow[] = [];
  windows.forEach((w, i) => {
    const s = state[i]!;
    let curr = 0;
    let prev = 0;
    if (s.start === w.start) {
      curr = s.count;
      prev = s.prev;
    } else if (s.start === w.prevStart) {
      prev = s.count;
    }
    let room: bigint;
    if (algorithm === "fixed") {
      room = BigInt(w.limit - curr);
    } else {
      const e = BigInt(now - w.start + (variant === "elapsed-plus-one" ? 1 : 0));
      const len = BigInt(w.length);
      const weight = variant === "weight-floor" ? ((len - e) * STEPS) / len : ((len - e) * STEPS + len - 1n) / len; // ceil, non-negative
      const num = BigInt(w.limit) * STEPS - BigInt(prev) * weight;
      const fl = num >= 0n ? num / STEPS : -((-num + STEPS - 1n) / STEPS);
      room = fl - BigInt(curr);
    }
    if (variant === "strict-limit") room -= 1n;
    if (room < 1n) {
      admitted = false;
      room = 0n;
    }
    remaining.push(Number(room));
    next.push({ start: w.start, count: curr + 1, prev });
  });
  if (admitted) return { admitted, remaining: remaining.map((r) => r - 1), next };
  return { admitted, remaining, next: state };
}

/** Smallest t > now at which `decide` admits, by binary search (admission is monotone while nothing is admitted). */
function firstAdmission(state: ModelWindow[], now: number, algorithm: Algorithm, windows: (t: number) => Window[], horizon = 3 * 3_600_000): number {
  let lo = now; // rejected
  let hi = now + horizon;
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (decide(state, mid, algorithm, windows(mid)).admitted) hi = mid;
    else lo = mid;
  }
  return hi;
}

describe("against the reference model", () => {
  for (const algorithm of ["sliding", "fixed"] as const) {
    it(`${algorithm}: random traffic gives the model's decisions, remaining counts and exact retry times`, async () => {
      const key = freshKey();
      const windows = (t: number) => [win("second", 3, 1000, t), win("minute", 17, MIN, t)];
      let state: ModelWindow[] = [{ count: 0, prev: 0 }, { count: 0, prev: 0 }];
      let now = T0 + 123;
      let rejections = 0;
      let rng = 42;
      const random = () => {
        rng = (rng * 1103515245 + 12345) % 2147483648;
        return rng / 2147483648;
      };
      for (let i = 0; i < 400; i++) {
        now += Math.floor(random() * random() * 2500);
        const got = await call(redis, key, now, algorithm, windows(now));
        const want = decide(state, now, algorithm, windows(now));
        expect({ i, now, admitted: got.admitted, remaining: got.remaining }).toEqual({ i, now, admitted: want.admitted, remaining: want.remaining });
        // the wait is exact: the first moment the model admits again (after this request, if admitted)
        const after = want.next;
        const blocked = !decide(after, now, algorithm, windows(now)).admitted;
        expect(got.retry).toBe(blocked ? firstAdmission(after, now, algorithm, windows) - now : 0);
        if (!got.admitted) rejections++;
        state = after;
      }
      expect(rejections).toBeGreaterThan(20);
    });
  }
});

/** The calendar month or year (UTC) containing `now`, as the gateway's windows.bounds computes it. */
function calendar(name: string, limit: number, now: number, unit: "month" | "year"): Window {
  const d = new Date(now);
  const y = d.getUTCFullYear();
  const m = unit === "year" ? 0 : d.getUTCMonth();
  const step = unit === "year" ? 12 : 1;
  const start = Date.UTC(y, m, 1);
  const end = Date.UTC(y, m + step, 1);
  return { name, limit, start, length: end - start, prevStart: Date.UTC(y, m - step, 1), nextLength: Date.UTC(y, m + 2 * step, 1) - end };
}

describe("exact boundaries against the reference model", () => {
  const DAY = 86_400_000;
  // One window per case; a time inside it picks the window (its bounds as the gateway computes them).
  const SHAPES: { label: string; at: number; windows: (limit: number) => (t: number) => Window[] }[] = [
    { label: "second", at: T0 + 17, windows: (limit) => (t) => [win("w", limit, 1000, t)] },
    { label: "minute", at: T0 + 17, windows: (limit) => (t) => [win("w", limit, MIN, t)] },
    { label: "hour", at: T0 + 17, windows: (limit) => (t) => [win("w", limit, 3_600_000, t)] },
    { label: "day", at: Date.UTC(2026, 2, 3, 4), windows: (limit) => (t) => [win("w", limit, DAY, t)] },
    { label: "February (28 days)", at: Date.UTC(2026, 1, 9), windows: (limit) => (t) => [calendar("w", limit, t, "month")] },
    { label: "December (31 days)", at: Date.UTC(2026, 11, 9), windows: (limit) => (t) => [calendar("w", limit, t, "month")] },
    { label: "leap year", at: Date.UTC(2024, 5, 9), windows: (limit) => (t) => [calendar("w", limit, t, "year")] },
  ];
  const LIMITS = [1, 2, 10, 37, 10_000_000_000];
  const VARIANTS: Variant[] = ["weight-floor", "strict-limit", "elapsed-plus-one"];

  /** The model's room (requests admitted now) for one window's counters, before any admission. */
  function room(state: ModelWindow[], t: number, algorithm: Algorithm, windows: (t: number) => Window[]): number {
    const d = decide(state, t, algorithm, windows(t));
    return d.admitted ? d.remaining[0]! + 1 : 0;
  }

  /** The first ms in [from, to) at which the room is at least k (the room only grows while nothing is admitted), or undefined. */
  function firstWithRoom(k: number, state: ModelWindow[], from: number, to: number, algorithm: Algorithm, windows: (t: number) => Window[]): number | undefined {
    if (room(state, to - 1, algorithm, windows) < k) return undefined;
    let lo = from - 1;
    let hi = to - 1;
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (room(state, mid, algorithm, windows) >= k) hi = mid;
      else lo = mid;
    }
    return hi;
  }

  for (const algorithm of ["sliding", "fixed"] as const) {
    it(`${algorithm}: at and around each window's edges and each moment the room grows, counts at the limit and one over`, async () => {
      const checks: { what: object; t: number; state: ModelWindow[]; windows: (t: number) => Window[] }[] = [];
      for (const shape of SHAPES) {
        for (const limit of LIMITS) {
          const windows = shape.windows(limit);
          const w = windows(shape.at);
          const end = w[0]!.start + w[0]!.length;
          const afterNext = end + w[0]!.nextLength;
          const prevs = algorithm === "fixed" ? [0] : [...new Set([0, 1, Math.ceil(limit / 3), limit - 1, limit])].filter((p) => p >= 0 && p <= limit);
          const currs = [...new Set([0, Math.floor(limit / 2), limit - 2, limit - 1, limit])].filter((c) => c >= 0);
          for (const prev of prevs) {
            for (const curr of currs) {
              const state: ModelWindow[] = [{ start: w[0]!.start, count: curr, prev }];
              const times = new Set([w[0]!.start, w[0]!.start + 1, end - 1, end, end + 1, afterNext - 1, afterNext]);
              for (const k of [1, 2, 3]) {
                const flip = firstWithRoom(k, state, w[0]!.start, afterNext, algorithm, windows);
                if (flip !== undefined) for (const t of [flip - 1, flip, flip + 1]) if (t >= w[0]!.start) times.add(t);
              }
              for (const t of times) checks.push({ what: { shape: shape.label, limit, prev, curr, into: t - w[0]!.start }, t, state, windows });
            }
          }
        }
      }
      const differs = new Map<Variant, number>(VARIANTS.map((v) => [v, 0]));
      let admitted = 0;
      for (let i = 0; i < checks.length; i += 200) {
        await Promise.all(checks.slice(i, i + 200).map(async ({ what, t, state, windows }) => {
          const key = freshKey();
          const s = state[0]!;
          await redis.hset(key, { "w:start": s.start!, "w:count": s.count, "w:prev": s.prev });
          const got = await call(redis, key, t, algorithm, windows(t));
          const want = decide(state, t, algorithm, windows(t));
          const after = want.admitted ? want.next : state;
          const blocked = !decide(after, t, algorithm, windows(t)).admitted;
          const retry = blocked ? firstAdmission(after, t, algorithm, windows, 3 * 366 * DAY) - t : 0;
          expect({ ...what, admitted: got.admitted, remaining: got.remaining, retry: got.retry }).toEqual({ ...what, admitted: want.admitted, remaining: want.remaining, retry });
          if (got.admitted) admitted++;
          for (const v of VARIANTS) {
            const other = decide(state, t, algorithm, windows(t), v);
            if (other.admitted !== want.admitted || other.remaining[0] !== want.remaining[0]) differs.set(v, differs.get(v)! + 1);
          }
        }));
      }
      console.log(`${algorithm}: ${checks.length} boundary checks, ${admitted} admitted; cases where a wrong reading differs: ${JSON.stringify(Object.fromEntries(differs))}`);
      expect(admitted).toBeGreaterThan(checks.length / 10);
      expect(checks.length - admitted).toBeGreaterThan(checks.length / 10);
      // the cases tell each wrong reading apart from the rule (fixed windows have no weight or elapsed time)
      for (const v of VARIANTS) if (algorithm === "sliding" || v === "strict-limit") expect({ v, differs: differs.get(v)! > 0 }).toEqual({ v, differs: true });
    });
  }
});

describe("six windows, up to a calendar year", () => {
  const DAY = 86_400_000;

  const LIMIT = 10_000_000_000;
  const all = (t: number, yearLimit: number): Window[] => [
    win("second", LIMIT, 1000, t),
    win("minute", LIMIT, MIN, t),
    win("hour", LIMIT, 3_600_000, t),
    win("day", LIMIT, DAY, t),
    calendar("month", LIMIT, t, "month"),
    calendar("year", yearLimit, t, "year"),
  ];

  it("decides second … year in one call, exactly, with a leap year's sliding window at the 10^10 limit", async () => {
    const LEAP = Date.UTC(2024, 0, 1);
    const LENGTH = 366 * DAY;
    expect(calendar("year", 1, LEAP + 5, "year")).toEqual({ name: "year", limit: 1, start: LEAP, length: LENGTH, prevStart: Date.UTC(2023, 0, 1), nextLength: 365 * DAY });
    let rng = 7;
    const random = () => {
      rng = (rng * 1103515245 + 12345) % 2147483648;
      return rng / 2147483648;
    };
    // [ms into the year, admitted in 2023, admitted in 2024 so far]: at the edges of the
    // weight's rounding, and random ones within a few requests of the limit
    const cases: [number, number, number][] = [
      [1, LIMIT - 1, 0], [1, LIMIT, 0], [120_000, LIMIT - 1, 0], [LENGTH / 2 + 12_345, LIMIT, 0], [LENGTH - 1, LIMIT, 0], [LENGTH - 1, 1, LIMIT - 1],
    ];
    for (let i = 0; i < 40; i++) {
      const into = Math.floor(random() * LENGTH);
      const prev = LIMIT - Math.floor(random() * random() * 1e6);
      const share = Math.floor((prev * (LENGTH - into)) / LENGTH);
      cases.push([into, prev, Math.max(0, LIMIT - share - 3 + Math.floor(random() * 6))]);
    }
    const seen = { rejected: 0, waits: 0 };
    for (const algorithm of ["sliding", "fixed"] as const) {
      for (const [into, prev, curr] of cases) {
        const key = freshKey();
        const now = LEAP + into;
        const windows = (t: number) => all(t, LIMIT);
        await redis.hset(key, { "year:start": LEAP, "year:count": curr, "year:prev": prev });
        const got = await call(redis, key, now, algorithm, windows(now));
        const state: ModelWindow[] = [0, 1, 2, 3, 4].map(() => ({ count: 0, prev: 0 }));
        state.push({ start: LEAP, count: curr, prev });
        const want = decide(state, now, algorithm, windows(now));
        const what = { algorithm, into, prev, curr };
        expect({ ...what, admitted: got.admitted, remaining: got.remaining }).toEqual({ ...what, admitted: want.admitted, remaining: want.remaining });
        const after = want.next;
        const blocked = !decide(after, now, algorithm, windows(now)).admitted;
        const retry = blocked ? firstAdmission(after, now, algorithm, windows, 2 * LENGTH) - now : 0;
        expect({ ...what, retry: got.retry }).toEqual({ ...what, retry });
        if (!got.admitted) seen.rejected++;
        if (got.retry > 0) seen.waits++;
      }
    }
    // the cases reach both sides of the decision, and waits of months
    expect(seen.rejected).toBeGreaterThan(3);
    expect(seen.waits).toBeGreaterThan(5);
  });

  it("counts in all six windows, and a year with the lowest limit rejects and writes nothing", async () => {
    const key = freshKey();
    const now = Date.UTC(2025, 6, 4, 12, 0, 0, 250);
    const windows = all(now, 2);
    expect(await call(redis, key, now, "fixed", windows)).toEqual({ admitted: true, retry: 0, remaining: [LIMIT - 1, LIMIT - 1, LIMIT - 1, LIMIT - 1, LIMIT - 1, 1] });
    expect(await call(redis, key, now + 1, "fixed", windows)).toEqual({ admitted: true, retry: Date.UTC(2026, 0, 1) - (now + 1), remaining: [LIMIT - 2, LIMIT - 2, LIMIT - 2, LIMIT - 2, LIMIT - 2, 0] });
    const before = await redis.hgetall(key);
    expect(before["year:start"]).toBe(String(Date.UTC(2025, 0, 1)));
    expect(before["year:count"]).toBe("2");
    const rejected = await call(redis, key, now + 2, "fixed", windows);
    expect(rejected).toEqual({ admitted: false, retry: Date.UTC(2026, 0, 1) - (now + 2), remaining: [LIMIT - 2, LIMIT - 2, LIMIT - 2, LIMIT - 2, LIMIT - 2, 0] });
    expect(await redis.hgetall(key)).toEqual(before);
  });
});

describe("concurrency", () => {
  for (const algorithm of ["sliding", "fixed"] as const) {
    it(`${algorithm}: 40 clients, 600 concurrent calls, limit 37: exactly 37 admitted`, async () => {
      const key = freshKey();
      const clients = Array.from({ length: 40 }, () => client());
      const now = T0 + 5000;
      const replies = await Promise.all(
        Array.from({ length: 600 }, (_, i) => call(clients[i % clients.length]!, key, now + (i % 7), algorithm, [win("hour", 37, 3_600_000, now + (i % 7))])),
      );
      for (const c of clients) c.disconnect();
      expect(replies.filter((r) => r.admitted).length).toBe(37);
      expect(await redis.hget(key, "hour:count")).toBe("37");
      const remainings = replies.filter((r) => r.admitted).map((r) => r.remaining[0]).sort((a, b) => a! - b!);
      expect(remainings).toEqual(Array.from({ length: 37 }, (_, i) => i));
    });
  }
});

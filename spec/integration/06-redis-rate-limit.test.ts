/**
 * redis-rate-limit through real gateways on one real Redis: exactness across 2 gateway
 * nodes x 2 workers under a concurrent burst (both algorithms), the sliding window across
 * a boundary, every limit_by, Kong's headers and their values (the year window too),
 * hide_client_headers, the rejection response, Redis round trips per request (INFO
 * commandstats), coalescing of a burst's calls in each worker, and fault_tolerant both ways with Redis stopped. On a 1-worker gateway:
 * every window's headers by exact name (all six), the worker's deny cache answering what
 * the script would have answered at that moment, and a fresh headers table per rejection.
 */
import { Agent, request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineScripts } from "../../src/cli/redis.js";
import { BACKENDS, redisBackend } from "../helpers/backends.js";
import { gateway, startRedis, stopAll, upstream, type RedisServer, type TestGateway } from "../helpers/services.js";

interface Res {
  status: number;
  headers: IncomingHttpHeaders;
  /** Header names exactly as the gateway spelled them. */
  rawNames: string[];
  body: string;
  /** Date.now() when the request was sent and when its response was complete. */
  sentAt: number;
  doneAt: number;
}

const agent = new Agent({ keepAlive: true, maxSockets: 512 });

function hit(url: string, headers: Record<string, string> = {}, localAddress?: string): Promise<Res> {
  return new Promise((resolve, reject) => {
    const sentAt = Date.now();
    const req = httpRequest(url, { headers, agent: localAddress === undefined ? agent : undefined, localAddress }, (r) => {
      let body = "";
      r.setEncoding("utf8");
      r.on("data", (c: string) => (body += c));
      const rawNames = r.rawHeaders.filter((_, i) => i % 2 === 0);
      r.on("end", () => resolve({ status: r.statusCode ?? 0, headers: r.headers, rawNames, body, sentAt, doneAt: Date.now() }));
    });
    req.on("error", reject);
    req.end();
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until Date.now() is at least `after` ms into a window of `length` ms and `before` ms from its end. */
async function intoWindow(length: number, after: number, before: number): Promise<void> {
  for (;;) {
    const into = Date.now() % length;
    if (into >= after && length - into >= before) return;
    await sleep(into < after ? after - into : length - into + after);
  }
}

/** intoWindow for several windows at once, each as [length, after, before]; bounded. */
async function intoWindows(...windows: [number, number, number][]): Promise<void> {
  for (let tries = 0; tries < 1000; tries++) {
    const now = Date.now();
    const wait = Math.max(0, ...windows.map(([length, after, before]) => {
      const into = now % length;
      return into >= after && length - into >= before ? 0 : into < after ? after - into : length - into + after;
    }));
    if (wait === 0) return;
    await sleep(Math.min(wait, 250));
  }
  throw new Error("no moment satisfied every window");
}

/** Every rate-limit header name of a response, spelled as sent, sorted. */
const rateLimitNames = (r: Res) => r.rawNames.filter((h) => /ratelimit|retry-after/i.test(h)).sort();

let redis: RedisServer;
let control: Redis;
let gwA: TestGateway;
let gwB: TestGateway;
let seq = 0;
/** A client id (limit_by header value) no other test uses. */
const client = () => `c${++seq}-${Date.now()}`;

const HOUR = 3_600_000;

function limitRoute(name: string, config: Record<string, unknown>, extra: Record<string, unknown> = {}, redisFields: object = { port: redis.port }) {
  return {
    name,
    paths: [`/${name}`],
    plugins: [{ name: "redis-rate-limit", config: { limit_by: "header", header_name: "X-Client", redis: redisFields, ...config } }],
    ...extra,
  };
}

/** The routes of the exactness cases, on the Redis `redisFields` names. */
const exactnessRoutes = (redisFields?: object) => [
  limitRoute("exact-sliding", { hour: 37, sync: "exact" }, {}, redisFields),
  limitRoute("exact-fixed", { hour: 37, algorithm: "fixed-window", sync: "exact" }, {}, redisFields),
  limitRoute("lease-sliding", { minute: 37, hour: 100 }, {}, redisFields),
  limitRoute("lease-fixed", { minute: 37, hour: 100, algorithm: "fixed-window" }, {}, redisFields),
  limitRoute("lease-calendar", { day: 37, month: 100, year: 1000 }, {}, redisFields),
];
let upstreamUrl: string;

beforeAll(async () => {
  const up = await upstream();
  redis = await startRedis();
  control = new Redis({ port: redis.port });
  const url = `http://127.0.0.1:${up.port}/anything`;
  upstreamUrl = url;
  const r = { port: redis.port };
  const config = {
    _format_version: "3.0",
    services: [
      {
        name: "svc",
        url,
        routes: [
          ...exactnessRoutes(),
          limitRoute("headers", { minute: 3, hour: 5, algorithm: "fixed-window" }),
          limitRoute("headers-twin", { minute: 3, hour: 5, algorithm: "fixed-window" }),
          limitRoute("tie", { minute: 3, hour: 3, algorithm: "fixed-window" }),
          limitRoute("yearly", { day: 2, year: 2, algorithm: "fixed-window" }),
          limitRoute("hidden", { minute: 1, hide_client_headers: true }),
          limitRoute("custom-error", { hour: 1, error_code: 503, error_message: "Slow down" }),
          limitRoute("sliding-second", { second: 10 }),
          limitRoute("fixed-second", { second: 10, algorithm: "fixed-window" }),
          limitRoute("trips", { hour: 10, sync: "exact" }),
          limitRoute("trips-lease", { hour: 10 }),
          limitRoute("far-lease", { minute: 1_000_000_000 }),
          limitRoute("far-lease-fixed", { second: 1_000_000, hour: 1_000_000_000, algorithm: "fixed-window" }),
          limitRoute("far-exact", { minute: 1_000_000_000, sync: "exact" }),
          limitRoute("lease-return", { hour: 100_000, lease_ttl: 0.5 }),
          { name: "by-consumer", paths: ["/by-consumer"], plugins: [{ name: "krs-test-auth" }, { name: "redis-rate-limit", config: { hour: 2, redis: r } }] },
          { name: "by-credential", paths: ["/by-credential"], plugins: [{ name: "krs-test-auth" }, { name: "redis-rate-limit", config: { hour: 2, limit_by: "credential", redis: r } }] },
          { name: "anonymous", paths: ["/anonymous"], plugins: [{ name: "redis-rate-limit", config: { hour: 2, redis: r } }] },
          { name: "by-ip", paths: ["/by-ip"], plugins: [{ name: "redis-rate-limit", config: { hour: 2, limit_by: "ip", redis: r } }] },
          limitRoute("by-header", { hour: 2 }),
          { name: "by-path", paths: ["/by-path"], plugins: [{ name: "redis-rate-limit", config: { hour: 2, limit_by: "path", path: "/by-path/special", redis: r } }] },
        ],
      },
      {
        name: "svc-by-service",
        url,
        routes: [{ name: "s1", paths: ["/s1"] }, { name: "s2", paths: ["/s2"] }],
        plugins: [{ name: "redis-rate-limit", config: { hour: 2, limit_by: "service", redis: r } }],
      },
      {
        name: "svc-by-route",
        url,
        routes: [{ name: "r1", paths: ["/r1"] }, { name: "r2", paths: ["/r2"] }],
        plugins: [{ name: "redis-rate-limit", config: { hour: 2, limit_by: "route", redis: r } }],
      },
    ],
    consumers: [{ username: "alice" }, { username: "bob" }],
  };
  [gwA, gwB] = await Promise.all([gateway(config, { workers: 2 }), gateway(config, { workers: 2 })]);
});

afterAll(async () => {
  agent.destroy();
  control?.disconnect();
  await stopAll();
});

/**
 * On one Redis and on a Redis Cluster (spec/helpers/backends.ts: 3 masters, 3 replicas),
 * where each client's counter lives on the master of its slot.
 */
describe.each(BACKENDS)("exactness (%s redis)", (kind) => {
  const on = {} as { a: TestGateway; b: TestGateway; keys: (pattern: string) => Promise<string[]>; hget: (key: string, field: string) => Promise<string | null> };
  beforeAll(async () => {
    if (kind === "single") {
      Object.assign(on, { a: gwA, b: gwB, keys: (p: string) => control.keys(p), hget: (k: string, f: string) => control.hget(k, f) });
      return;
    }
    const backend = await redisBackend(kind);
    const config = { _format_version: "3.0", services: [{ name: "svc", url: upstreamUrl, routes: exactnessRoutes(backend.redis) }] };
    const [a, b] = await Promise.all([gateway(config, { workers: 2 }), gateway(config, { workers: 2 })]);
    Object.assign(on, { a, b, keys: (p: string) => backend.keys(p), hget: (k: string, f: string) => backend.client.hget(k, f) });
  }, 90_000);
  afterAll(async () => {
    if (kind === "single") return;
    for (const g of [on.a, on.b]) expect(g.unexpectedErrors()).toEqual([]);
  });
  const MINUTE = 60_000;
  const DAY = 86_400_000;
  // sync exact: one script call per request; sync lease (the default): workers reserve
  // leases of admissions, which Redis counts as used, so they never add up to more.
  const cases: { route: string; sync: "exact" | "lease"; header: string; avoid: [number, number, number] }[] = [
    { route: "exact-sliding", sync: "exact", header: "x-ratelimit-remaining-hour", avoid: [HOUR, 2000, 30_000] },
    { route: "exact-fixed", sync: "exact", header: "x-ratelimit-remaining-hour", avoid: [HOUR, 2000, 30_000] },
    { route: "lease-sliding", sync: "lease", header: "x-ratelimit-remaining-minute", avoid: [MINUTE, 2000, 20_000] },
    { route: "lease-fixed", sync: "lease", header: "x-ratelimit-remaining-minute", avoid: [MINUTE, 2000, 20_000] },
    { route: "lease-calendar", sync: "lease", header: "x-ratelimit-remaining-day", avoid: [DAY, 2000, 30_000] },
  ];
  for (const { route, sync, header, avoid } of cases) {
    it(`${route} (sync ${sync}): limit 37, 300 concurrent requests over 2 gateways x 2 workers: exactly 37 admitted`, async () => {
      await intoWindows(avoid); // the burst cannot cross a boundary of the window that decides
      const id = client();
      const results = await Promise.all(
        Array.from({ length: 300 }, (_, i) => hit(`${(i % 2 === 0 ? on.a : on.b).proxyUrl}/${route}`, { "X-Client": id })),
      );
      const admitted = results.filter((r) => r.status === 200);
      const rejected = results.filter((r) => r.status === 429);
      console.log(`${route} (${kind} redis): ${admitted.length} admitted of ${results.length} sent (limit 37)`);
      expect(admitted.length).toBe(37);
      expect(rejected.length).toBe(263);
      const seen = admitted.map((r) => Number(r.headers[header])).sort((a, b) => a - b);
      if (sync === "exact") {
        // every admitted request saw its own remaining count, 36 down to 0
        expect(seen).toEqual(Array.from({ length: 37 }, (_, i) => i));
      } else {
        // under leasing a worker shows the room Redis had after its last lease plus what is
        // left of that lease: never more than the truth, 0 once the last admission is out
        for (const v of seen) expect(v).toBeGreaterThanOrEqual(0);
        for (const v of seen) expect(v).toBeLessThanOrEqual(36);
        expect(seen[0]).toBe(0);
      }
      for (const r of rejected) expect(r.headers[header]).toBe("0");
      // Redis counts exactly the admissions (the last leases are 1: nothing is left out)
      const [counterKey] = await on.keys(`krs:redis-rate-limit:v1:{*:header:${id}}`);
      const window = header.replace("x-ratelimit-remaining-", "");
      await sleep(sync === "lease" ? 1300 : 0); // a lease left unused would be back within lease_ttl (1 s)
      expect(Number(await on.hget(counterKey!, `${window}:count`))).toBe(37);
    });
  }
});

describe("leases", () => {
  /** EVALSHA calls Redis has answered so far (every client: nothing else runs meanwhile). */
  const evalsha = async () => Number(/cmdstat_evalsha:calls=(\d+)/.exec(await control.info("commandstats"))?.[1] ?? 0);

  /** `total` requests of one client, `concurrency` at a time, alternating gateways. */
  async function load(route: string, id: string, total: number, concurrency: number): Promise<Res[]> {
    const out: Res[] = [];
    let sent = 0;
    const lane = async (lane: number) => {
      while (sent < total) {
        sent++;
        out.push(await hit(`${(lane % 2 === 0 ? gwA : gwB).proxyUrl}/${route}`, { "X-Client": id }));
      }
    };
    await Promise.all(Array.from({ length: concurrency }, (_, i) => lane(i)));
    return out;
  }

  for (const route of ["far-lease", "far-lease-fixed"]) {
    it(`${route}: a limit far away admits everything at far less than one Redis call per request`, async () => {
      await intoWindows([60_000, 1000, 15_000]);
      const id = client();
      const before = await evalsha();
      const results = await load(route, id, 2000, 16);
      const calls = (await evalsha()) - before;
      console.log(`${route}: 2000 requests over 2 gateways x 2 workers -> ${calls} EVALSHA (${(calls / 2000).toFixed(3)} per request)`);
      expect(results.filter((r) => r.status === 200).length).toBe(2000);
      // leases grow to lease_max (100) within a few calls per worker; sync exact is 1 per request (below)
      expect(calls / 2000).toBeLessThan(0.15);
    });
  }

  it("sync exact with the same far limit: one Redis call per request (for comparison)", async () => {
    const id = client();
    const before = await evalsha();
    const results = await load("far-exact", id, 300, 16);
    const calls = (await evalsha()) - before;
    expect(results.filter((r) => r.status === 200).length).toBe(300);
    expect(calls).toBeGreaterThanOrEqual(300);
  });

  it("unused admissions go back within lease_ttl: the Redis count drops back to the admitted count", async () => {
    await intoWindows([HOUR, 1000, 60_000]);
    const id = client();
    const results = await load("lease-return", id, 600, 16);
    expect(results.filter((r) => r.status === 200).length).toBe(600);
    const [counterKey] = await control.keys(`krs:redis-rate-limit:v1:{*:header:${id}}`);
    const counted = async () => Number(await control.hget(counterKey!, "hour:count"));
    const atOnce = await counted();
    // admissions still leased out are counted as used until they come back
    expect(atOnce).toBeGreaterThanOrEqual(600);
    await sleep(500 + 400); // lease_ttl, plus the sweep interval and a loaded machine's slack
    const later = await counted();
    console.log(`lease-return: 600 admitted; Redis count right after ${atOnce}, after lease_ttl ${later}`);
    expect(later).toBe(600);
    expect(await control.pttl(counterKey!)).toBeGreaterThan(0);
  });
});

describe("sliding window across a boundary", () => {
  it("weights the previous second's count by the part of it still inside the last second", async () => {
    const id = client();
    await intoWindow(1000, 20, 800);
    const first = await Promise.all(Array.from({ length: 10 }, () => hit(`${gwA.proxyUrl}/sliding-second`, { "X-Client": id })));
    expect(first.map((r) => r.status)).toEqual(Array(10).fill(200));
    const startOfFirst = first[0]!.sentAt - (first[0]!.sentAt % 1000);
    expect(Math.max(...first.map((r) => r.doneAt))).toBeLessThan(startOfFirst + 1000); // all in one second
    expect((await hit(`${gwA.proxyUrl}/sliding-second`, { "X-Client": id })).status).toBe(429);

    // Half-way into the next second the 10 of the previous one weigh about 5.
    await sleep(startOfFirst + 1500 - Date.now());
    const second = await Promise.all(Array.from({ length: 10 }, () => hit(`${gwA.proxyUrl}/sliding-second`, { "X-Client": id })));
    const sent = Math.min(...second.map((r) => r.sentAt)) - (startOfFirst + 1000);
    const done = Math.max(...second.map((r) => r.doneAt)) - (startOfFirst + 1000);
    expect(done).toBeLessThan(1000);
    const admitted = second.filter((r) => r.status === 200).length;
    // room at elapsed e ms: floor(10 - 10 * (1 - e / 1000)), non-decreasing while nothing else is admitted
    expect(admitted).toBeGreaterThanOrEqual(Math.floor((10 * sent) / 1000));
    expect(admitted).toBeLessThanOrEqual(Math.floor((10 * done) / 1000));
    expect(admitted).toBeGreaterThanOrEqual(3);
    expect(admitted).toBeLessThanOrEqual(7);
    for (const r of second.filter((x) => x.status === 429)) {
      expect(r.headers["x-ratelimit-remaining-second"]).toBe("0");
      expect(r.headers["retry-after"]).toBe("1");
    }
  });

  it("fixed-window starts the next second from zero (for comparison)", async () => {
    const id = client();
    await intoWindow(1000, 20, 800);
    const first = await Promise.all(Array.from({ length: 10 }, () => hit(`${gwA.proxyUrl}/fixed-second`, { "X-Client": id })));
    expect(first.map((r) => r.status)).toEqual(Array(10).fill(200));
    const startOfFirst = first[0]!.sentAt - (first[0]!.sentAt % 1000);
    await sleep(startOfFirst + 1500 - Date.now());
    const second = await Promise.all(Array.from({ length: 10 }, () => hit(`${gwA.proxyUrl}/fixed-second`, { "X-Client": id })));
    expect(second.map((r) => r.status)).toEqual(Array(10).fill(200));
  });
});

describe("headers", () => {
  it("sends Kong's headers with exact values; a rejection consumes nothing", async () => {
    await intoWindow(60_000, 500, 5000);
    const id = client();
    const seen: Res[] = [];
    for (let i = 0; i < 3; i++) seen.push(await hit(`${gwA.proxyUrl}/headers`, { "X-Client": id }));
    seen.forEach((r, i) => {
      expect(r.status).toBe(200);
      expect(r.headers["x-ratelimit-limit-minute"]).toBe("3");
      expect(r.headers["x-ratelimit-remaining-minute"]).toBe(String(2 - i));
      expect(r.headers["x-ratelimit-limit-hour"]).toBe("5");
      expect(r.headers["x-ratelimit-remaining-hour"]).toBe(String(4 - i));
      expect(r.headers["ratelimit-limit"]).toBe("3");
      expect(r.headers["ratelimit-remaining"]).toBe(String(2 - i));
      const endOfMinute = r.sentAt - (r.sentAt % 60_000) + 60_000;
      const reset = Number(r.headers["ratelimit-reset"]);
      expect(reset).toBeGreaterThanOrEqual(Math.ceil((endOfMinute - r.doneAt) / 1000));
      expect(reset).toBeLessThanOrEqual(Math.ceil((endOfMinute - r.sentAt) / 1000));
      expect(r.headers["retry-after"]).toBeUndefined();
    });
    const rejected = await hit(`${gwB.proxyUrl}/headers`, { "X-Client": id });
    expect(rejected.status).toBe(429);
    expect(JSON.parse(rejected.body)).toEqual({ message: "API rate limit exceeded", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    expect(rejected.headers["content-type"]).toBe("application/json; charset=utf-8");
    expect(rejected.headers["x-ratelimit-remaining-minute"]).toBe("0");
    expect(rejected.headers["x-ratelimit-remaining-hour"]).toBe("2");
    expect(rejected.headers["ratelimit-remaining"]).toBe("0");
    const endOfMinute = rejected.sentAt - (rejected.sentAt % 60_000) + 60_000;
    const retry = Number(rejected.headers["retry-after"]);
    expect(retry).toBeGreaterThanOrEqual(Math.ceil((endOfMinute - rejected.doneAt) / 1000));
    expect(retry).toBeLessThanOrEqual(Math.ceil((endOfMinute - rejected.sentAt) / 1000));
    expect(rejected.headers["ratelimit-reset"]).toBe(rejected.headers["retry-after"]);
    // the rejection did not count: the hour still has 2, and the twin route's own counters are untouched
    const again = await hit(`${gwB.proxyUrl}/headers`, { "X-Client": id });
    expect(again.headers["x-ratelimit-remaining-hour"]).toBe("2");
    const twin = await hit(`${gwA.proxyUrl}/headers-twin`, { "X-Client": id });
    expect(twin.status).toBe(200);
    expect(twin.headers["x-ratelimit-remaining-minute"]).toBe("2");
  });

  it("RateLimit-* name the longer window when two are equally close to their limits", async () => {
    await intoWindow(60_000, 500, 5000);
    const r = await hit(`${gwA.proxyUrl}/tie`, { "X-Client": client() });
    expect(r.headers["ratelimit-remaining"]).toBe("2");
    const endOfHour = r.sentAt - (r.sentAt % HOUR) + HOUR;
    expect(Number(r.headers["ratelimit-reset"])).toBeGreaterThanOrEqual(Math.ceil((endOfHour - r.doneAt) / 1000));
    expect(Number(r.headers["ratelimit-reset"])).toBeLessThanOrEqual(Math.ceil((endOfHour - r.sentAt) / 1000));
  });

  it("a year window (Kong's `year`): X-RateLimit-*-Year, reset and Retry-After at the end of the UTC year", async () => {
    await intoWindow(86_400_000, 500, 5000); // the requests cannot cross midnight (UTC)
    const id = client();
    const endOfYear = (t: number) => Date.UTC(new Date(t).getUTCFullYear() + 1, 0, 1);
    const seen: Res[] = [];
    for (let i = 0; i < 2; i++) seen.push(await hit(`${gwA.proxyUrl}/yearly`, { "X-Client": id }));
    seen.forEach((r, i) => {
      expect(r.status).toBe(200);
      expect(r.headers["x-ratelimit-limit-year"]).toBe("2");
      expect(r.headers["x-ratelimit-remaining-year"]).toBe(String(1 - i));
      expect(r.headers["x-ratelimit-limit-day"]).toBe("2");
      expect(r.headers["x-ratelimit-remaining-day"]).toBe(String(1 - i));
      // day and year equally close to their limits: RateLimit-* name the year
      const reset = Number(r.headers["ratelimit-reset"]);
      expect(reset).toBeGreaterThanOrEqual(Math.ceil((endOfYear(r.sentAt) - r.doneAt) / 1000));
      expect(reset).toBeLessThanOrEqual(Math.ceil((endOfYear(r.sentAt) - r.sentAt) / 1000));
    });
    const rejected = await hit(`${gwB.proxyUrl}/yearly`, { "X-Client": id });
    expect(rejected.status).toBe(429);
    expect(rejected.headers["x-ratelimit-remaining-year"]).toBe("0");
    const retry = Number(rejected.headers["retry-after"]);
    expect(retry).toBeGreaterThanOrEqual(Math.ceil((endOfYear(rejected.sentAt) - rejected.doneAt) / 1000));
    expect(retry).toBeLessThanOrEqual(Math.ceil((endOfYear(rejected.sentAt) - rejected.sentAt) / 1000));
  });

  it("hide_client_headers sends none of them, not even Retry-After", async () => {
    await intoWindow(60_000, 500, 5000);
    const id = client();
    const ok = await hit(`${gwA.proxyUrl}/hidden`, { "X-Client": id });
    const no = await hit(`${gwA.proxyUrl}/hidden`, { "X-Client": id });
    expect([ok.status, no.status]).toEqual([200, 429]);
    for (const r of [ok, no]) {
      const names = Object.keys(r.headers).filter((h) => /ratelimit|retry-after/i.test(h));
      expect(names).toEqual([]);
    }
  });

  it("answers with the configured error_code and error_message", async () => {
    const id = client();
    expect((await hit(`${gwA.proxyUrl}/custom-error`, { "X-Client": id })).status).toBe(200);
    const r = await hit(`${gwA.proxyUrl}/custom-error`, { "X-Client": id });
    expect(r.status).toBe(503);
    expect(JSON.parse(r.body)).toEqual({ message: "Slow down", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    expect(Number(r.headers["retry-after"])).toBeGreaterThanOrEqual(1);
  });
});

describe("limit_by", () => {
  const statuses = async (paths: [string, Record<string, string>, string?][]) => {
    const out: number[] = [];
    for (const [path, headers, local] of paths) out.push((await hit(`${gwA.proxyUrl}${path}`, headers, local)).status);
    return out;
  };

  it("consumer: each consumer has its own counters", async () => {
    expect(await statuses([["/by-consumer", { "X-Consumer": "alice" }], ["/by-consumer", { "X-Consumer": "alice" }], ["/by-consumer", { "X-Consumer": "alice" }], ["/by-consumer", { "X-Consumer": "bob" }]]))
      .toEqual([200, 200, 429, 200]);
  });

  it("credential: consumers sharing one credential share its counters", async () => {
    // krs-test-auth gives every consumer the same credential id
    expect(await statuses([["/by-credential", { "X-Consumer": "alice" }], ["/by-credential", { "X-Consumer": "bob" }], ["/by-credential", { "X-Consumer": "bob" }]]))
      .toEqual([200, 200, 429]);
  });

  it("consumer without an authenticated consumer: falls back to the client IP", async () => {
    expect(await statuses([["/anonymous", { "X-Client": "1" }], ["/anonymous", { "X-Client": "2" }], ["/anonymous", {}], ["/anonymous", {}, "127.0.0.2"]]))
      .toEqual([200, 200, 429, 200]);
  });

  it("ip: each client address has its own counters", async () => {
    expect(await statuses([["/by-ip", {}], ["/by-ip", {}], ["/by-ip", {}], ["/by-ip", {}, "127.0.0.3"], ["/by-ip", {}, "127.0.0.3"], ["/by-ip", {}, "127.0.0.3"]]))
      .toEqual([200, 200, 429, 200, 200, 429]);
  });

  it("service: every route of the service shares one counter set", async () => {
    expect(await statuses([["/s1", {}], ["/s2", { "X-Client": "x" }], ["/s1", {}, "127.0.0.4"]])).toEqual([200, 200, 429]);
  });

  it("route: each route has its own counter set", async () => {
    expect(await statuses([["/r1", {}], ["/r1", {}], ["/r1", {}, "127.0.0.5"], ["/r2", {}]])).toEqual([200, 200, 429, 200]);
  });

  it("header: each value has its own counters; without the header, the client IP", async () => {
    const [a, b] = [client(), client()];
    expect(await statuses([["/by-header", { "X-Client": a }], ["/by-header", { "X-Client": a }], ["/by-header", { "X-Client": a }], ["/by-header", { "X-Client": b }]]))
      .toEqual([200, 200, 429, 200]);
    expect(await statuses([["/by-header", {}, "127.0.0.6"], ["/by-header", {}, "127.0.0.6"], ["/by-header", {}, "127.0.0.6"], ["/by-header", {}, "127.0.0.7"]]))
      .toEqual([200, 200, 429, 200]);
  });

  it("path: requests to exactly that path share one counter set; other paths count by client IP", async () => {
    expect(await statuses([["/by-path/special", {}, "127.0.0.8"], ["/by-path/special", {}, "127.0.0.9"], ["/by-path/special", {}, "127.0.0.10"]]))
      .toEqual([200, 200, 429]);
    expect(await statuses([["/by-path/other", {}, "127.0.0.8"], ["/by-path/other", {}, "127.0.0.8"], ["/by-path/other", {}, "127.0.0.8"], ["/by-path/other", {}, "127.0.0.9"]]))
      .toEqual([200, 200, 429, 200]);
  });

  it("keeps counter keys per plugin instance, with client values hashed", async () => {
    const keys = await control.keys("krs:redis-rate-limit:v1:*");
    expect(keys.length).toBeGreaterThan(10);
    for (const k of keys) expect(k).toMatch(/^krs:redis-rate-limit:v1:\{[0-9a-f-]{36}:(consumer|credential|ip|service|route|header|path):[A-Za-z0-9._@#_-]+\}$/);
    // "/by-path/special" has slashes: hashed
    expect(keys.some((k) => /:path:#[A-Za-z0-9_-]{27}\}$/.test(k))).toBe(true);
    // every key has a TTL (-1 would say none); a short window's key may expire between KEYS and PTTL (-2)
    for (const k of keys) {
      const ttl = await control.pttl(k);
      if (ttl !== -2) expect(ttl).toBeGreaterThan(0);
    }
  });
});

describe("redis round trips", () => {
  it("one EVALSHA per request that reaches Redis; a worker that knows the limit is reached answers alone", async () => {
    // Redis has the script cached after any earlier call (else the first call is EVALSHA, NOSCRIPT, EVAL)
    await hit(`${gwA.proxyUrl}/trips`, { "X-Client": client() });
    const id = client();
    // MONITOR shows every command Redis receives; those a script runs come from "lua".
    const monitor = await control.monitor();
    const fromClients: string[] = [];
    const fromScripts: string[] = [];
    monitor.on("monitor", (_time: string, args: string[], source: string) => {
      if (!args.some((a) => String(a).includes(id))) return; // this test's key only
      (source === "lua" ? fromScripts : fromClients).push(String(args[0]).toLowerCase());
    });
    await intoWindow(HOUR, 1000, 60_000);
    for (let i = 0; i < 10; i++) expect((await hit(`${(i % 2 === 0 ? gwA : gwB).proxyUrl}/trips`, { "X-Client": id })).status).toBe(200);
    await sleep(100);
    const admittedTrips = fromClients.length;
    expect(fromClients).toEqual(Array(10).fill("evalsha"));
    expect(new Set(fromScripts)).toEqual(new Set(["hmget", "hset", "pexpire"]));
    const burst = () => Promise.all(Array.from({ length: 200 }, (_, i) => hit(`${(i % 2 === 0 ? gwA : gwB).proxyUrl}/trips`, { "X-Client": id })));
    const first = await burst();
    await sleep(100);
    const firstTrips = fromClients.length - admittedTrips;
    const second = await burst();
    await sleep(100);
    monitor.disconnect();
    const secondTrips = fromClients.length - admittedTrips - firstTrips;
    console.log(`redis round trips: 10 admitted requests -> ${admittedTrips}; 200 concurrent rejected -> ${firstTrips}; 200 more -> ${secondTrips}`);
    for (const r of [...first, ...second]) {
      expect(r.status).toBe(429);
      // cached rejections carry a whole-second Retry-After of at least 1 too
      expect(Number(r.headers["retry-after"])).toBeGreaterThanOrEqual(1);
    }
    // Coalescing: while a worker's calls for this identifier are out and the room it last
    // saw would not cover one more, its other requests wait for them and are answered from
    // the deny cache; a few calls per worker (4 workers) instead of one per request.
    expect(firstTrips).toBeLessThanOrEqual(12);
    // Once every worker knows, rejections cost no round trip.
    expect(secondTrips).toBeLessThanOrEqual(4);
    expect(fromClients.every((c) => c === "evalsha")).toBe(true);
    // a rejection writes nothing: the scripts of rejected requests only read
    expect(fromScripts.filter((c) => c !== "hmget").length).toBe(20);
  });
});

describe("coalescing", () => {
  for (const [route, sync] of [["trips", "exact"], ["trips-lease", "lease"]] as const) {
    it(`${route} (sync ${sync}): a burst that reaches the limit: requests wait for their worker's calls in flight instead of each sending one`, async () => {
      await hit(`${gwA.proxyUrl}/${route}`, { "X-Client": client() });
      const id = client();
      const monitor = await control.monitor();
      let calls = 0;
      monitor.on("monitor", (_time: string, args: string[], source: string) => {
        if (source !== "lua" && args.some((a) => String(a).includes(id))) calls++;
      });
      await intoWindow(HOUR, 1000, 60_000);
      const burst = await Promise.all(Array.from({ length: 200 }, (_, i) => hit(`${(i % 2 === 0 ? gwA : gwB).proxyUrl}/${route}`, { "X-Client": id })));
      await sleep(100);
      monitor.disconnect();
      console.log(`coalescing (${route}): 200 concurrent requests of one new client, limit 10 -> ${calls} script calls`);
      expect(burst.filter((r) => r.status === 200).length).toBe(10);
      expect(burst.filter((r) => r.status === 429).length).toBe(190);
      // Per worker (4), exact: its first call alone (no room known yet), then at most as
      // many at once as the room the last reply showed (at most 9 after the first
      // admission); the room only shrinks, so each reply leaves as many calls out as room
      // or more, and the first rejection it sees stops it: at most 1 + 9 calls per worker,
      // 40 in all, however slow the machine. Lease: one call at a time per worker. A waiter
      // waits until the calls it waits for are back, bounded by time: it used to give up
      // after 3 replies and send its own call (79 calls seen once on a loaded machine).
      // Without coalescing: 181 (exact) and 200 (lease) measured.
      expect(calls).toBeLessThanOrEqual(40);
    });
  }
});

describe("no unexpected errors", () => {
  it("in either gateway's log", () => {
    expect(gwA.unexpectedErrors()).toEqual([]);
    expect(gwB.unexpectedErrors()).toEqual([]);
  });
});

describe("on one worker: every window's headers, the deny cache, the rejection body", () => {
  let one: TestGateway;
  const SECOND = 1000;
  const MINUTE = 60_000;
  const DAY = 86_400_000;
  const endOfMonth = (t: number) => Date.UTC(new Date(t).getUTCFullYear(), new Date(t).getUTCMonth() + 1, 1);
  const EVERY_WINDOW = ["Second", "Minute", "Hour", "Day", "Month", "Year"];
  const NAMES = [...EVERY_WINDOW.flatMap((w) => [`X-RateLimit-Limit-${w}`, `X-RateLimit-Remaining-${w}`]), "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"];

  beforeAll(async () => {
    const up = await upstream();
    one = await gateway({
      _format_version: "3.0",
      services: [{
        name: "svc-one",
        url: `http://127.0.0.1:${up.port}/anything`,
        routes: [
          limitRoute("six", { second: 2, minute: 3, hour: 4, day: 5, month: 6, year: 7, algorithm: "fixed-window" }),
          limitRoute("monthly", { month: 2, algorithm: "fixed-window" }),
          limitRoute("deny-fixed", { second: 5, minute: 5, algorithm: "fixed-window" }),
          limitRoute("deny-sliding", { second: 5, minute: 5 }),
          limitRoute("plain-then-json", { minute: 1 }),
          limitRoute("lease-mono", { minute: 50, hour: 100 }),
          limitRoute("lease-mono-fixed", { minute: 50, hour: 100, algorithm: "fixed-window" }),
        ],
      }],
    }, { workers: 1 });
  });

  /**
   * Sends `count` requests one after another for a new client, at a moment `windows`
   * allows, until all of them fall in one second (a busy machine may stretch them over
   * a boundary; each try uses a new client, so counts never mix). Bounded.
   */
  async function inOneSecond(path: string, count: number, ...windows: [number, number, number][]): Promise<{ id: string; sent: Res[] }> {
    for (let tries = 0; tries < 5; tries++) {
      await intoWindows(...windows);
      const id = client();
      const sent: Res[] = [];
      for (let i = 0; i < count; i++) sent.push(await hit(`${one.proxyUrl}${path}`, { "X-Client": id }));
      if (Math.floor(sent[count - 1]!.doneAt / SECOND) === Math.floor(sent[0]!.sentAt / SECOND)) return { id, sent };
    }
    throw new Error(`${count} requests to ${path} never fit in one second`);
  }

  /** Calls to EVALSHA Redis has answered so far. */
  const evalshaCalls = async () => Number(/cmdstat_evalsha:calls=(\d+)/.exec(await control.info("commandstats"))?.[1] ?? 0);

  it("all six windows: X-RateLimit-Limit-<Window> and -Remaining-<Window> by exact name and value, RateLimit-*, Retry-After", async () => {
    // in one second: the second window decides
    const { sent: [first, second, third] } = await inOneSecond("/six", 3, [DAY, 500, 10_000], [MINUTE, 500, 5000], [SECOND, 20, 600]);
    if (first === undefined || second === undefined || third === undefined) throw new Error("three responses expected");
    expect([first.status, second.status, third.status]).toEqual([200, 200, 429]);
    const limits = [2, 3, 4, 5, 6, 7];
    const values = (r: Res) => Object.fromEntries(NAMES.filter((n) => n.startsWith("X-")).map((n) => [n, r.headers[n.toLowerCase()]]));
    const expected = (used: number, rejected: boolean) => Object.fromEntries(EVERY_WINDOW.flatMap((w, i) => [
      [`X-RateLimit-Limit-${w}`, String(limits[i])],
      // a rejection counts nowhere; the window that rejects shows 0
      [`X-RateLimit-Remaining-${w}`, String(rejected && i === 0 ? 0 : limits[i]! - used)],
    ]));
    expect(rateLimitNames(first)).toEqual([...NAMES].sort());
    expect(rateLimitNames(second)).toEqual([...NAMES].sort());
    expect(rateLimitNames(third)).toEqual([...NAMES, "Retry-After"].sort());
    expect(values(first)).toEqual(expected(1, false));
    expect(values(second)).toEqual(expected(2, false));
    expect(values(third)).toEqual(expected(2, true));
    // the window closest to its limit is the second: reset and retry at its end
    expect([first.headers["ratelimit-limit"], first.headers["ratelimit-remaining"], first.headers["ratelimit-reset"]]).toEqual(["2", "1", "1"]);
    expect([second.headers["ratelimit-remaining"], second.headers["ratelimit-reset"]]).toEqual(["0", "1"]);
    expect([third.headers["ratelimit-remaining"], third.headers["ratelimit-reset"], third.headers["retry-after"]]).toEqual(["0", "1", "1"]);
  });

  it("a month window: X-RateLimit-*-Month, reset and Retry-After at the end of the calendar month (UTC), not after Kong's 30 days", async () => {
    await intoWindows([DAY, 500, 10_000]);
    const id = client();
    const seen = [await hit(`${one.proxyUrl}/monthly`, { "X-Client": id }), await hit(`${one.proxyUrl}/monthly`, { "X-Client": id })];
    const rejected = await hit(`${one.proxyUrl}/monthly`, { "X-Client": id });
    const within = (value: string | string[] | undefined, r: Res) => {
      expect(Number(value)).toBeGreaterThanOrEqual(Math.ceil((endOfMonth(r.sentAt) - r.doneAt) / 1000));
      expect(Number(value)).toBeLessThanOrEqual(Math.ceil((endOfMonth(r.sentAt) - r.sentAt) / 1000));
    };
    seen.forEach((r, i) => {
      expect(r.status).toBe(200);
      expect(rateLimitNames(r)).toEqual(["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "X-RateLimit-Limit-Month", "X-RateLimit-Remaining-Month"]);
      expect([r.headers["x-ratelimit-limit-month"], r.headers["x-ratelimit-remaining-month"]]).toEqual(["2", String(1 - i)]);
      within(r.headers["ratelimit-reset"], r);
    });
    expect(rejected.status).toBe(429);
    expect(rejected.headers["x-ratelimit-remaining-month"]).toBe("0");
    within(rejected.headers["retry-after"], rejected);
    within(rejected.headers["ratelimit-reset"], rejected);
  });

  it("fixed: a 429 from the deny cache shows a window that rolled over as full again, as Redis would", async () => {
    const { id, sent: burst } = await inOneSecond("/deny-fixed", 5, [MINUTE, 500, 10_000], [SECOND, 20, 500]);
    expect(burst.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    // both windows used up: the worker knows no request can be admitted before the minute ends
    const before = await evalshaCalls();
    const sameSecond = await hit(`${one.proxyUrl}/deny-fixed`, { "X-Client": id });
    await sleep((Math.floor(burst[4]!.doneAt / SECOND) + 1) * SECOND + 100 - Date.now());
    const nextSecond = await hit(`${one.proxyUrl}/deny-fixed`, { "X-Client": id });
    expect(await evalshaCalls()).toBe(before); // both answered by the worker alone
    expect(Math.floor(nextSecond.sentAt / SECOND)).toBeGreaterThan(Math.floor(burst[4]!.doneAt / SECOND));
    expect(Math.floor(nextSecond.sentAt / MINUTE)).toBe(Math.floor(burst[0]!.sentAt / MINUTE));
    for (const r of [sameSecond, nextSecond]) {
      expect(r.status).toBe(429);
      expect(r.headers["x-ratelimit-remaining-minute"]).toBe("0");
      const endOfMinute = r.sentAt - (r.sentAt % MINUTE) + MINUTE;
      expect(Number(r.headers["retry-after"])).toBeGreaterThanOrEqual(Math.ceil((endOfMinute - r.doneAt) / 1000));
      expect(Number(r.headers["retry-after"])).toBeLessThanOrEqual(Math.ceil((endOfMinute - r.sentAt) / 1000));
    }
    expect(sameSecond.headers["x-ratelimit-remaining-second"]).toBe("0");
    // a new second: its window is empty, as a call to Redis would say (Kong shows the same)
    expect(nextSecond.headers["x-ratelimit-remaining-second"]).toBe("5");
    expect(nextSecond.headers["ratelimit-remaining"]).toBe("0");
  });

  it("sliding: a 429 from the deny cache shows what the script answers at that moment", async () => {
    const { id, sent: burst } = await inOneSecond("/deny-sliding", 5, [MINUTE, 500, 10_000], [SECOND, 20, 400]);
    expect(burst.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    const burstSecond = Math.floor(burst[0]!.sentAt / SECOND);
    const [counterKey] = await control.keys(`krs:redis-rate-limit:v1:{*:header:${id}}`);
    expect(counterKey).toBeDefined();
    // The script itself is the oracle: it rejects here (the minute is used up), so asking
    // it writes nothing. Its Remaining-Second only grows while nothing is admitted.
    const oracle = defineScripts(new Redis({ port: redis.port }), { rateLimit: "rate-limit" }) as Redis & { rateLimit(key: string, ...args: (string | number)[]): Promise<number[]> };
    const ask = async (now: number) => {
      const args: (string | number)[] = [now, "sliding", 1, 2];
      for (const [name, length] of [["second", SECOND], ["minute", MINUTE]] as const) {
        const start = now - (now % length);
        args.push(name, 5, start, length, start - length, length);
      }
      const reply = await oracle.rateLimit(counterKey!, ...args);
      expect(reply[0]).toBe(0);
      return reply[2]!;
    };
    const seen: number[] = [];
    for (const into of [150, 400, 650, 900]) {
      await sleep((burstSecond + 1) * SECOND + into - Date.now());
      const before = await evalshaCalls();
      const r = await hit(`${one.proxyUrl}/deny-sliding`, { "X-Client": id });
      expect(await evalshaCalls()).toBe(before); // answered by the worker alone
      expect(r.status).toBe(429);
      expect(r.headers["x-ratelimit-remaining-minute"]).toBe("0");
      const got = Number(r.headers["x-ratelimit-remaining-second"]);
      expect(got).toBeGreaterThanOrEqual(await ask(r.sentAt));
      expect(got).toBeLessThanOrEqual(await ask(r.doneAt));
      seen.push(got);
    }
    oracle.disconnect();
    // the previous second's 5 decay: about 0, 2, 3, 4 room (old replays showed 0 throughout)
    expect(seen[seen.length - 1]).toBeGreaterThanOrEqual(3);
    expect([...seen].sort((a, b) => a - b)).toEqual(seen);
  });

  it("a fresh headers table for every rejection: a text/plain 429, then a JSON one", async () => {
    const id = client();
    expect((await hit(`${one.proxyUrl}/plain-then-json`, { "X-Client": id })).status).toBe(200);
    const plain = await hit(`${one.proxyUrl}/plain-then-json`, { "X-Client": id, Accept: "text/plain" });
    const json = await hit(`${one.proxyUrl}/plain-then-json`, { "X-Client": id, Accept: "application/json" });
    const plainAgain = await hit(`${one.proxyUrl}/plain-then-json`, { "X-Client": id, Accept: "text/plain" });
    expect([plain.status, json.status, plainAgain.status]).toEqual([429, 429, 429]);
    expect(plain.headers["content-type"]).toBe("text/plain; charset=utf-8");
    expect(plain.body).toMatch(/^API rate limit exceeded\nrequest_id: [0-9a-f]{32}\n$/);
    expect(json.headers["content-type"]).toBe("application/json; charset=utf-8");
    expect(JSON.parse(json.body)).toEqual({ message: "API rate limit exceeded", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    expect(plainAgain.headers["content-type"]).toBe("text/plain; charset=utf-8");
    for (const r of [plain, json, plainAgain]) expect(rateLimitNames(r)).toContain("Retry-After");
  });

  for (const route of ["lease-mono", "lease-mono-fixed"]) {
    it(`${route}: under leasing one worker's headers count down one by one, exactly (its lease is the only one)`, async () => {
      await intoWindows([HOUR, 1000, 30_000], [MINUTE, 500, 20_000]);
      const id = client();
      const seen: Res[] = [];
      for (let i = 0; i < 60; i++) seen.push(await hit(`${one.proxyUrl}/${route}`, { "X-Client": id }));
      expect(seen.map((r) => r.status)).toEqual([...Array(50).fill(200), ...Array(10).fill(429)]);
      // Redis's room after the worker's lease plus what is left of it: with one worker, the truth
      expect(seen.slice(0, 50).map((r) => Number(r.headers["x-ratelimit-remaining-minute"]))).toEqual(Array.from({ length: 50 }, (_, i) => 49 - i));
      expect(seen.slice(0, 50).map((r) => Number(r.headers["x-ratelimit-remaining-hour"]))).toEqual(Array.from({ length: 50 }, (_, i) => 99 - i));
      expect(seen.slice(0, 50).map((r) => Number(r.headers["ratelimit-remaining"]))).toEqual(Array.from({ length: 50 }, (_, i) => 49 - i));
      for (const r of seen.slice(50)) {
        expect(r.headers["x-ratelimit-remaining-minute"]).toBe("0");
        expect(r.headers["x-ratelimit-remaining-hour"]).toBe("50");
      }
    });
  }

  it("logs no unexpected error", () => {
    expect(one.unexpectedErrors()).toEqual([]);
  });
});

describe("Redis stopped during a lease", () => {
  let down: RedisServer;
  let gw: TestGateway;

  beforeAll(async () => {
    const up = await upstream();
    down = await startRedis();
    const url = `http://127.0.0.1:${up.port}/anything`;
    // lease_ttl 10 s: the leases outlive the test; lease_max 50 is never reached here
    const plugin = (faultTolerant: boolean) => [{ name: "redis-rate-limit", config: { minute: 1_000_000, lease_ttl: 10, lease_max: 50, limit_by: "header", header_name: "X-Client", fault_tolerant: faultTolerant, redis: { port: down.port, timeout: 500 } } }];
    gw = await gateway({
      _format_version: "3.0",
      services: [{ name: "svc", url, routes: [
        { name: "tolerant", paths: ["/tolerant"], plugins: plugin(true) },
        { name: "strict", paths: ["/strict"], plugins: plugin(false) },
      ] }],
    }, { workers: 1 });
  });

  it("the lease runs out normally (with headers), then fault_tolerant applies", async () => {
    await intoWindows([60_000, 1000, 30_000]);
    const id = client();
    // 40 requests one after another: leases of 1, 2, 4, 8, 16, 32 (each at most twice the
    // last one used, the rate being far above 32 per lease_ttl): 63 reserved, 23 left
    for (const path of ["/tolerant", "/strict"]) {
      for (let i = 0; i < 40; i++) expect((await hit(`${gw.proxyUrl}${path}`, { "X-Client": id })).status).toBe(200);
    }
    await down.stop();
    const after = async (path: string) => {
      const out: Res[] = [];
      for (let i = 0; i < 30; i++) out.push(await hit(`${gw.proxyUrl}${path}`, { "X-Client": id }));
      return out;
    };
    const strict = await after("/strict");
    expect(strict.map((r) => r.status)).toEqual([...Array(23).fill(200), ...Array(7).fill(500)]);
    for (const r of strict.slice(0, 23)) expect(r.headers["x-ratelimit-limit-minute"]).toBe("1000000");
    const tolerant = await after("/tolerant");
    expect(tolerant.map((r) => r.status)).toEqual(Array(30).fill(200));
    // from the lease: with headers; then let through without them
    expect(tolerant.map((r) => r.headers["x-ratelimit-limit-minute"] !== undefined)).toEqual([...Array(23).fill(true), ...Array(7).fill(false)]);
    expect(gw.unexpectedErrors([/\[redis-rate-limit\] redis unavailable/])).toEqual([]);
  });
});

describe("fault_tolerant with Redis stopped", () => {
  let down: RedisServer;
  let gw: TestGateway;

  beforeAll(async () => {
    const up = await upstream();
    down = await startRedis();
    const url = `http://127.0.0.1:${up.port}/anything`;
    const plugin = (faultTolerant: boolean) => [{ name: "redis-rate-limit", config: { minute: 100, fault_tolerant: faultTolerant, redis: { port: down.port, timeout: 500 } } }];
    gw = await gateway({
      _format_version: "3.0",
      services: [{ name: "svc", url, routes: [
        { name: "tolerant", paths: ["/tolerant"], plugins: plugin(true) },
        { name: "strict", paths: ["/strict"], plugins: plugin(false) },
      ] }],
    }, { workers: 2 });
  });

  it("counts while Redis is up", async () => {
    const r = await hit(`${gw.proxyUrl}/tolerant`);
    expect(r.status).toBe(200);
    expect(r.headers["x-ratelimit-limit-minute"]).toBe("100");
  });

  it("true: requests go through without rate-limit headers, the failure logged once per interval", async () => {
    await down.stop();
    const results: Res[] = [];
    for (let i = 0; i < 20; i++) results.push(await hit(`${gw.proxyUrl}/tolerant`));
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(Object.keys(r.headers).filter((h) => /ratelimit|retry-after/i.test(h))).toEqual([]);
    }
    const logged = gw.errorLog().filter((l) => l.includes("[redis-rate-limit] redis unavailable"));
    expect(logged.length).toBeGreaterThanOrEqual(1);
    expect(logged.length).toBeLessThanOrEqual(2); // one per worker per interval
    expect(logged[0]).toContain("fault_tolerant: request let through");
  });

  it("false: 500", async () => {
    const r = await hit(`${gw.proxyUrl}/strict`);
    expect(r.status).toBe(500);
    expect(JSON.parse(r.body)).toEqual({ message: "An unexpected error occurred" });
    expect(gw.unexpectedErrors([/\[redis-rate-limit\] redis unavailable/])).toEqual([]);
  });
});

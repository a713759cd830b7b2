/**
 * redis-usage quotas through 2 real gateways x 2 workers, on one Redis and on a Redis
 * Cluster (the same body, spec/helpers/backends.ts; a consumer's counters and quota
 * override share its hash tag, the route's and service's are on other slots): `exact` admits
 * exactly the quota across both nodes; `batched` overshoots by at most its documented
 * bound (what all nodes admit in two flush intervals plus two timer ticks), measured and
 * printed; Kong-style headers, Retry-After to the next bucket, quota_status; per-consumer
 * overrides through the Admin API; Redis commands per request in batched mode.
 */
import { Agent, request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BACKENDS, redisBackend, type RedisBackend } from "../helpers/backends.js";
import { gateway, stopAll, upstream, type TestGateway } from "../helpers/services.js";
import type { UpstreamServer } from "../../src/cli/upstream.js";

interface Res {
  status: number;
  headers: IncomingHttpHeaders;
  sentAt: number;
}

const agent = new Agent({ keepAlive: true, maxSockets: 64 });

function hit(url: string, headers: Record<string, string> = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    const sentAt = Date.now();
    const req = httpRequest(url, { headers, agent }, (r) => {
      r.resume();
      r.on("end", () => resolve({ status: r.statusCode ?? 0, headers: r.headers, sentAt }));
    });
    req.on("error", reject);
    req.end();
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function load(count: number, parallel: number, make: (i: number) => Promise<Res>): Promise<Res[]> {
  const out: Res[] = new Array(count);
  let next = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < count) {
      const i = next++;
      out[i] = await make(i);
    }
  }));
  return out;
}

const BATCH_FLUSH_MS = 250;
/** The flush timer's tick (meter.ts TICK). */
const TICK_MS = 50;

let up: UpstreamServer;

beforeAll(async () => {
  up = await upstream();
});

afterAll(async () => {
  await stopAll();
});

function configFor(r: object) {
  const route = (name: string, config: Record<string, unknown>) => ({
    name,
    paths: [`/${name}`],
    plugins: [{ name: "krs-test-auth" }, { name: "redis-usage", config: { redis: r, ...config } }],
  });
  const config = {
    _format_version: "3.0",
    services: [{
      name: "svc",
      url: `http://127.0.0.1:${up.port}/anything`,
      routes: [
        route("exact", { quota_mode: "exact", quota_day: 50, flush_interval: 200 }),
        route("batched", { quota_day: 100, flush_interval: BATCH_FLUSH_MS }),
        route("paid", { quota_mode: "exact", quota_month: 1000, quota_status: 402, quota_message: "Payment required" }),
        route("paid-batched", { quota_month: 1000, quota_status: 402, flush_interval: 100 }),
        route("metered-only", { flush_interval: 1000 }),
      ],
    }],
    consumers: ["ex1", "bt1", "ov1", "ov2", "quiet"].map((username) => ({ username })),
  };
  return config;
}

describe.each(BACKENDS)("quotas (%s redis)", (kind) => {
  let backend: RedisBackend;
  let gwA: TestGateway;
  let gwB: TestGateway;
  // Commands a client sent (scripts count once; the commands they run inside are not round trips).
  const commandCalls = () => backend.commandCalls(["evalsha", "eval"]);

  beforeAll(async () => {
    backend = await redisBackend(kind);
    const config = configFor(backend.redis);
    [gwA, gwB] = await Promise.all([gateway(config, { workers: 2 }), gateway(config, { workers: 2 })]);
  }, 90_000);

  // The next backend's gateways get the cores.
  afterAll(async () => {
    await Promise.all([gwA?.stop(), gwB?.stop()]);
  });

  it("exact: 300 concurrent requests over 2 nodes x 2 workers admit exactly the quota of 50", async () => {
    const res = await load(300, 48, (i) => hit(`${(i % 2 === 0 ? gwA : gwB).proxyUrl}/exact`, { "X-Consumer": "ex1" }));
    expect(res.filter((r) => r.status === 200)).toHaveLength(50);
    expect(res.filter((r) => r.status === 429)).toHaveLength(250);
    const rejected = res.find((r) => r.status === 429)!;
    expect(rejected.headers["x-usage-limit-day"]).toBe("50");
    expect(rejected.headers["x-usage-remaining-day"]).toBe("0");
    const toMidnight = Math.ceil((86_400_000 - (Date.now() % 86_400_000)) / 1000);
    expect(Math.abs(Number(rejected.headers["retry-after"]) - toMidnight)).toBeLessThanOrEqual(5);
    const admitted = res.filter((r) => r.status === 200).map((r) => Number(r.headers["x-usage-remaining-day"])).sort((a, b) => a - b);
    expect(admitted).toEqual(Array.from({ length: 50 }, (_, i) => i));
  });

  it("batched: the overshoot stays within what all nodes admit in two flush intervals (measured)", async () => {
    const quota = 100;
    const started = Date.now();
    // 8 clients, each sending one request after the other, on both nodes, for about 2.5 s
    const res: Res[] = [];
    await Promise.all(Array.from({ length: 8 }, async (_, c) => {
      while (Date.now() - started < 2_500) res.push(await hit(`${(c % 2 === 0 ? gwA : gwB).proxyUrl}/batched`, { "X-Consumer": "bt1" }));
    }));
    const admitted = res.filter((r) => r.status === 200).length;
    const overshoot = admitted - quota;
    // The bound: requests sent in any window of 2 flush intervals + 2 ticks (+ a round trip's slack).
    const window = 2 * BATCH_FLUSH_MS + 2 * TICK_MS + 50;
    const times = res.map((r) => r.sentAt).sort((a, b) => a - b);
    let bound = 0;
    for (let i = 0, j = 0; i < times.length; i++) {
      while (times[i] - times[j] > window) j++;
      bound = Math.max(bound, i - j + 1);
    }
    console.log(`redis-usage batched overshoot: ${overshoot} over a quota of ${quota} (${res.length} requests in ${Date.now() - started} ms, bound ${bound} = requests in any ${window} ms)`);
    expect(admitted).toBeGreaterThanOrEqual(quota);
    expect(overshoot).toBeLessThanOrEqual(bound);
    expect(res.length).toBeGreaterThan(admitted + 50);
    // Every admitted request is counted against the quota in Redis, exactly.
    await sleep(BATCH_FLUSH_MS * 2 + 300);
    const day = new Date().toISOString().slice(0, 10).replace(/-/g, "");
    expect(Number(await backend.client.hget(`krs:redis-usage:v1:{consumer:bt1}:d:${day}`, "quota_requests"))).toBe(admitted);
    expect(Number(await backend.client.hget(`krs:redis-usage:v1:{consumer:bt1}:d:${day}`, "requests"))).toBe(res.length);
  });

  it("a per-consumer override set through the Admin API wins: quota_status 402 with the month headers and Retry-After to next month", async () => {
    const put = await fetch(`${gwA.adminUrl}/redis-usage/quotas/ov1`, { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify({ month: 2 }) });
    expect(put.status).toBe(200);
    expect(await put.json()).toEqual({ consumer: "ov1", day: null, month: 2 });
    const statuses = [];
    let last: Res | undefined;
    for (let i = 0; i < 3; i++) {
      last = await hit(`${(i % 2 === 0 ? gwA : gwB).proxyUrl}/paid`, { "X-Consumer": "ov1" });
      statuses.push(last.status);
    }
    expect(statuses).toEqual([200, 200, 402]);
    expect(last!.headers["x-usage-limit-month"]).toBe("2");
    expect(last!.headers["x-usage-remaining-month"]).toBe("0");
    const now = new Date();
    const nextMonth = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1);
    expect(Math.abs(Number(last!.headers["retry-after"]) - Math.ceil((nextMonth - Date.now()) / 1000))).toBeLessThanOrEqual(5);
    expect(await (await fetch(`${gwB.adminUrl}/redis-usage/quotas/ov1`)).json()).toEqual({ consumer: "ov1", day: null, month: 2 });
    // cleared: the configured 1000 again
    expect((await fetch(`${gwA.adminUrl}/redis-usage/quotas/ov1`, { method: "DELETE" })).status).toBe(204);
    expect((await hit(`${gwA.proxyUrl}/paid`, { "X-Consumer": "ov1" })).status).toBe(200);
  });

  it("batched picks an override up with the flushes", async () => {
    // The last request of the test before went to a route flushing once a second: this route's shorter interval still holds.
    expect((await fetch(`${gwA.adminUrl}/redis-usage/quotas/ov2`, { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify({ month: 3 }) })).status).toBe(200);
    const statuses: number[] = [];
    for (let i = 0; i < 12; i++) {
      statuses.push((await hit(`${gwA.proxyUrl}/paid-batched`, { "X-Consumer": "ov2" })).status);
      await sleep(60);
    }
    // at most one request before the first flush tells this worker of the override
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(3);
    expect(statuses.filter((s) => s === 200).length).toBeLessThanOrEqual(5);
    expect(statuses.slice(-3)).toEqual([402, 402, 402]);
  });

  it("bad quota values are refused naming the field", async () => {
    const res = await fetch(`${gwA.adminUrl}/redis-usage/quotas/ov1`, { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify({ day: -3 }) });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { message: string }).message).toMatch(/^day: /);
  });

  it("batched metering makes no Redis call per request: a few script calls per worker and interval, in one pipeline", async () => {
    await sleep(1_200);
    const before = await commandCalls();
    const requests = 2_000;
    const started = Date.now();
    const res = await load(requests, 32, (i) => hit(`${(i % 2 === 0 ? gwA : gwB).proxyUrl}/metered-only`, { "X-Consumer": "quiet" }));
    const elapsed = Date.now() - started;
    expect(res.every((r) => r.status === 200)).toBe(true);
    await sleep(1_500);
    const commands = (await commandCalls()) - before;
    console.log(`redis-usage batched: ${commands} Redis commands (EVALSHA) for ${requests} requests in ${elapsed} ms (${(commands / requests).toFixed(4)} per request)`);
    // What the design allows, however fast the requests came: per worker (4) and flush
    // interval (1 s) one script call per counter set (consumer, route, service x day, month).
    const intervals = Math.ceil((elapsed + 1_500) / 1_000) + 1;
    expect(commands).toBeLessThanOrEqual(4 * intervals * 6);
    expect(commands).toBeGreaterThan(0);
  });

  it("no unexpected error lines", () => {
    expect(gwA.unexpectedErrors()).toEqual([]);
    expect(gwB.unexpectedErrors()).toEqual([]);
  });
});

/**
 * redis-usage metering through real gateways on one real Redis: 10,000 requests over 2
 * gateways x 2 workers and several consumers and routes counted exactly after one flush
 * interval (on a Redis Cluster too: the same body, spec/helpers/backends.ts), through a config change (POST /config), an nginx reload (SIGHUP) and a Redis
 * restart in the middle; the log phase making no Redis call (INFO commandstats: one
 * pipelined flush per interval); bytes really sent (chunked bodies), the cost sources and
 * bad cost headers; the key of an awkward consumer name; TTLs on every key.
 */
import { readFileSync } from "node:fs";
import { Agent, createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from "node:http";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { Redis, type Cluster } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runKrs } from "../helpers/krs-main.js";
import { BACKENDS, redisBackend } from "../helpers/backends.js";
import { gateway, startRedis, stopAll, tempDir, upstream, type RedisServer, type TestGateway } from "../helpers/services.js";
import type { UpstreamServer } from "../../src/cli/upstream.js";

interface Res {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

const agent = new Agent({ keepAlive: true, maxSockets: 64 });

function hitOnce(url: string, headers: Record<string, string> = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers, agent }, (r) => {
      let body = "";
      r.setEncoding("utf8");
      r.on("data", (c: string) => (body += c));
      r.on("end", () => resolve({ status: r.statusCode ?? 0, headers: r.headers, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

/**
 * One request; sent again when the connection was closed before any response (a pooled
 * connection an exiting nginx worker closed): nginx answers every request it has read
 * before it exits, so such a request never reached it.
 */
async function hit(url: string, headers: Record<string, string> = {}): Promise<Res> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await hitOnce(url, headers);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (attempt >= 5 || (code !== "ECONNRESET" && code !== "ECONNREFUSED" && code !== "EPIPE")) throw e;
      await sleep(20);
    }
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs `count` requests made by `make(i)` with at most `parallel` in flight; returns the statuses. */
async function load(count: number, parallel: number, make: (i: number) => Promise<Res>): Promise<number[]> {
  const statuses: number[] = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      statuses[i] = (await make(i)).status;
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return statuses;
}

const FLUSH_MS = 200;
const CONSUMERS = ["alice", "bob", "carol", "dave"];
/** Each load test meters its own consumers (prefix + name). */
const PREFIXES = ["steady-", "config-", "reload-", "restart-"];

let redis: RedisServer;
let redisDir: string;
let control: Redis;
let gwA: TestGateway;
let gwB: TestGateway;
let costUpstream: Server;
let costPort: number;
let config: Record<string, unknown>;
let up: UpstreamServer;

/** The gateways and the Redis a test meters on: the file's own (single), or a cluster's. */
interface On {
  gwA: TestGateway;
  gwB: TestGateway;
  control: Redis | Cluster;
}
const main = (): On => ({ gwA, gwB, control });

/** The current UTC day and month ids, as the gateway names its buckets. */
function buckets(now = new Date()): { day: string; month: string } {
  const iso = now.toISOString();
  return { day: iso.slice(0, 10).replace(/-/g, ""), month: iso.slice(0, 7).replace("-", "") };
}

async function counters(tag: string, period: "d" | "m" = "d", on: On = main()): Promise<Record<string, string>> {
  const b = buckets();
  return on.control.hgetall(`krs:redis-usage:v1:{${tag}}:${period}:${period === "d" ? b.day : b.month}`);
}

/** Waits (bounded) until `check` holds; returns its last value. */
async function eventually<T>(read: () => Promise<T>, check: (v: T) => boolean, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  let v = await read();
  while (!check(v) && Date.now() < deadline) {
    await sleep(50);
    v = await read();
  }
  return v;
}

function usageRoute(redisFields: object, name: string, usage: Record<string, unknown>, auth = true) {
  return {
    name,
    paths: [`/${name}`],
    plugins: [...(auth ? [{ name: "krs-test-auth" }] : []), { name: "redis-usage", config: { flush_interval: FLUSH_MS, redis: redisFields, ...usage } }],
  };
}

function configFor(redisFields: object): Record<string, unknown> {
  const route = (name: string, usage: Record<string, unknown>, auth = true) => usageRoute(redisFields, name, usage, auth);
  return {
    _format_version: "3.0",
    services: [
      {
        name: "usage-svc",
        url: `http://127.0.0.1:${up.port}/anything`,
        routes: [route("metered-a", {}), route("metered-b", {}), route("anonymous", { fallback: "ip" }, false), route("nobody", { fallback: "none" }, false)],
      },
      {
        name: "cost-svc",
        url: `http://127.0.0.1:${costPort}`,
        routes: [
          route("cost-header", { cost: 7, cost_header: "X-Usage-Cost" }),
          route("cost-shown", { cost_header: "X-Usage-Cost", hide_cost_header: false }),
          route("per-kb", { cost_per_kb: 3 }),
        ],
      },
    ],
    consumers: [...PREFIXES.flatMap((p) => CONSUMERS.map((c) => p + c)), "eve", "frank", "x{y}:z", "k".repeat(1024)].map((username) => ({ username })),
  };
}

beforeAll(async () => {
  up = await upstream();
  redisDir = tempDir("usage-redis");
  redis = await startRedis(["--appendonly", "yes", "--appendfsync", "always", "--dir", redisDir]);
  control = new Redis({ port: redis.port });
  costUpstream = createServer((req, res) => {
    const m = /^\/(cost|chunked)\/(.*)$/.exec(new URL(req.url ?? "/", "http://x").pathname);
    if (m?.[1] === "cost") {
      res.writeHead(200, { "Content-Type": "text/plain", "X-Usage-Cost": decodeURIComponent(m[2]) });
      res.end("ok");
    } else if (m?.[1] === "chunked") {
      // No Content-Length: the body goes out chunked, in pieces.
      res.writeHead(200, { "Content-Type": "application/octet-stream" });
      const total = Number(m[2]);
      let sent = 0;
      while (sent < total) {
        const n = Math.min(1000, total - sent);
        res.write(Buffer.alloc(n, 97));
        sent += n;
      }
      res.end();
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((r) => costUpstream.listen(0, "127.0.0.1", r));
  costPort = (costUpstream.address() as { port: number }).port;
  config = configFor({ port: redis.port });
  [gwA, gwB] = await Promise.all([gateway(config, { workers: 2 }), gateway(config, { workers: 2 })]);
}, 60_000);

afterAll(async () => {
  control?.disconnect();
  costUpstream?.close();
  await stopAll();
});

/** Sends `count` requests spread over both gateways, the metered routes and CONSUMERS; returns the expected counts. */
async function meteredLoad(count: number, tagPrefix: string, during?: (sent: () => number) => Promise<void>, on: On = main()) {
  const { gwA, gwB } = on;
  const expected = new Map<string, number>();
  const bump = (k: string) => expected.set(k, (expected.get(k) ?? 0) + 1);
  let sent = 0;
  const traffic = load(count, 32, async (i) => {
    const gw = i % 2 === 0 ? gwA : gwB;
    const route = i % 3 === 0 ? "metered-b" : "metered-a";
    const consumer = `${tagPrefix}${CONSUMERS[i % CONSUMERS.length]}`;
    const res = await hit(`${gw.proxyUrl}/${route}`, { "X-Consumer": consumer });
    bump(`consumer:${consumer}`);
    bump(`route:${route}`);
    bump("service:usage-svc");
    sent++;
    return res;
  });
  if (during !== undefined) await during(() => sent);
  const statuses = await traffic;
  return { expected, statuses };
}

describe("metering", () => {
  it("smoke: one request is counted in its consumer's, route's and service's day and month buckets", async () => {
    const res = await hit(`${gwA.proxyUrl}/metered-a`, { "X-Consumer": "eve" });
    expect(res.status).toBe(200);
    const day = await eventually(() => counters("consumer:eve"), (c) => c.requests === "1");
    expect(day).toMatchObject({ requests: "1", "2xx": "1", cost: "1", quota_requests: "1", quota_cost: "1" });
    expect(Number(day.bytes_in)).toBeGreaterThan(20);
    expect(Number(day.bytes_out)).toBeGreaterThan(Number(res.body.length));
    expect((await counters("consumer:eve", "m")).requests).toBe("1");
    expect(Number((await counters("route:metered-a")).requests)).toBeGreaterThanOrEqual(1);
    expect(Number((await counters("service:usage-svc")).requests)).toBeGreaterThanOrEqual(1);
  });
});

/** The counters' requests of every tag in `expected`, read once. */
async function requestsOf(tags: Iterable<string>, on: On): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const tag of tags) out.set(tag, Number((await counters(tag, "d", on)).requests ?? 0));
  return out;
}

/** Runs meteredLoad and checks every consumer, route and service counter moved by exactly what was answered. */
async function exactAfterLoad(count: number, prefix: string, during?: (sent: () => number) => Promise<void>, settleMs = FLUSH_MS + 500, on: On = main()) {
  const shared = ["route:metered-a", "route:metered-b", "service:usage-svc"];
  const before = await requestsOf(shared, on);
  const { expected, statuses } = await meteredLoad(count, prefix, during, on);
  expect(statuses.filter((s) => s !== 200)).toEqual([]);
  await sleep(settleMs);
  const after = await requestsOf(expected.keys(), on);
  for (const [tag, n] of expected) expect({ tag, requests: after.get(tag)! - (before.get(tag) ?? 0) }).toEqual({ tag, requests: n });
  // The month buckets too (same counts: no test crosses a month end)
  for (const tag of expected.keys()) {
    if (tag.startsWith("consumer:")) expect({ tag, requests: Number((await counters(tag, "m", on)).requests) }).toEqual({ tag, requests: expected.get(tag) });
  }
}

/**
 * On a cluster the consumers' buckets, the routes' and the service's are on different
 * masters: each worker's flush pipeline is split per node.
 */
describe.each(BACKENDS)("exact counts across 2 gateways x 2 workers (%s redis)", (kind) => {
  const on = {} as On;
  beforeAll(async () => {
    if (kind === "single") {
      Object.assign(on, main());
      return;
    }
    const backend = await redisBackend(kind);
    const cfg = configFor(backend.redis);
    const [a, b] = await Promise.all([gateway(cfg, { workers: 2 }), gateway(cfg, { workers: 2 })]);
    Object.assign(on, { gwA: a, gwB: b, control: backend.client });
  }, 90_000);

  afterAll(async () => {
    if (kind === "single") return;
    for (const gw of [on.gwA, on.gwB]) expect(gw.unexpectedErrors()).toEqual([]);
    await Promise.all([on.gwA.stop(), on.gwB.stop()]);
  });

  it("10,000 requests over several consumers and routes: one flush interval after the last, every counter equals the requests sent", async () => {
    await exactAfterLoad(10_000, "steady-", undefined, FLUSH_MS + 500, on);
  }, 120_000);
});

describe("exact counts across 2 gateways x 2 workers, through changes", () => {
  it("the same with a config change (POST /config on both gateways) in the middle: pending counts survive it", async () => {
    const changed = structuredClone(config) as { services: { routes: { name: string; plugins: { name: string; config?: Record<string, unknown> }[] }[] }[] };
    // A new config table for every plugin (another flush_interval): the buffer is not per config.
    for (const r of changed.services[0].routes) for (const p of r.plugins) if (p.name === "redis-usage") p.config!.flush_interval = FLUSH_MS + 50;
    await exactAfterLoad(4_000, "config-", async (sent) => {
      while (sent() < 1_500) await sleep(10);
      for (const gw of [gwA, gwB]) {
        const res = await fetch(`${gw.adminUrl}/config`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(changed) });
        expect(res.status).toBe(201);
      }
    });
  }, 120_000);

  it("the same with an nginx reload (SIGHUP, as nginx -s reload and kong reload): the exiting workers flush what they hold", async () => {
    await exactAfterLoad(4_000, "reload-", async (sent) => {
      while (sent() < 1_500) await sleep(10);
      for (const gw of [gwA, gwB]) process.kill(Number(readFileSync(join(gw.prefix, "logs", "nginx.pid"), "utf8").trim()), "SIGHUP");
    }, 3_000);
    expect(gwA.unexpectedErrors()).toEqual([]);
    expect(gwB.unexpectedErrors()).toEqual([]);
  }, 120_000);

  it("the same with a Redis restart in the middle: counts are held while it is down and flushed once it is back", async () => {
    let downFor = 0;
    await exactAfterLoad(4_000, "restart-", async (sent) => {
      while (sent() < 1_000) await sleep(10);
      const exited = new Promise((r) => redis.process.once("exit", r));
      redis.process.kill("SIGTERM");
      await exited;
      const downAt = sent();
      await delay(1_000);
      downFor = sent() - downAt;
      redis = await startRedis(["--appendonly", "yes", "--appendfsync", "always", "--dir", redisDir], redis.port);
    }, 4_000);
    // requests were really answered while Redis was down (the log phase never waits for it)
    expect(downFor).toBeGreaterThan(100);
  }, 120_000);
});

describe("what is counted", () => {
  const admin = () => gwA.adminUrl;
  const usage = async (path: string) => {
    const res = await fetch(`${admin()}${path}`);
    return { status: res.status, body: (await res.json()) as any };
  };

  it("cost from the upstream's header, hidden from the client; a bad value counts the configured cost and is logged once per interval", async () => {
    const ok = await hit(`${gwA.proxyUrl}/cost-header/cost/5`, { "X-Consumer": "frank" });
    expect(ok.status).toBe(200);
    expect(ok.headers["x-usage-cost"]).toBeUndefined();
    for (const bad of ["NaN", "-1", "1e999", "2.5", "99999999999"]) {
      expect((await hit(`${gwA.proxyUrl}/cost-header/cost/${bad}`, { "X-Consumer": "frank" })).status).toBe(200);
    }
    const c = await eventually(() => counters("consumer:frank"), (v) => v.requests === "6");
    expect(c.cost).toBe(String(5 + 5 * 7));
    const shown = await hit(`${gwA.proxyUrl}/cost-shown/cost/3`, { "X-Consumer": "frank" });
    expect(shown.headers["x-usage-cost"]).toBe("3");
    const lines = gwA.errorLog().filter((l) => /X-Usage-Cost is not a whole number/.test(l));
    expect(lines.length).toBeGreaterThanOrEqual(1);
    expect(lines.length).toBeLessThanOrEqual(2); // one per worker at most
  });

  it("bytes really sent, chunked bodies included, and cost_per_kb of them", async () => {
    const res = await hit(`${gwA.proxyUrl}/per-kb/chunked/5000`, { "X-Consumer": "frank" });
    expect(res.status).toBe(200);
    expect(res.headers["content-length"]).toBeUndefined();
    expect(res.body.length).toBe(5000);
    const before = 5 + 5 * 7 + 3;
    const c = await eventually(() => counters("consumer:frank"), (v) => v.requests === "8");
    expect(Number(c.cost) - before).toBe(3 * 5);
    const route = await counters("route:per-kb");
    expect(Number(route.bytes_out)).toBeGreaterThan(5000);
    expect(Number(route.bytes_out)).toBeLessThan(5600);
  });

  it("status classes, the ip fallback, and no subject with fallback none (route and service still counted)", async () => {
    expect((await hit(`${gwA.proxyUrl}/anonymous`)).status).toBe(200);
    const ip = await eventually(() => counters("ip:127.0.0.1"), (v) => Number(v.requests) >= 1);
    expect(Number(ip["2xx"])).toBeGreaterThanOrEqual(1);
    // A 401 from the auth plugin, before redis-usage's access: no consumer, so metered to
    // the client IP as a 4xx, and not counted towards its quota.
    expect((await hit(`${gwA.proxyUrl}/metered-a`)).status).toBe(401);
    const refused = await eventually(() => counters("ip:127.0.0.1"), (v) => Number(v.requests) === Number(ip.requests) + 1);
    expect(Number(refused["4xx"] ?? 0)).toBe(Number(ip["4xx"] ?? 0) + 1);
    expect(refused.quota_requests).toBe(ip.quota_requests);
    const before = Number((await counters("route:nobody")).requests ?? 0);
    await hit(`${gwB.proxyUrl}/nobody`);
    const after = await eventually(() => counters("route:nobody"), (v) => Number(v.requests) === before + 1);
    expect(Number(after.requests)).toBe(before + 1);
    expect(Number((await counters("ip:127.0.0.1")).requests)).toBe(Number(refused.requests));
  });

  it("consumer names with {, : or 1 KB of text keep to their own key (hashed part) and read back by name", async () => {
    const long = "k".repeat(1024);
    for (const name of ["x{y}:z", long]) expect((await hit(`${gwA.proxyUrl}/metered-a`, { "X-Consumer": name })).status).toBe(200);
    await sleep(FLUSH_MS + 400);
    const keys = await control.keys("krs:redis-usage:v1:{consumer:#*");
    expect(keys.length).toBeGreaterThanOrEqual(4);
    for (const k of keys) expect(k.length).toBeLessThan(120);
    const byName = await usage(`/redis-usage/consumers/${encodeURIComponent("x{y}:z")}?period=day`);
    expect(byName.status).toBe(200);
    expect(byName.body.data).toHaveLength(1);
    expect(byName.body.data[0].requests).toBe(1);
    const byLong = await usage(`/redis-usage/consumers/${long}?period=month`);
    expect(byLong.body.data[0].requests).toBe(1);
  });

  it("the read API: day and month rows, 400 naming a bad date, an unknown consumer is an empty list", async () => {
    const today = new Date().toISOString().slice(0, 10);
    const res = await usage(`/redis-usage/consumers/frank?period=day&from=${today}&to=${today}`);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ kind: "consumer", name: "frank", period: "day" });
    expect(res.body.data[0]).toMatchObject({ day: today, requests: 8, "2xx": 8 });
    expect((await usage("/redis-usage/consumers/frank")).body.data[0].month).toBe(today.slice(0, 7));
    expect(await usage("/redis-usage/consumers/frank?period=day&from=2026-02-30")).toEqual({ status: 400, body: { message: "from: expected a day as YYYY-MM-DD" } });
    expect(await usage("/redis-usage/consumers/frank?period=month&to=11-2026")).toEqual({ status: 400, body: { message: "to: expected a month as YYYY-MM" } });
    expect((await usage("/redis-usage/consumers/frank?period=week")).status).toBe(400);
    expect(await usage("/redis-usage/consumers/nobody-at-all")).toEqual({ status: 200, body: { kind: "consumer", name: "nobody-at-all", period: "month", data: [] } });
    const route = await usage("/redis-usage/routes/per-kb?period=day");
    expect(route.body.data[0].requests).toBe(1);
  });

  it("every key has a TTL (the quota overrides excepted, docs/redis-keys.md)", async () => {
    const keys = await control.keys("krs:redis-usage:*");
    expect(keys.length).toBeGreaterThan(20);
    for (const k of keys) {
      if (k.endsWith(":quota")) continue;
      expect({ k, ttl: (await control.pttl(k)) > 0 }).toEqual({ k, ttl: true });
    }
  });
});

describe("krs usage", () => {
  const url = () => `redis://127.0.0.1:${redis.port}/0`;
  const today = () => new Date().toISOString().slice(0, 10);

  it("show: one consumer's month and day, as text, JSON and CSV (one row per consumer per bucket)", async () => {
    const text = await runKrs("usage", "show", "--consumer", "frank", "--redis", url());
    expect(text.code).toBe(0);
    expect(text.out).toMatch(/^subject\s+bucket\s+requests/);
    expect(text.out).toContain("frank");
    const json = await runKrs("usage", "show", "--consumer", "frank", "--day", today(), "--json", "--redis", url());
    const rows = JSON.parse(json.out);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ kind: "consumer", subject: "frank", period: "day", bucket: today() });
    expect(rows[0].counts.requests).toBe(8);
    const csv = await runKrs("usage", "show", "--consumer", "x{y}:z", "--from", today().slice(0, 7), "--csv", "--redis", url());
    const lines = csv.out.split("\n");
    expect(lines[0]).toBe("kind,subject,period,bucket,requests,bytes_in,bytes_out,cost,2xx,3xx,4xx,5xx,quota_requests,quota_cost");
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(/^consumer,x\{y\}:z,month,\d{4}-\d{2},1,/);
  });

  it("show refuses bad dates naming the flag; an unknown consumer has no rows", async () => {
    expect(await runKrs("usage", "show", "--consumer", "frank", "--day", "2026-02-30", "--redis", url())).toMatchObject({ code: 2, err: expect.stringContaining("--day") });
    expect(await runKrs("usage", "show", "--consumer", "frank", "--month", "2026-13", "--redis", url())).toMatchObject({ code: 2, err: expect.stringContaining("--month") });
    expect(await runKrs("usage", "show", "--consumer", "nobody-at-all", "--csv", "--redis", url())).toMatchObject({ code: 0, out: "kind,subject,period,bucket,requests,bytes_in,bytes_out,cost,2xx,3xx,4xx,5xx,quota_requests,quota_cost" });
  });

  it("top: the heaviest consumers and routes of the month, by SCAN", async () => {
    const res = await runKrs("usage", "top", "--json", "--limit", "3", "--redis", url());
    expect(res.code).toBe(0);
    const rows = JSON.parse(res.out) as { subject: string; counts: { requests: number } }[];
    expect(rows).toHaveLength(3);
    expect(rows[0].counts.requests).toBeGreaterThanOrEqual(rows[1].counts.requests);
    expect(rows[0].subject).toMatch(/^steady-/);
    const routes = JSON.parse((await runKrs("usage", "top", "--by", "route", "--json", "--redis", url())).out) as { subject: string }[];
    expect(routes.map((r) => r.subject)).toEqual(expect.arrayContaining(["metered-a", "metered-b", "per-kb"]));
    const named = JSON.parse((await runKrs("usage", "top", "--json", "--limit", "1000", "--redis", url())).out) as { subject: string }[];
    expect(named.map((r) => r.subject)).toContain("x{y}:z");
  });

  it("a hostile subject name is neither a formula in the CSV export nor a terminal escape in the text", async () => {
    const direct = new Redis({ host: "127.0.0.1", port: redis.port, lazyConnect: true });
    await direct.connect();
    const formula = '=HYPERLINK("http://127.0.0.1/x","pay")';
    const escape = "\u001b]0;owned\u0007\u001b[2Jname";
    try {
      await direct.hset("krs:redis-usage:v1:{consumer:#hostile-formula}:m:200101", "subject", formula, "requests", 3);
      await direct.hset("krs:redis-usage:v1:{consumer:#hostile-escape}:m:200101", "subject", escape, "requests", 2);
      await direct.hset("krs:redis-usage:v1:{consumer:#hostile-plus}:m:200101", "subject", "+1+2", "requests", 1);
      await direct.pexpire("krs:redis-usage:v1:{consumer:#hostile-formula}:m:200101", 600000);
      await direct.pexpire("krs:redis-usage:v1:{consumer:#hostile-escape}:m:200101", 600000);
      await direct.pexpire("krs:redis-usage:v1:{consumer:#hostile-plus}:m:200101", 600000);
    } finally {
      direct.disconnect();
    }
    const csv = await runKrs("usage", "top", "--month", "2001-01", "--csv", "--redis", url());
    expect(csv.code).toBe(0);
    const lines = csv.out.split("\n");
    expect(lines[1]).toBe(`consumer,"'=HYPERLINK(""http://127.0.0.1/x"",""pay"")",month,2001-01,3,0,0,0,0,0,0,0,0,0`);
    expect(lines[3]).toMatch(/^consumer,'\+1\+2,month,/);
    const text = await runKrs("usage", "top", "--month", "2001-01", "--redis", url());
    expect(text.code).toBe(0);
    expect(text.out).not.toMatch(/[\u0000-\u0009\u000b-\u001f]/);
    expect(text.out).toContain("\\x1b]0;owned\\x07\\x1b[2Jname");
  });

  it("quota set, get and clear, the same override the Admin API shows", async () => {
    expect((await runKrs("usage", "quota", "set", "frank", "--month", "500", "--day", "20", "--redis", url())).out).toBe('{"consumer":"frank","day":20,"month":500}');
    expect(await (await fetch(`${gwA.adminUrl}/redis-usage/quotas/frank`)).json()).toEqual({ consumer: "frank", day: 20, month: 500 });
    expect((await runKrs("usage", "quota", "set", "frank", "--day", "none", "--redis", url())).out).toBe('{"consumer":"frank","day":null,"month":500}');
    expect((await runKrs("usage", "quota", "get", "frank", "--redis", url())).out).toBe('{"consumer":"frank","day":null,"month":500}');
    expect((await runKrs("usage", "quota", "set", "frank", "--day", "-1", "--redis", url())).code).toBe(2);
    expect((await runKrs("usage", "quota", "clear", "frank", "--redis", url())).code).toBe(0);
    expect((await runKrs("usage", "quota", "get", "frank", "--redis", url())).out).toBe('{"consumer":"frank","day":null,"month":null}');
  });
});

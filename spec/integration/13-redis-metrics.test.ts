/**
 * redis-metrics through real gateways (2 workers each) and real Redis: every exposition
 * checked by the real `promtool check metrics` (Kong's own names draw lint remarks, as in
 * Kong; a parse error or a remark on a krs_* metric fails) and parsed back. Kong's metrics
 * count exactly the requests sent per route, code and consumer; histograms' _count equals
 * their requests and buckets are cumulative; the krs_* metrics follow what key-auth,
 * rate-limit, cache and ip-access did in the same requests, and the Redis round trips per
 * plugin equal the commands the plugin's own Redis served. The cluster endpoint sums two
 * gateways and drops a stopped one after its snapshot's lifetime. 10,000 distinct
 * consumers with per_consumer stay under max_series, every update counted or dropped.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { UpstreamServer } from "../../src/cli/upstream.js";
import { startGateway } from "../../src/cli/gateway.js";
import { BACKENDS, redisBackend } from "../helpers/backends.js";
import { FIXTURE_LUA_PATH, FIXTURE_PLUGINS, gateway, ROOT, startRedis, stopAll, upstream, type RedisServer, type TestGateway } from "../helpers/services.js";

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One request on a connection of its own, so that both workers take their share. */
function hit(url: string, init: { method?: string; headers?: Record<string, string> } = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: init.method ?? "GET", headers: init.headers, agent: false }, (r) => {
      let body = "";
      r.setEncoding("utf8");
      r.on("data", (c: string) => (body += c));
      r.on("end", () => resolve({ status: r.statusCode ?? 0, headers: r.headers, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The text format parsed back: every sample line, with its labels unescaped. */
function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null) throw new Error(`unparsable sample line: ${line}`);
    const labels: Record<string, string> = {};
    const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/g;
    for (const l of (m[2] ?? "").matchAll(labelRe)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

function sum(samples: Sample[], name: string, match: Record<string, string> = {}): number {
  let total = 0;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (Object.entries(match).every(([k, v]) => s.labels[k] === v)) total += s.value;
  }
  return total;
}

/** promtool's verdict: parse errors fail; lint remarks only on Kong's own names (kong_*). */
function promtool(text: string): void {
  const run = spawnSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" });
  if (run.error) throw new Error(`promtool is not installed (scripts/bootstrap.sh installs Debian's prometheus package): ${run.error.message}`);
  const remarks = `${run.stdout}${run.stderr}`.split("\n").filter((l) => l.trim() !== "");
  if (run.status === 0) return;
  expect(run.status, remarks.join("\n")).toBe(3);
  for (const remark of remarks) expect(remark, "a lint remark on a metric other than Kong's own").toMatch(/^kong_\w+ /);
}

async function scrape(url: string): Promise<Sample[]> {
  const res = await hit(url);
  expect(res.status, res.body).toBe(200);
  expect(res.headers["content-type"]).toBe("text/plain; version=0.0.4; charset=utf-8");
  promtool(res.body);
  return parse(res.body);
}

/** Scrapes until `done` holds (counters reach the dict within a flush interval), at most `tries` × ~0.2 s. */
async function scrapeUntil(url: string, done: (s: Sample[]) => boolean, tries = 40): Promise<Sample[]> {
  let samples: Sample[] = [];
  for (let i = 0; i < tries; i++) {
    samples = await scrape(url);
    if (done(samples)) return samples;
    await new Promise((r) => setTimeout(r, 200));
  }
  return samples;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Calls of the given commands a Redis served, from INFO commandstats. */
async function commandCalls(redis: Redis, commands: string[]): Promise<number> {
  const info = await redis.info("commandstats");
  let total = 0;
  for (const c of commands) {
    const m = new RegExp(`^cmdstat_${c}:calls=(\\d+)`, "m").exec(info);
    if (m !== null) total += Number(m[1]);
  }
  return total;
}

let up: UpstreamServer;
let pushRedis: RedisServer;
let authRedis: RedisServer;
let limitRedis: RedisServer;
let cacheRedis: RedisServer;
let gwA: TestGateway;

function metricsPlugin(extra: object = {}, push: object = { port: pushRedis.port }) {
  return {
    name: "redis-metrics",
    config: { status_code_metrics: true, latency_metrics: true, bandwidth_metrics: true, per_consumer: true, push_interval: 1, redis: push, ...extra },
  };
}

/** The main gateway's config; `push` is the Redis its metrics are pushed to (the other plugins keep theirs). */
function mainConfig(push: object = { port: pushRedis.port }) {
  return {
    _format_version: "3.0",
    consumers: [{ username: "alice" }, { username: "bob" }],
    services: [
      {
        name: "svc",
        url: `http://127.0.0.1:${up.port}`,
        routes: [
          { name: "plain", paths: ["/plain"] },
          { name: "other", paths: ["/other"] },
          { name: "auth", paths: ["/auth"], plugins: [{ name: "redis-key-auth", config: { redis: { port: authRedis.port } } }] },
          { name: "limited", paths: ["/limited"], plugins: [{ name: "redis-rate-limit", config: { minute: 3, limit_by: "ip", redis: { port: limitRedis.port } } }] },
          { name: "cached", paths: ["/cached"], plugins: [{ name: "redis-cache", config: { l1_ttl: 0, redis: { port: cacheRedis.port } } }] },
          { name: "denied", paths: ["/denied"], plugins: [{ name: "redis-ip-access", config: { deny: ["127.0.0.1"] } }] },
        ],
      },
    ],
    plugins: [metricsPlugin({}, push)],
  };
}

beforeAll(async () => {
  up = await upstream();
  [pushRedis, authRedis, limitRedis, cacheRedis] = await Promise.all([startRedis(), startRedis(), startRedis(), startRedis()]);
  gwA = await gateway(mainConfig());
}, 60_000);

afterAll(async () => {
  // The subscriber test drops key-auth's subscriptions on purpose.
  expect(gwA.unexpectedErrors([/redis-key-auth:subscriber\] invalidation subscriber lost the subscription: closed; reconnecting/])).toEqual([]);
  await stopAll();
});

describe("Kong's metrics", () => {
  it("count every request per route and code across both workers, with source; histograms count each request once, buckets cumulative", async () => {
    const sent: Record<string, number> = {};
    const requests: Promise<Res>[] = [];
    const plan: [string, string, number][] = [["plain", "/plain/status/200", 23], ["plain", "/plain/status/201", 7], ["other", "/other/status/503", 5]];
    for (const [route, path, n] of plan) {
      for (let i = 0; i < n; i++) requests.push(hit(gwA.proxyUrl + path));
      const code = path.split("/").pop()!;
      sent[`${route}|${code}`] = n;
    }
    const answers = await Promise.all(requests);
    expect(answers.filter((a) => a.status === 200)).toHaveLength(23);
    const noRoute = await hit(gwA.proxyUrl + "/nowhere");
    expect(noRoute.status).toBe(404);

    const url = gwA.adminUrl + "/redis-metrics";
    const done = (s: Sample[]) => sum(s, "kong_http_requests_total", { route: "plain" }) >= 30 && sum(s, "kong_http_requests_total", { route: "other" }) >= 5;
    await scrapeUntil(url, done);
    // A second look past a flush interval: nothing counted twice.
    await sleep(1200);
    const s = await scrape(url);
    for (const [key, n] of Object.entries(sent)) {
      const [route, code] = key.split("|");
      expect(sum(s, "kong_http_requests_total", { service: "svc", route: route!, code: code!, source: "service", workspace: "default", consumer: "" }), key).toBe(n);
    }
    expect(sum(s, "kong_http_requests_total", { service: "", route: "", code: "404", source: "kong" })).toBe(1);

    for (const name of ["kong_request_latency_ms", "kong_kong_latency_ms", "kong_upstream_latency_ms"]) {
      expect(sum(s, `${name}_count`, { route: "plain" }), name).toBe(30);
      const buckets = s.filter((x) => x.name === `${name}_bucket` && x.labels.route === "plain");
      expect(buckets.length).toBeGreaterThan(10);
      for (let i = 1; i < buckets.length; i++) expect(buckets[i]!.value).toBeGreaterThanOrEqual(buckets[i - 1]!.value);
      expect(buckets.at(-1)!.labels.le).toBe("+Inf");
      expect(buckets.at(-1)!.value).toBe(30);
    }
    // The no-route 404 never reached an upstream: request and Kong latency only.
    expect(sum(s, "kong_request_latency_ms_count", { route: "" })).toBe(1);
    expect(sum(s, "kong_upstream_latency_ms_count", { route: "" })).toBe(0);

    expect(sum(s, "kong_bandwidth_bytes", { route: "plain", direction: "egress" })).toBeGreaterThan(30 * 50);
    expect(sum(s, "kong_bandwidth_bytes", { route: "plain", direction: "ingress" })).toBeGreaterThan(30 * 20);
    for (const state of ["accepted", "active", "handled", "reading", "total", "waiting", "writing"]) {
      expect(s.some((x) => x.name === "kong_nginx_connections_total" && x.labels.state === state), state).toBe(true);
    }
    expect(sum(s, "kong_nginx_connections_total", { state: "accepted" })).toBeGreaterThanOrEqual(37);
    expect(sum(s, "kong_memory_lua_shared_dict_total_bytes", { shared_dict: "krs_metrics" })).toBe(16 * 1024 * 1024);
    expect(sum(s, "kong_memory_lua_shared_dict_bytes", { shared_dict: "krs_metrics" })).toBeGreaterThan(0);
    expect(s.filter((x) => x.name === "kong_memory_workers_lua_vms_bytes")).toHaveLength(2);
  }, 60_000);
});

describe("cost", () => {
  it("makes no Redis call per request: only the push timer reaches Redis", async () => {
    const control = new Redis({ port: pushRedis.port, lazyConnect: true });
    await control.connect();
    // What a client sends (scripts' own commands show in commandstats too: not counted).
    const allCalls = () => commandCalls(control, ["evalsha", "eval", "get", "set", "incr", "hgetall", "zrangebyscore", "mget"]);
    const url = gwA.adminUrl + "/redis-metrics";
    const plain200 = { route: "plain", code: "200" };
    const counted = sum(await scrape(url), "kong_http_requests_total", plain200);
    const before = await allCalls();
    const started = Date.now();
    for (let i = 0; i < 10; i++) await Promise.all(Array.from({ length: 20 }, () => hit(gwA.proxyUrl + "/plain/status/200")));
    const seconds = (Date.now() - started) / 1000;
    const calls = (await allCalls()) - before;
    await control.quit();
    // One push a second (one script), plus the first push's look-up of a previous run
    // and its EVAL after NOSCRIPT.
    expect(calls).toBeLessThanOrEqual(Math.ceil(seconds) + 3);
    const s = await scrapeUntil(url, (x) => sum(x, "kong_http_requests_total", plain200) >= counted + 200);
    expect(sum(s, "kong_http_requests_total", plain200)).toBe(counted + 200);
    expect(s.filter((x) => x.name === "krs_redis_round_trips_total" && x.labels.plugin === "redis-metrics")).toEqual([]);
  }, 60_000);
});

describe("the suite's metrics follow what the plugins did", () => {
  it("key-auth: ok, unknown and missing per consumer; its Redis round trips are the HGETALLs its Redis served", async () => {
    const make = (consumer: string) =>
      new Promise<string>((resolve, reject) => {
        const req = httpRequest(gwA.adminUrl + "/redis-key-auth/keys", { method: "POST", headers: { "content-type": "application/json" }, agent: false }, (r) => {
          let body = "";
          r.on("data", (c: Buffer) => (body += c.toString()));
          r.on("end", () => (r.statusCode === 201 ? resolve(JSON.parse(body).key) : reject(new Error(`${r.statusCode} ${body}`))));
        });
        req.end(JSON.stringify({ consumer }));
      });
    const aliceKey = await make("alice");
    const bobKey = await make("bob");
    const control = new Redis({ port: authRedis.port, lazyConnect: true });
    await control.connect();
    const before = await commandCalls(control, ["hgetall"]);
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await hit(gwA.proxyUrl + "/auth/anything", { headers: { apikey: aliceKey } })).status);
    for (let i = 0; i < 4; i++) statuses.push((await hit(gwA.proxyUrl + "/auth/anything", { headers: { apikey: bobKey } })).status);
    for (let i = 0; i < 3; i++) statuses.push((await hit(gwA.proxyUrl + "/auth/anything", { headers: { apikey: `not-a-key-${i}` } })).status);
    for (let i = 0; i < 2; i++) statuses.push((await hit(gwA.proxyUrl + "/auth/anything")).status);
    expect(statuses).toEqual([...Array(10).fill(200), 401, 401, 401, 401, 401]);

    const url = gwA.adminUrl + "/redis-metrics";
    await scrapeUntil(url, (x) => sum(x, "krs_auth_results_total", { route: "auth" }) >= 15);
    await sleep(1200);
    const after = await scrape(url);
    const redisCalls = (await commandCalls(control, ["hgetall"])) - before;
    await control.quit();
    const auth = (result: string) => sum(after, "krs_auth_results_total", { service: "svc", route: "auth", plugin: "redis-key-auth", result });
    expect([auth("ok"), auth("unknown"), auth("missing")]).toEqual([10, 3, 2]);
    expect(sum(after, "kong_http_requests_total", { route: "auth", code: "200", consumer: "alice" })).toBe(6);
    expect(sum(after, "kong_http_requests_total", { route: "auth", code: "200", consumer: "bob" })).toBe(4);
    expect(sum(after, "kong_http_requests_total", { route: "auth", code: "401", consumer: "" })).toBe(5);
    expect(redisCalls).toBeGreaterThan(0);
    expect(sum(after, "krs_redis_round_trips_total", { plugin: "redis-key-auth" })).toBe(redisCalls);
    expect(sum(after, "krs_redis_errors_total", { plugin: "redis-key-auth" })).toBe(0);
  }, 60_000);

  it("rate-limit: admitted and rejected as the responses said; its round trips are the scripts its Redis ran", async () => {
    const control = new Redis({ port: limitRedis.port, lazyConnect: true });
    await control.connect();
    const before = await commandCalls(control, ["evalsha", "eval"]);
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) statuses.push((await hit(gwA.proxyUrl + "/limited/anything")).status);
    const admitted = statuses.filter((c) => c === 200).length;
    const rejected = statuses.filter((c) => c === 429).length;
    expect(admitted + rejected).toBe(8);
    expect(rejected).toBeGreaterThanOrEqual(5);

    const url = gwA.adminUrl + "/redis-metrics";
    await scrapeUntil(url, (x) => sum(x, "krs_limit_decisions_total", { route: "limited" }) >= 8);
    await sleep(1200);
    const s = await scrape(url);
    const scripts = (await commandCalls(control, ["evalsha", "eval"])) - before;
    await control.quit();
    const decisions = (match: Record<string, string>) => sum(s, "krs_limit_decisions_total", { route: "limited", plugin: "redis-rate-limit", kind: "rate", ...match });
    expect(decisions({ decision: "admitted" })).toBe(admitted);
    expect(decisions({ decision: "rejected" })).toBe(rejected);
    expect(decisions({ source: "fault" })).toBe(0);
    // Each decision Redis made is one script call; the worker's deny cache answers without Redis.
    const fromRedis = decisions({ source: "redis" });
    expect(decisions({ source: "redis" }) + decisions({ source: "worker" })).toBe(8);
    expect(sum(s, "krs_redis_round_trips_total", { plugin: "redis-rate-limit" })).toBe(scripts);
    expect(scripts).toBeGreaterThanOrEqual(fromRedis);
    expect(sum(s, "kong_http_requests_total", { route: "limited", code: "429", source: "kong" })).toBe(rejected);
    expect(sum(s, "krs_redis_latency_seconds_count", { plugin: "redis-rate-limit" })).toBe(fromRedis);
  }, 60_000);

  it("cache: Miss, Hit and Bypass as X-Cache-Status said", async () => {
    const seen: Record<string, number> = {};
    const note = (r: Res) => {
      const status = String(r.headers["x-cache-status"]);
      seen[status] = (seen[status] ?? 0) + 1;
      return status;
    };
    note(await hit(gwA.proxyUrl + "/cached/anything/page"));
    for (let i = 0; i < 20 && note(await hit(gwA.proxyUrl + "/cached/anything/page")) !== "Hit"; i++) await sleep(100);
    for (let i = 0; i < 3; i++) note(await hit(gwA.proxyUrl + "/cached/anything/page"));
    note(await hit(gwA.proxyUrl + "/cached/anything/page", { method: "POST" }));
    expect(seen.Miss).toBeGreaterThanOrEqual(1);
    expect(seen.Hit).toBeGreaterThanOrEqual(4);
    expect(seen.Bypass).toBe(1);
    const total = Object.values(seen).reduce((a, b) => a + b, 0);

    const url = gwA.adminUrl + "/redis-metrics";
    await scrapeUntil(url, (x) => sum(x, "krs_cache_requests_total", { route: "cached" }) >= total);
    await sleep(1200);
    const s = await scrape(url);
    for (const [status, n] of Object.entries(seen)) {
      expect(sum(s, "krs_cache_requests_total", { service: "svc", route: "cached", plugin: "redis-cache", status }), status).toBe(n);
    }
    expect(sum(s, "krs_cache_requests_total", { route: "cached" })).toBe(total);
  }, 60_000);

  it("ip-access: each refusal counted with its reason", async () => {
    for (let i = 0; i < 3; i++) expect((await hit(gwA.proxyUrl + "/denied/anything")).status).toBe(403);
    const url = gwA.adminUrl + "/redis-metrics";
    await scrapeUntil(url, (x) => sum(x, "krs_access_decisions_total", { route: "denied" }) >= 3);
    await sleep(1200);
    const s = await scrape(url);
    expect(sum(s, "krs_access_decisions_total", { route: "denied", plugin: "redis-ip-access", decision: "refused" })).toBe(3);
    expect(sum(s, "krs_access_decisions_total", { route: "denied", decision: "allowed" })).toBe(0);
    expect(sum(s, "kong_http_requests_total", { route: "denied", code: "403", source: "kong" })).toBe(3);
  }, 30_000);
});

describe("Redis health", () => {
  it("a hung Redis: errors and fault decisions counted, the breaker gauge 1 while open and 0 once Redis answers again", async () => {
    const hung = await startRedis();
    const gw = await gateway({
      _format_version: "3.0",
      services: [{ name: "svc", url: `http://127.0.0.1:${up.port}`, routes: [{ name: "limited", paths: ["/limited"], plugins: [{ name: "redis-rate-limit", config: { minute: 100000, limit_by: "ip", sync: "exact", redis: { port: hung.port, timeout: 100 } } }] }] }],
      plugins: [{ name: "redis-metrics", config: { status_code_metrics: true } }],
    });
    const url = gw.adminUrl + "/redis-metrics";
    const redisLabel = { redis: `127.0.0.1:${hung.port}/0` };
    const open = (s: Sample[]) => s.filter((x) => x.name === "krs_redis_circuit_open" && x.labels.redis === redisLabel.redis);
    // Both workers must have used this Redis once to report on it.
    let healthy: Sample[] = [];
    for (let i = 0; i < 40 && open(healthy).length < 2; i++) {
      for (let j = 0; j < 2; j++) expect((await hit(gw.proxyUrl + "/limited/anything")).status).toBe(200);
      await sleep(200);
      healthy = await scrape(url);
    }
    expect(open(healthy).map((x) => x.value)).toEqual([0, 0]);

    hung.process.kill("SIGSTOP");
    try {
      // fault_tolerant (the default): every request goes on; Redis costs each worker
      // 3 timeouts, then its circuit opens and calls fail at once. (sync exact: one call
      // per request, so each of the 12 is a fault decision; a lease would admit some.)
      for (let i = 0; i < 12; i++) expect((await hit(gw.proxyUrl + "/limited/anything")).status).toBe(200);
      const s = await scrapeUntil(url, (x) => open(x).some((g) => g.value === 1) && sum(x, "krs_limit_decisions_total", { source: "fault" }) >= 12);
      expect(open(s).some((g) => g.value === 1)).toBe(true);
      expect(sum(s, "krs_limit_decisions_total", { plugin: "redis-rate-limit", decision: "admitted", source: "fault" })).toBe(12);
      expect(sum(s, "krs_redis_errors_total", { plugin: "redis-rate-limit" })).toBe(12);
    } finally {
      hung.process.kill("SIGCONT");
    }
    let recovered: Sample[] = [];
    for (let i = 0; i < 40; i++) {
      await Promise.all(Array.from({ length: 4 }, () => hit(gw.proxyUrl + "/limited/anything")));
      await sleep(150);
      recovered = await scrape(url);
      if (open(recovered).length === 2 && open(recovered).every((g) => g.value === 0)) break;
    }
    expect(open(recovered).map((x) => x.value)).toEqual([0, 0]);
    expect(gw.unexpectedErrors([/redis-rate-limit.*redis/i])).toEqual([]);
    await gw.stop();
  }, 60_000);
});

/**
 * The cluster view on one Redis and on a Redis Cluster (the same body,
 * spec/helpers/backends.ts): every snapshot and the node index share the {cluster} tag.
 */
describe.each(BACKENDS)("cluster-wide (%s redis)", (kind) => {
  let push: object;
  let gwMain: TestGateway;
  beforeAll(async () => {
    if (kind === "single") {
      push = { port: pushRedis.port };
      gwMain = gwA;
      return;
    }
    push = (await redisBackend(kind)).redis;
    gwMain = await gateway(mainConfig(push));
  }, 90_000);

  afterAll(async () => {
    if (kind === "single") return;
    expect(gwMain.unexpectedErrors()).toEqual([]);
    await gwMain.stop();
  });

  it("sums two gateways' counters, never goes backwards when one restarts, and drops a stopped one once its snapshot expires", async () => {
    // B pushes every 2 s: its snapshot lives 6 s, time enough to restart it.
    const configB = mainConfig(push);
    configB.plugins = [metricsPlugin({ push_interval: 2 }, push)];
    const gwB = await gateway(configB);
    for (let i = 0; i < 4; i++) expect((await hit(gwB.proxyUrl + "/other/status/202")).status).toBe(202);
    for (let i = 0; i < 6; i++) expect((await hit(gwMain.proxyUrl + "/other/status/202")).status).toBe(202);
    const match = { route: "other", code: "202" };
    const clusterUrl = gwMain.adminUrl + "/redis-metrics/cluster";
    // Local counters reach the dict within 1 s, the snapshot within one push (1 s) more.
    const summed = await scrapeUntil(clusterUrl, (x) => sum(x, "kong_http_requests_total", match) >= 10 && sum(x, "krs_cluster_nodes") === 2);
    expect(sum(summed, "krs_cluster_nodes")).toBe(2);
    expect(sum(summed, "kong_http_requests_total", match)).toBe(10);
    const localA = await scrape(gwMain.adminUrl + "/redis-metrics");
    const localB = await scrape(gwB.adminUrl + "/redis-metrics");
    expect(sum(localA, "kong_http_requests_total", match)).toBe(6);
    expect(sum(localB, "kong_http_requests_total", match)).toBe(4);
    // The same endpoint on the other node gives the same sums.
    const fromB = await scrapeUntil(gwB.adminUrl + "/redis-metrics/cluster", (x) => sum(x, "kong_http_requests_total", match) >= 10);
    expect(sum(fromB, "kong_http_requests_total", match)).toBe(10);
    expect(sum(fromB, "kong_request_latency_ms_count", { route: "plain" })).toBe(sum(localA, "kong_request_latency_ms_count", { route: "plain" }) + sum(localB, "kong_request_latency_ms_count", { route: "plain" }));

    // B restarts (same prefix, same node id, counters back at zero): the cluster sum
    // carries its previous run on, and goes on counting from there.
    await gwB.stop();
    await startGateway({
      config: join(gwB.prefix, "kong.yml"),
      prefix: gwB.prefix,
      proxy: new URL(gwB.proxyUrl).host,
      admin: new URL(gwB.adminUrl).host,
      workers: 2,
      plugins: ["bundled", ...FIXTURE_PLUGINS].join(","),
      luaPackagePath: FIXTURE_LUA_PATH,
    });
    const restartedB = await scrape(gwB.adminUrl + "/redis-metrics");
    expect(sum(restartedB, "kong_http_requests_total", match)).toBe(0);
    const carried = await scrape(clusterUrl);
    expect(sum(carried, "kong_http_requests_total", match)).toBe(10);
    expect((await hit(gwB.proxyUrl + "/other/status/202")).status).toBe(202);
    const grown = await scrapeUntil(clusterUrl, (x) => sum(x, "kong_http_requests_total", match) >= 11);
    expect(sum(grown, "kong_http_requests_total", match)).toBe(11);
    expect(sum(grown, "krs_cluster_nodes")).toBe(2);

    expect(gwB.unexpectedErrors()).toEqual([]);
    await gwB.stop();
    // Snapshot lifetime: 3 push intervals (6 s).
    const after = await scrapeUntil(clusterUrl, (x) => sum(x, "krs_cluster_nodes") === 1, 60);
    expect(sum(after, "krs_cluster_nodes")).toBe(1);
    expect(sum(after, "kong_http_requests_total", match)).toBe(6);
  }, 60_000);

});

describe("cluster-wide, unconfigured", () => {
  it("answers 409 when no instance pushes, naming why", async () => {
    const gw = await gateway({ _format_version: "3.0", plugins: [{ name: "redis-metrics", config: { status_code_metrics: true } }] });
    const res = await hit(gw.adminUrl + "/redis-metrics/cluster");
    expect(res.status).toBe(409);
    expect(JSON.parse(res.body).message).toMatch(/push_interval/);
    expect(gw.unexpectedErrors()).toEqual([]);
    await gw.stop();
  }, 30_000);
});

describe("series cap", () => {
  it("10,000 distinct consumers with per_consumer: series stay under max_series, every update counted or dropped", async () => {
    const consumers = Array.from({ length: 10_000 }, (_, i) => ({ username: `c${i}` }));
    const gw = await gateway({
      _format_version: "3.0",
      consumers,
      services: [{ name: "svc", url: `http://127.0.0.1:${up.port}`, routes: [{ name: "r", paths: ["/r"], plugins: [{ name: "krs-test-auth" }] }] }],
      plugins: [{ name: "redis-metrics", config: { status_code_metrics: true, per_consumer: true, suite_metrics: false, max_series: 1000 } }],
    });
    const url = gw.adminUrl + "/redis-metrics";
    const first = await scrape(url);
    const baseline = sum(first, "krs_metrics_series");
    const parallel = 32;
    for (let start = 0; start < consumers.length; start += parallel) {
      const batch: Promise<Res>[] = [];
      for (let i = start; i < Math.min(start + parallel, consumers.length); i++) batch.push(hit(`${gw.proxyUrl}/r/status/200`, { headers: { "x-consumer": `c${i}` } }));
      for (const r of await Promise.all(batch)) expect(r.status).toBe(200);
    }
    await scrapeUntil(url, (x) => sum(x, "kong_http_requests_total") + sum(x, "krs_metrics_series_dropped_total") >= 10_000);
    await sleep(1200);
    const settled = await scrape(url);
    const counted = sum(settled, "kong_http_requests_total");
    const dropped = sum(settled, "krs_metrics_series_dropped_total");
    expect(sum(settled, "krs_metrics_series_max")).toBe(1000);
    expect(sum(settled, "krs_metrics_series")).toBe(1000);
    expect(settled.filter((x) => x.name === "kong_http_requests_total").length).toBe(1000 - baseline);
    expect(counted + dropped).toBe(10_000);
    expect(dropped).toBe(10_000 - (1000 - baseline));
    const bytes = sum(settled, "kong_memory_lua_shared_dict_bytes", { shared_dict: "krs_metrics" });
    console.log(`series memory at the cap: krs_metrics dict ${bytes} bytes for ${sum(settled, "krs_metrics_series")} series (${Math.round(bytes / 1000)} B/series)`);
    expect(bytes).toBeLessThan(1000 * 1024);
    expect(gw.unexpectedErrors()).toEqual([]);
    await gw.stop();
  }, 180_000);
});

describe("docs/grafana", () => {
  it("the dashboard references only metrics the plugin exports", () => {
    const dashboard = JSON.parse(readFileSync(join(ROOT, "docs", "grafana", "redis-metrics.json"), "utf8"));
    const exported = new Set<string>();
    const source = readFileSync(join(ROOT, "src", "plugins", "redis-metrics", "metrics.ts"), "utf8");
    for (const m of source.matchAll(/def\("([a-z_]+)", "(counter|gauge|histogram)"/g)) {
      exported.add(m[1]!);
      if (m[2] === "histogram") for (const suffix of ["_bucket", "_count", "_sum"]) exported.add(m[1]! + suffix);
    }
    const exprs: string[] = [];
    const walk = (node: unknown): void => {
      if (Array.isArray(node)) node.forEach(walk);
      else if (node !== null && typeof node === "object") {
        for (const [k, v] of Object.entries(node)) {
          if (k === "expr" && typeof v === "string") exprs.push(v);
          else walk(v);
        }
      }
    };
    walk(dashboard);
    expect(exprs.length).toBeGreaterThanOrEqual(4);
    const used = new Set<string>();
    for (const e of exprs) for (const m of e.matchAll(/\b(krs_[a-z_]+|kong_[a-z_]+)\b/g)) used.add(m[1]!);
    expect([...used].filter((name) => !exported.has(name))).toEqual([]);
    for (const wanted of ["krs_cache_requests_total", "krs_limit_decisions_total", "krs_redis_latency_seconds_bucket", "krs_redis_circuit_open"]) expect(used.has(wanted), wanted).toBe(true);
  });
});

describe("subscriber and usage-flush health", () => {
  it("gauges each worker's key-auth invalidation subscriber: subscribed, and subscribed again after Redis drops it", async () => {
    const url = gwA.adminUrl + "/redis-metrics";
    const match = { plugin: "redis-key-auth", redis: `127.0.0.1:${authRedis.port}/0` };
    const workersUp = (x: Sample[]) => x.filter((s) => s.name === "krs_pubsub_subscribed" && s.labels.plugin === match.plugin && s.labels.redis === match.redis && s.value === 1).length;
    for (let i = 0; i < 10; i++) await hit(gwA.proxyUrl + "/auth/anything");
    const before = await scrapeUntil(url, (x) => workersUp(x) === 2);
    expect(workersUp(before)).toBe(2);
    const subscribesBefore = sum(before, "krs_pubsub_subscribes_total", match);
    expect(subscribesBefore).toBeGreaterThanOrEqual(2);
    const control = new Redis({ port: authRedis.port, lazyConnect: true });
    await control.connect();
    await control.call("CLIENT", "KILL", "TYPE", "pubsub");
    await control.quit();
    const after = await scrapeUntil(url, (x) => sum(x, "krs_pubsub_subscribes_total", match) >= subscribesBefore + 2 && workersUp(x) === 2);
    expect(sum(after, "krs_pubsub_subscribes_total", match)).toBeGreaterThanOrEqual(subscribesBefore + 2);
    expect(workersUp(after)).toBe(2);
    // The pool name's credential part never reaches a label.
    for (const s of after) if (s.name.startsWith("krs_pubsub")) expect(s.labels.redis).toMatch(/^127\.0\.0\.1:\d+\/0$/);
  }, 60_000);

  it("gauges redis-usage's flush backlog and its drops while its Redis is unreachable", async () => {
    const gwU = await gateway({
      _format_version: "3.0",
      services: [{ name: "svc", url: `http://127.0.0.1:${up.port}`, routes: [{ name: "metered", paths: ["/metered"], plugins: [{ name: "redis-usage", config: { max_pending: 1, redis: { port: 1, timeout: 100 } } }] }] }],
      plugins: [{ name: "redis-metrics", config: {} }],
    });
    for (let i = 0; i < 20; i++) expect((await hit(gwU.proxyUrl + `/metered/anything/${i}`, { headers: { "x-forwarded-for": `10.0.0.${i}` } })).status).toBe(200);
    const url = gwU.adminUrl + "/redis-metrics";
    const samples = await scrapeUntil(url, (x) => sum(x, "krs_usage_flush_backlog") >= 1 && sum(x, "krs_usage_dropped_total") >= 1);
    expect(sum(samples, "krs_usage_flush_backlog")).toBeGreaterThanOrEqual(1);
    // One counter set per worker fits under max_pending: 1; every other request's updates are dropped.
    expect(sum(samples, "krs_usage_flush_backlog")).toBeLessThanOrEqual(2);
    expect(sum(samples, "krs_usage_dropped_total")).toBeGreaterThanOrEqual(18);
  }, 60_000);
});

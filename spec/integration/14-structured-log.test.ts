/**
 * structured-log through a real gateway, real Redis (with a password) and a real upstream:
 * every line parses, its fields match what happened (serialize's shape, request_id =
 * X-Kong-Request-Id, the correlation id kept or generated and forwarded upstream, a
 * rate-limit decision, a cache Hit, an auth failure's plugin and reason, custom fields),
 * secrets appear nowhere (file, stream, error log), bad header values still give one valid
 * line each, reopen follows logrotate, an unopenable file and a Redis that is down leave
 * requests unaffected with one report per interval. A reload that replaces a sink (issue
 * 14) flushes and closes the old one: its lines reach the old file / stream at once.
 */
import { chmodSync, existsSync, readdirSync, readFileSync, readlinkSync, renameSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pretty } from "../../src/cli/logs.js";
import { runKrs } from "../helpers/krs-main.js";
import { gateway, getJson, ON_KONG, startRedis, stopAll, tempDir, upstream, type RedisServer, type TestGateway } from "../helpers/services.js";

const REDIS_PASSWORD = "structured-log-redis-pw-4b1d";
const TENANT_KEY_HEADER = "x-tenant-key";
const BEARER = "Bearer eyJ-structured-log-secret-token-91ab";
const COOKIE = "session=structured-log-cookie-secret-77";
const STREAM = "sl-spec";
const STREAM_KEY = `krs:structured-log:v1:{${STREAM}}:stream`;

let redis: RedisServer;
let client: Redis;
let gw: TestGateway;
let logFile: string;
let apiKey: string;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function lines(file = logFile): string[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8").split("\n").filter((l) => l !== "");
}

/** Every line parsed; fails on the first one that is not JSON. */
function entries(file = logFile): any[] {
  return lines(file).map((l, i) => {
    try {
      return JSON.parse(l);
    } catch (e) {
      throw new Error(`line ${i + 1} is not JSON: ${l.slice(0, 200)}`);
    }
  });
}

/** The line of the request whose X-Kong-Request-Id is `id`, once flushed. */
async function lineOf(id: string, file = logFile): Promise<any> {
  for (let i = 0; i < 100; i++) {
    const found = entries(file).find((e) => e.request_id === id);
    if (found !== undefined) return found;
    await sleep(50);
  }
  throw new Error(`no line for request ${id}`);
}

async function get(path: string, headers: Record<string, string> = {}): Promise<{ status: number; id: string; body: any; headers: Headers }> {
  const res = await getJson(`${gw.proxyUrl}${path}`, { headers });
  return { status: res.status, id: res.headers.get("x-kong-request-id") ?? "", body: res.body, headers: res.headers };
}

/** Sends raw bytes as a request (for header values fetch refuses to send) and returns the status line. */
function raw(request: Buffer): Promise<string> {
  const url = new URL(gw.proxyUrl);
  return new Promise((resolve, reject) => {
    const s = connect(Number(url.port), url.hostname);
    let data = "";
    s.on("data", (c) => (data += c.toString("latin1")));
    s.on("end", () => resolve(data));
    s.on("error", reject);
    s.write(request);
  });
}

const redisConf = () => ({ port: redis.port, password: REDIS_PASSWORD });

beforeAll(async () => {
  redis = await startRedis(["--requirepass", REDIS_PASSWORD]);
  client = new Redis({ port: redis.port, password: REDIS_PASSWORD, lazyConnect: true });
  // It reconnects by itself once the Redis-down test has started Redis again.
  client.on("error", () => undefined);
  await client.connect();
  const up = await upstream();
  const dir = tempDir("slog");
  // nginx's workers run as another user than this (root) test.
  chmodSync(dir, 0o777);
  logFile = join(dir, "requests.log");
  gw = await gateway({
    _format_version: "3.0",
    services: [{
      name: "svc",
      url: `http://127.0.0.1:${up.port}`,
      routes: [
        { name: "open", paths: ["/open"] },
        { name: "limited", paths: ["/limited"], plugins: [{ name: "redis-rate-limit", config: { minute: 1, limit_by: "ip", redis: redisConf() } }] },
        { name: "private", paths: ["/private"], plugins: [{ name: "redis-key-auth", config: { key_names: [TENANT_KEY_HEADER], redis: redisConf() } }] },
        { name: "cached", paths: ["/cached"], plugins: [{ name: "redis-cache", config: { cache_ttl: 30, redis: redisConf() } }] },
        {
          name: "streamed",
          paths: ["/streamed"],
          plugins: [{ name: "structured-log", config: { sink: "redis-stream", stream_key: STREAM, flush_interval: 0.05, max_queue: 50, redis: redisConf() } }],
        },
        {
          name: "unwritable",
          paths: ["/unwritable"],
          plugins: [{ name: "structured-log", config: { path: join(dir, "missing-dir", "x.log"), flush_interval: 0.05 } }],
        },
      ],
    }],
    plugins: [{
      name: "structured-log",
      config: {
        path: logFile,
        reopen: true,
        flush_interval: 0.05,
        correlation_header: "X-Request-ID",
        custom_fields: [
          { name: "env", value: "spec" },
          { name: "agent", request_header: "user-agent" },
          { name: "leak", request_header: "authorization" },
          { name: "upstream_type", response_header: "content-type" },
        ],
      },
    }],
    consumers: [{ username: "alice" }],
  });
  const created = await getJson(`${gw.adminUrl}/redis-key-auth/keys`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ consumer: "alice" }),
  });
  expect(created.status).toBe(201);
  apiKey = created.body.key;
}, 60_000);

afterAll(async () => {
  client?.disconnect();
  await stopAll();
});

describe("the line", () => {
  it("has Kong's serialize() shape, request_id = X-Kong-Request-Id, the correlation id forwarded upstream", async () => {
    const res = await get("/open/anything?x=1", { "x-request-id": "client-corr-1", "user-agent": "spec-agent" });
    expect(res.status).toBe(200);
    const line = await lineOf(res.id);
    expect(res.id).toMatch(/^[0-9a-f]{32}$/);
    expect(line.request.id).toBe(res.id);
    expect(line.event).toBe("request");
    expect(line.level).toBe("info");
    expect(Date.parse(line.timestamp)).toBeGreaterThan(Date.now() - 60_000);
    expect(line.request.method).toBe("GET");
    expect(line.request.uri).toBe("/open/anything?x=1");
    expect(line.request.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/open\/anything\?x=1$/);
    expect(line.request.querystring).toEqual({ x: "1" });
    expect(line.request.headers["user-agent"]).toBe("spec-agent");
    expect(line.response.status).toBe(200);
    expect(line.response.size).toBeGreaterThan(0);
    expect(line.route.name).toBe("open");
    expect(line.service.name).toBe("svc");
    expect(line.upstream_uri).toBe("/anything?x=1");
    expect(line.upstream_status).toBe("200");
    expect(line.tries).toHaveLength(1);
    expect(line.tries[0]).toMatchObject({ ip: "127.0.0.1" });
    expect(line.client_ip).toBe("127.0.0.1");
    expect(line.started_at).toBeGreaterThan(Date.now() - 60_000);
    // Both are nginx times in whole milliseconds, measured apart: 1 ms of rounding either way.
    expect(line.latencies.request).toBeGreaterThanOrEqual(line.latencies.proxy - 1);
    expect(line.latencies.proxy).toBeGreaterThanOrEqual(0);
    // Kept as the client sent it, and what the upstream saw.
    expect(line.correlation_id).toBe("client-corr-1");
    expect(res.body.headers["x-request-id"]).toBe("client-corr-1");
    expect(line.env).toBe("spec");
    expect(line.agent).toBe("spec-agent");
    expect(line.upstream_type).toMatch(/application\/json/);
    expect(line.krs.redis).toEqual({ round_trips: 0, time_ms: 0, errors: 0 });
  });

  it("generates a correlation id (UUID) when the client sent none, the same upstream and in the line", async () => {
    const res = await get("/open/anything");
    const line = await lineOf(res.id);
    expect(line.correlation_id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(res.body.headers["x-request-id"]).toBe(line.correlation_id);
  });

  it("shows a rate-limit decision, with the Redis round trips of the plugin", async () => {
    const first = await get("/limited/anything");
    const second = await get("/limited/anything");
    expect([first.status, second.status]).toEqual([200, 429]);
    const admitted = await lineOf(first.id);
    const refused = await lineOf(second.id);
    expect(admitted.krs.limits).toEqual([expect.objectContaining({ plugin: "redis-rate-limit", kind: "rate", admitted: true, source: "redis", limit: 1, remaining: 0 })]);
    expect(refused.krs.limits[0]).toMatchObject({ plugin: "redis-rate-limit", admitted: false });
    expect(refused.level).toBe("warn");
    // Kong 3.9 prepares the balancer data (tries = {}) once a route matched, before the
    // plugins: a request refused in access has an empty `tries`, which cjson writes {}.
    expect(refused.tries).toEqual({});
    expect(admitted.krs.redis.round_trips).toBeGreaterThanOrEqual(1);
    expect(admitted.krs.redis_by_plugin["redis-rate-limit"].round_trips).toBeGreaterThanOrEqual(1);
  });

  it("shows a cache Miss then Hit", async () => {
    const miss = await get("/cached/anything?c=1");
    let hit = await get("/cached/anything?c=1");
    for (let i = 0; i < 20 && hit.headers.get("x-cache-status") !== "Hit"; i++) {
      await sleep(50);
      hit = await get("/cached/anything?c=1");
    }
    expect((await lineOf(miss.id)).krs.cache).toEqual({ plugin: "redis-cache", status: "Miss" });
    expect((await lineOf(hit.id)).krs.cache).toEqual({ plugin: "redis-cache", status: "Hit" });
  });

  it("shows an auth failure's plugin and reason, and the consumer of a success", async () => {
    const missing = await get("/private/anything");
    const unknown = await get("/private/anything", { [TENANT_KEY_HEADER]: "not-a-key" });
    const ok = await get("/private/anything", { [TENANT_KEY_HEADER]: apiKey });
    expect([missing.status, unknown.status, ok.status]).toEqual([401, 401, 200]);
    expect((await lineOf(missing.id)).krs.auth).toMatchObject({ plugin: "redis-key-auth", result: "missing", reason: "No API key found in request" });
    expect((await lineOf(unknown.id)).krs.auth).toMatchObject({ plugin: "redis-key-auth", result: "unknown" });
    const success = await lineOf(ok.id);
    expect(success.krs.auth).toMatchObject({ plugin: "redis-key-auth", result: "ok" });
    expect(success.consumer.username).toBe("alice");
    expect(success.krs.auth.consumer_id).toBe(success.consumer.id);
  });
});

describe("redaction", () => {
  it("no key, token, cookie or Redis password in the file, the stream or the error log", async () => {
    const sent = [
      await get(`/private/anything?${TENANT_KEY_HEADER}=${apiKey}&apikey=${apiKey}-q&keep=me`, { authorization: BEARER, cookie: COOKIE, "x-api-key": `${apiKey}-x` }),
      await get("/private/anything", { [TENANT_KEY_HEADER]: apiKey, "proxy-authorization": BEARER }),
      await get(`/streamed/anything?access_token=${apiKey}-stream`, { authorization: BEARER, cookie: COOKIE }),
      await get("/open/anything", { authorization: BEARER }),
    ];
    expect(sent.map((r) => r.status)).toEqual([200, 200, 200, 200]);
    const viaQuery = await lineOf(sent[0].id);
    expect(viaQuery.request.headers.authorization).toBe("[REDACTED]");
    expect(viaQuery.request.headers.cookie).toBe("[REDACTED]");
    expect(viaQuery.request.headers["x-api-key"]).toBe("[REDACTED]");
    // The route's redis-key-auth reads x-tenant-key: redacted though not in redact_headers.
    expect(viaQuery.request.querystring[TENANT_KEY_HEADER]).toBe("[REDACTED]");
    expect(viaQuery.request.querystring.apikey).toBe("[REDACTED]");
    expect(viaQuery.request.querystring.keep).toBe("me");
    expect(viaQuery.request.uri).toBe(`/private/anything?${TENANT_KEY_HEADER}=[REDACTED]&apikey=[REDACTED]&keep=me`);
    expect(viaQuery.upstream_uri).not.toContain(apiKey);
    expect((await lineOf(sent[1].id)).request.headers[TENANT_KEY_HEADER]).toBe("[REDACTED]");
    expect((await lineOf(sent[3].id)).leak).toBe("[REDACTED]");
    let streamed: string[] = [];
    for (let i = 0; i < 100 && !streamed.some((l) => l.includes(sent[2].id)); i++) {
      await sleep(50);
      streamed = (await client.xrange(STREAM_KEY, "-", "+")).map(([, fields]) => fields[1]);
    }
    expect(streamed.some((l) => l.includes(sent[2].id))).toBe(true);
    const everything = [readFileSync(logFile, "utf8"), streamed.join("\n"), gw.errorLog().join("\n")].join("\n");
    for (const secret of [apiKey, "structured-log-secret-token", "structured-log-cookie-secret", REDIS_PASSWORD]) expect(everything).not.toContain(secret);
    expect(gw.unexpectedErrors()).toEqual([]);
  });
});

describe("redaction past the querystring's 100 arguments", () => {
  it("a key sent as the 101st query argument is redacted in uri, url and upstream_uri too", async () => {
    const filler = Array.from({ length: 100 }, (_, i) => `a${i}=${i}`).join("&");
    const secret = `${apiKey}-arg101`;
    const sent = await get(`/open/anything?${filler}&apikey=${secret}`);
    expect(sent.status).toBe(200);
    const line = await lineOf(sent.id);
    expect(line.request.uri).toContain("apikey=[REDACTED]");
    expect(JSON.stringify(line)).not.toContain(secret);
  });
});

describe("krs logs tail", () => {
  const redisUrl = () => `redis://:${REDIS_PASSWORD}@127.0.0.1:${redis.port}/0`;
  const tailJson = async (...args: string[]) => {
    const r = await runKrs("logs", "tail", "--stream", STREAM, "--redis", redisUrl(), ...args);
    return { code: r.code, err: r.err, lines: r.out.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l)) };
  };
  const inStream = async (id: string) => {
    for (let i = 0; i < 100; i++) {
      if ((await client.xrange(STREAM_KEY, "-", "+")).some(([, f]) => f[1].includes(id))) return;
      await sleep(50);
    }
    throw new Error(`${id} never reached the stream`);
  };

  it("prints the last entries, oldest first, filtered by status, route and consumer", async () => {
    const ok = await get("/streamed/anything?tail=1");
    const failed = await get("/streamed/status/503");
    const missing = await get("/streamed/status/404");
    await inStream(missing.id);
    const last = await tailJson("--count", "3", "--json");
    expect(last.code).toBe(0);
    // Oldest first in stream order: workers flush on their own, so not always request order.
    expect(last.lines.map((l) => l.request_id).sort()).toEqual([ok.id, failed.id, missing.id].sort());
    const fiveXx = await tailJson("--status", "5xx");
    expect(fiveXx.lines.length).toBeGreaterThanOrEqual(1);
    expect(fiveXx.lines.every((l) => l.response.status >= 500 && l.response.status < 600)).toBe(true);
    expect(fiveXx.lines.at(-1).request_id).toBe(failed.id);
    expect((await tailJson("--status", "404", "--count", "1")).lines.map((l) => l.request_id)).toEqual([missing.id]);
    expect((await tailJson("--route", "streamed", "--count", "1")).lines[0].route.name).toBe("streamed");
    expect((await tailJson("--route", "open")).lines).toEqual([]);
    expect((await tailJson("--consumer", "alice")).lines).toEqual([]);
  });

  it("--follow prints new entries as they come (XREAD BLOCK); --group shares them between readers", async () => {
    const following = tailJson("--follow", "--count", "2");
    await sleep(300);
    const a = await get("/streamed/anything?follow=a");
    const b = await get("/streamed/anything?follow=b");
    const followed = await following;
    expect(followed.code).toBe(0);
    expect(followed.lines.map((l) => l.request_id).sort()).toEqual([a.id, b.id].sort());

    // The group starts at the stream's end; two readers of it each get one of two entries.
    const first = tailJson("--follow", "--group", "spec-readers", "--count", "1");
    await sleep(300);
    const c = await get("/streamed/anything?group=c");
    const d = await get("/streamed/anything?group=d");
    const firstLines = (await first).lines;
    await inStream(c.id);
    await inStream(d.id);
    const secondLines = (await tailJson("--follow", "--group", "spec-readers", "--count", "1")).lines;
    const got = [...firstLines, ...secondLines].map((l) => l.request_id);
    expect(got.sort()).toEqual([c.id, d.id].sort());
    const pending = (await client.xpending(STREAM_KEY, "spec-readers")) as [number, ...unknown[]];
    expect(pending[0]).toBe(0);
  });

  it("a line for a person: status, method, URI, route, latency, the suite's facts, request id", () => {
    const text = pretty({
      timestamp: "2026-12-02T01:02:03.456Z", request_id: "abc", response: { status: 429 }, request: { method: "GET", uri: "/x?apikey=[REDACTED]" },
      route: { name: "limited" }, consumer: { username: "alice" }, latencies: { request: 3 },
      krs: { redis: { round_trips: 1, time_ms: 0.4, errors: 0 }, limits: [{ kind: "rate", admitted: false }], auth: { plugin: "redis-key-auth", result: "ok" } },
    });
    expect(text).toBe("2026-12-02T01:02:03.456Z  429  GET /x?apikey=[REDACTED]  route=limited  consumer=alice  3ms  rate=refused  auth=redis-key-auth:ok  redis=1rt/0.4ms  abc");
  });

  it("a line for a person shows control bytes from the stream, never sends them to the terminal", () => {
    const esc = "\u001b";
    const text = pretty({
      timestamp: `t${esc}]0;owned\u0007`, request_id: `id${esc}[2J`, response: { status: 500 }, request: { method: "GET", uri: `/x${esc}[1A${esc}[2K\rfake line` },
      route: { name: `r${esc}[8m` }, consumer: { username: "mallory\u009b2J" }, latencies: { request: 1 },
      krs: { errors: [{ plugin: "p", message: `m${esc}[31m\u202e` }], auth: { plugin: "a", result: `ok${esc}c` } },
    });
    expect(text).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u202e]/);
    expect(text).toContain("/x\\u001b[1A\\u001b[2K\\u000dfake line");
    expect(text).toContain("consumer=mallory\\u009b2J");
  });

  it("refuses a bad status, --group without --follow, a bad stream name (exit 2)", async () => {
    for (const args of [["--status", "7xx"], ["--group", "g"], ["--stream", "a b"]]) {
      const r = await runKrs("logs", "tail", "--redis", redisUrl(), ...args);
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/^krs/);
    }
  });
});

describe("bad input", () => {
  it("quotes, backslashes, control bytes, invalid UTF-8 and huge headers: one valid JSON line per request", async () => {
    const before = lines().length;
    const weird = Buffer.concat([
      Buffer.from('GET /open/anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Weird: "quoted" \\back\\ \x01\x7f '),
      Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0xe2, 0x82]),
      Buffer.from(" caf\u00e9 \r\n\r\n", "utf8"),
    ]);
    // The demo upstream (Node) refuses control bytes with a 400: whatever the status, one line.
    const weirdStatus = Number(/^HTTP\/1\.1 (\d{3})/.exec(await raw(weird))?.[1]);
    expect(weirdStatus).toBeGreaterThanOrEqual(200);
    const big = Buffer.from(`GET /open/anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ${"a".repeat(64 * 1024)}\r\n\r\n`);
    expect(await raw(big)).toMatch(/^HTTP\/1\.1 (200|400|431|494)/);
    const sixteen = Buffer.from(`GET /open/anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ${"b\"\\".repeat(2500)}\r\n\r\n`);
    expect(await raw(sixteen)).toMatch(/^HTTP\/1\.1 200/);
    for (let i = 0; i < 100 && lines().length < before + 3; i++) await sleep(50);
    const added = lines().slice(before);
    expect(added).toHaveLength(3);
    const parsed = added.map((l) => JSON.parse(l));
    for (const l of added) expect(Buffer.from(l, "utf8").toString("utf8")).toBe(l);
    const weirdLine = parsed.find((p) => p.request.headers["x-weird"] !== undefined);
    expect(weirdLine.response.status).toBe(weirdStatus);
    expect(weirdLine.request.headers["x-weird"]).toContain('"quoted" \\back\\ \x01\x7f');
    expect(weirdLine.request.headers["x-weird"]).toContain("\ufffd");
    expect(weirdLine.request.headers["x-weird"]).toContain("caf\u00e9");
    expect(parsed.some((p) => p.request.headers["x-big"]?.length === 7500)).toBe(true);
  });

  it("a log file that cannot be opened: requests unaffected, one error per interval", async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) statuses.push((await get("/unwritable/anything")).status);
    expect(statuses.every((s) => s === 200)).toBe(true);
    await sleep(300);
    const reports = gw.errorLog().filter((l) => l.includes("could not open log file") && l.includes("missing-dir"));
    // 2 workers, each at most once per 10 s interval.
    expect(reports.length).toBeGreaterThanOrEqual(1);
    expect(reports.length).toBeLessThanOrEqual(2);
    expect(reports[0]).toMatch(/No such file or directory; \d+ log lines dropped since the last report/);
  });

  it("reopen: a file logrotate moved away is recreated, no line lost", async () => {
    const rotated = `${logFile}.1`;
    const a = await get("/open/anything?rotate=a");
    await lineOf(a.id);
    renameSync(logFile, rotated);
    const b = await get("/open/anything?rotate=b");
    const line = await lineOf(b.id);
    expect(line.request.querystring.rotate).toBe("b");
    expect(entries(rotated).some((e) => e.request_id === a.id)).toBe(true);
    expect(entries(rotated).some((e) => e.request_id === b.id)).toBe(false);
  });

  it("Redis down: requests unaffected, the queue bounded, drops counted and reported once per interval; queued lines sent once it is back", async () => {
    await client.del(STREAM_KEY);
    const port = redis.port;
    await redis.stop();
    const statuses: number[] = [];
    const ids: string[] = [];
    for (let i = 0; i < 150; i++) {
      const res = await get("/streamed/anything");
      statuses.push(res.status);
      ids.push(res.id);
    }
    expect(statuses.every((s) => s === 200)).toBe(true);
    await sleep(200);
    const reports = gw.errorLog().filter((l) => l.includes("[structured-log]") && l.includes(STREAM_KEY));
    // Once per worker and interval (10 s): 2 workers.
    expect(reports.length).toBeGreaterThanOrEqual(1);
    expect(reports.length).toBeLessThanOrEqual(2);
    for (const r of reports) expect(r).not.toContain(REDIS_PASSWORD);

    redis = await startRedis(["--requirepass", REDIS_PASSWORD], port);
    let streamed: any[] = [];
    for (let i = 0; i < 100 && streamed.length < 50; i++) {
      await sleep(50);
      streamed = (await client.xrange(STREAM_KEY, "-", "+").catch(() => [])).map(([, fields]) => JSON.parse(fields[1]));
    }
    // On the same keep-alive connection(s) as the outage's requests: the workers that dropped.
    let after = await get("/streamed/anything");
    for (let i = 0; i < 9; i++) after = await get("/streamed/anything");
    for (let i = 0; i < 100 && !streamed.some((e) => e.request_id === after.id); i++) {
      await sleep(50);
      streamed = (await client.xrange(STREAM_KEY, "-", "+")).map(([, fields]) => JSON.parse(fields[1]));
    }
    const fromOutage = streamed.filter((e) => ids.includes(e.request_id));
    // Each worker kept max_queue (50) lines and dropped the rest; none twice.
    expect(fromOutage.length).toBeGreaterThanOrEqual(50);
    expect(fromOutage.length).toBeLessThanOrEqual(100);
    expect(new Set(fromOutage.map((e) => e.request_id)).size).toBe(fromOutage.length);
    // Lines written since carry their worker's drop count: 150 requests, at most 100 kept.
    const counted = Math.max(0, ...streamed.map((e) => e.krs.log_dropped ?? 0));
    expect(counted).toBeGreaterThanOrEqual(25);
    expect(counted).toBeLessThanOrEqual(150 - fromOutage.length);
  }, 30_000);
});

describe("a reload that replaces the sinks (issue 14)", () => {
  /** The files the gateway's workers hold open (from /proc: the spec runs on the gateway's host). */
  function openByWorkers(prefix: string): string[] {
    const master = readFileSync(join(prefix, "logs", "nginx.pid"), "utf8").trim();
    const open: string[] = [];
    for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
      let status: string;
      try {
        status = readFileSync(`/proc/${pid}/status`, "utf8");
      } catch {
        continue;
      }
      if (status.match(/^PPid:\s+(\d+)$/m)?.[1] !== master) continue;
      for (const fd of readdirSync(`/proc/${pid}/fd`)) {
        try {
          open.push(readlinkSync(`/proc/${pid}/fd/${fd}`));
        } catch {
          // closed meanwhile
        }
      }
    }
    return open;
  }

  async function eventually(check: () => boolean | Promise<boolean>): Promise<void> {
    for (let i = 0; i < 100 && !(await check()); i++) await sleep(50);
  }

  it.skipIf(ON_KONG)("lines queued before it reach the old file and stream at once, later ones the new; the old file is closed, the plugin's removal flushes and closes too", async () => {
    const up = await upstream();
    const dir = tempDir("slog-reload");
    chmodSync(dir, 0o777);
    const [oldFile, newFile] = [join(dir, "old.log"), join(dir, "new.log")];
    const [oldStream, newStream] = ["sl-reload-old", "sl-reload-new"].map((n) => `krs:structured-log:v1:{${n}}:stream`);
    // flush_interval 60 and a batch far above the requests sent: nothing is written before
    // the reload, and without the fix not for a minute after it.
    const held = { flush_interval: 60, batch_max: 10000 };
    const configWith = (path: string, stream: string) => ({
      _format_version: "3.0",
      services: [{
        name: "svc",
        url: `http://127.0.0.1:${up.port}`,
        routes: [
          { name: "filed", paths: ["/filed"], plugins: [{ name: "structured-log", config: { path, ...held } }] },
          { name: "streamed", paths: ["/streamed"], plugins: [{ name: "structured-log", config: { sink: "redis-stream", stream_key: stream, ...held, redis: redisConf() } }] },
        ],
      }],
    });
    await client.del(oldStream, newStream);
    const g = await gateway(configWith(oldFile, "sl-reload-old"), { workers: 2 });
    const send = async (route: string, n: number) => {
      const ids: string[] = [];
      for (let i = 0; i < n; i++) {
        const res = await fetch(`${g.proxyUrl}/${route}/anything?i=${i}`);
        await res.text();
        expect(res.status).toBe(200);
        ids.push(res.headers.get("x-kong-request-id") ?? "");
      }
      return ids;
    };
    const streamIds = async (key: string) => (await client.xrange(key, "-", "+")).map(([, f]) => JSON.parse(f[1]).request_id as string);
    const post = async (config: object) => {
      const res = await fetch(`${g.adminUrl}/config`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(config) });
      expect(res.status).toBe(201);
    };

    const beforeFile = await send("filed", 6);
    const beforeStream = await send("streamed", 6);
    await sleep(200);
    expect(lines(oldFile)).toHaveLength(0);
    expect(await client.exists(oldStream)).toBe(0);

    await post(configWith(newFile, "sl-reload-new"));
    // Every worker adopts the config within a second (its sync timer) and flushes the old sinks.
    await eventually(async () => lines(oldFile).length === 6 && (await streamIds(oldStream)).length === 6);
    expect(entries(oldFile).map((e) => e.request_id).sort()).toEqual([...beforeFile].sort());
    expect((await streamIds(oldStream)).sort()).toEqual([...beforeStream].sort());
    expect(await client.ttl(oldStream)).toBeGreaterThan(0);
    await eventually(() => !openByWorkers(g.prefix).includes(oldFile));
    expect(openByWorkers(g.prefix)).not.toContain(oldFile);

    const afterFile = await send("filed", 3);
    await send("streamed", 3);
    // The new sinks hold their lines (flush_interval 60) until the next change: removing the plugin.
    await post({ ...configWith(newFile, "sl-reload-new"), services: [{ name: "svc", url: `http://127.0.0.1:${up.port}`, routes: [{ name: "filed", paths: ["/filed"] }] }] });
    await eventually(async () => lines(newFile).length === 3 && (await streamIds(newStream)).length === 3);
    expect(entries(newFile).map((e) => e.request_id).sort()).toEqual([...afterFile].sort());
    expect(await streamIds(newStream)).toHaveLength(3);
    expect(lines(oldFile)).toHaveLength(6);
    expect(await streamIds(oldStream)).toHaveLength(6);
    await eventually(() => !openByWorkers(g.prefix).includes(newFile));
    expect(openByWorkers(g.prefix)).not.toContain(newFile);
    expect(g.unexpectedErrors()).toEqual([]);
  }, 30_000);
});

/**
 * redis-cache through real gateways (2 nodes x 2 workers) on one real Redis: hit, miss
 * and bypass for every filter, the cache key (query, case, vary_headers, a response's
 * Vary, consumers), Cache-Control, the stampede lock (100 concurrent requests to a cold
 * key with a slow upstream reach it once; uncacheable fills release the waiters at
 * once), refresh-ahead, sliding TTL, L1, purge of one key and of all, encryption (the
 * Redis value holds no plaintext; a corrupted value is a miss), max_body_size, hop-by-hop
 * headers, HEAD (never stored), Server and Via on hits, headers other plugins add (never
 * stored), only-if-cached and min-fresh, the lock's TTL and a holder whose upstream times
 * out, and a Redis that is down. Also: requests the key cannot hold (more than
 * 100 query arguments or headers, Authorization let in as an anonymous consumer) are
 * bypassed; an encrypted entry copied onto another key is a miss; content types with
 * parameters; the writer's queue bound under a slow Redis.
 */
import { createServer, type Server } from "node:http";
import { connect, createServer as createTcpServer, type AddressInfo, type Server as TcpServer, type Socket } from "node:net";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BACKENDS, redisBackend } from "../helpers/backends.js";
import { freePort, gateway, startRedis, stopAll, upstream, type RedisServer, type TestGateway } from "../helpers/services.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- the origin

/**
 * The upstream behind most routes. The query decides the response: status, ct (content
 * type), delay (ms), cc (Cache-Control), vary, expires, cookie=1 (Set-Cookie), size (a body
 * of that many "x"), chunked=1 (no Content-Length). Otherwise a JSON body echoing the
 * request with `n`, the number of requests this path has seen; server (a Server header).
 * Hits are counted per path, and per path and method.
 */
interface Origin {
  port: number;
  hits(path: string, method?: string): number;
  close(): Promise<void>;
}

async function startOrigin(): Promise<Origin> {
  const hits = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://origin");
    const q = url.searchParams;
    const n = (hits.get(url.pathname) ?? 0) + 1;
    hits.set(url.pathname, n);
    hits.set(`${req.method} ${url.pathname}`, (hits.get(`${req.method} ${url.pathname}`) ?? 0) + 1);
    const reply = () => {
      const headers: Record<string, string> = { "Content-Type": q.get("ct") ?? "application/json", "X-Origin-N": String(n), "X-Origin-Path": url.pathname };
      if (q.has("cc")) headers["Cache-Control"] = q.get("cc")!;
      if (q.has("vary")) headers["Vary"] = q.get("vary")!;
      if (q.has("expires")) headers["Expires"] = q.get("expires")!;
      if (q.get("cookie") === "1") headers["Set-Cookie"] = "session=abc";
      if (q.has("server")) headers["Server"] = q.get("server")!;
      const body = q.has("size")
        ? "x".repeat(Number(q.get("size")))
        : JSON.stringify({
            path: url.pathname,
            query: Object.fromEntries(q),
            n,
            lang: req.headers["accept-language"] ?? null,
            consumer: req.headers["x-consumer"] ?? null,
            method: req.method,
          });
      if (q.get("chunked") !== "1") headers["Content-Length"] = String(Buffer.byteLength(body));
      res.writeHead(Number(q.get("status") ?? 200), headers);
      if (q.get("chunked") === "1") {
        // Two writes: a chunked body, as upstreams that stream send it.
        const half = Math.floor(body.length / 2);
        res.write(body.slice(0, half));
        res.end(body.slice(half));
      } else {
        res.end(req.method === "HEAD" ? undefined : body);
      }
    };
    const delay = Number(q.get("delay") ?? 0);
    if (delay > 0) setTimeout(reply, delay);
    else reply();
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as AddressInfo).port,
    hits: (path, method) => hits.get(method === undefined ? path : `${method} ${path}`) ?? 0,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}

// ---------------------------------------------------------------- setup

let redis: RedisServer;
/** redis-rate-limit's own Redis on the /rl route, stopped by a test. */
let rlRedis: RedisServer;
let control: Redis;
let origin: Origin;
let demoHits: () => Promise<Record<string, number>>;
let gwA: TestGateway;
let gwB: TestGateway;
let demoUrl: string;
/** One worker: every request sees the same L1. */
let gw1: TestGateway;
let seq = 0;
/** A path segment no other test uses. */
const uniq = (label: string) => `${label}-${++seq}-${Date.now()}`;

const ENCRYPTION_KEY = "correct horse battery staple";

function route(name: string, config: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return {
    name,
    paths: [`/${name}`],
    plugins: [{ name: "redis-cache", config: { redis: { port: redis.port }, ...config } }],
    ...extra,
  };
}

beforeAll(async () => {
  redis = await startRedis();
  rlRedis = await startRedis();
  control = new Redis({ port: redis.port });
  origin = await startOrigin();
  const demo = await upstream();
  demoUrl = `http://127.0.0.1:${demo.port}`;
  demoHits = async () => (await (await fetch(`http://127.0.0.1:${demo.port}/__hits`)).json()) as Record<string, number>;
  const config = {
    _format_version: "3.0",
    services: [
      {
        name: "origin",
        url: `http://127.0.0.1:${origin.port}`,
        routes: [
          route("basic", {}),
          route("nol1", { l1_ttl: 0 }),
          route("filters", { l1_ttl: 0, content_type: ["application/json", "text/*"] }),
          route("cc", { l1_ttl: 0, cache_control: true }),
          route("vq", { l1_ttl: 0, vary_query_params: ["a"] }),
          route("case", { l1_ttl: 0, ignore_uri_case: true }),
          route("vh", { l1_ttl: 0, vary_headers: ["Accept-Language"] }),
          {
            name: "auth",
            paths: ["/auth"],
            plugins: [{ name: "krs-test-auth" }, { name: "redis-cache", config: { l1_ttl: 0, redis: { port: redis.port } } }],
          },
          {
            // An Authorization header key-auth does not know: let in as the anonymous consumer.
            name: "anon",
            paths: ["/anon"],
            plugins: [
              { name: "redis-key-auth", config: { anonymous: "anonymous-caller", redis: { port: redis.port } } },
              { name: "redis-cache", config: { l1_ttl: 0, redis: { port: redis.port } } },
            ],
          },
          {
            name: "shared-auth",
            paths: ["/shared-auth"],
            plugins: [{ name: "krs-test-auth" }, { name: "redis-cache", config: { l1_ttl: 0, cache_per_consumer: false, redis: { port: redis.port } } }],
          },
          route("refresh", { l1_ttl: 0, cache_ttl: 2, refresh_ahead: 0.5 }),
          route("sliding", { l1_ttl: 0, cache_ttl: 2, refresh_ahead: 0, sliding_ttl: true }),
          route("fixed", { l1_ttl: 0, cache_ttl: 2, refresh_ahead: 0 }),
          route("enc", { l1_ttl: 0, encryption_key: ENCRYPTION_KEY }),
          route("small", { l1_ttl: 0, max_body_size: 100, content_type: ["*"] }),
          {
            name: "rl",
            paths: ["/rl"],
            plugins: [
              { name: "redis-rate-limit", config: { minute: 1000, redis: { port: rlRedis.port, timeout: 200 } } },
              { name: "redis-cache", config: { l1_ttl: 0, redis: { port: redis.port } } },
            ],
          },
        ],
      },
      {
        // The upstream's answers take longer than this service waits for them.
        name: "impatient",
        url: `http://127.0.0.1:${origin.port}`,
        read_timeout: 300,
        retries: 0,
        routes: [route("lockfail", { l1_ttl: 0, lock_timeout: 1000 })],
      },
      {
        name: "demo",
        url: `http://127.0.0.1:${demo.port}`,
        routes: [route("stampede", {})],
      },
    ],
    consumers: [{ username: "alice" }, { username: "bob" }, { username: "anonymous-caller" }],
  };
  // One after the other: a gateway still starting when another fails would outlive afterAll.
  gwA = await gateway(config);
  gwB = await gateway(config);
  gw1 = await gateway(config, { workers: 1 });
}, 60_000);

afterAll(async () => {
  control?.disconnect();
  await origin?.close();
  await stopAll();
});

// ---------------------------------------------------------------- helpers

interface Res {
  status: number;
  headers: Headers;
  cache: string | null;
  key: string | null;
  text: string;
  json: any;
}

async function get(path: string, init: RequestInit = {}, gw: TestGateway = gwA): Promise<Res> {
  const res = await fetch(`${gw.proxyUrl}${path}`, init);
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, cache: res.headers.get("x-cache-status"), key: res.headers.get("x-cache-key"), text, json };
}

async function generation(): Promise<string> {
  return (await control.get("krs:redis-cache:v1:{ns}:generation")) ?? "0";
}

async function entryKey(cacheKey: string): Promise<string> {
  return `krs:redis-cache:v1:{${await generation()}.${cacheKey}}:entry`;
}

/** Waits until the entry for `cacheKey` is in Redis (stores run in a timer after the response). */
async function stored(cacheKey: string | null): Promise<string> {
  expect(cacheKey).toMatch(/^[0-9a-f]{64}$/);
  const key = await entryKey(cacheKey!);
  for (let i = 0; i < 100; i++) {
    if ((await control.exists(key)) === 1) return key;
    await sleep(20);
  }
  throw new Error(`entry ${key} was never stored`);
}

/** How many stored entries (any key) are responses for a path containing `id` (plain values only). */
async function entriesFor(id: string): Promise<number> {
  let n = 0;
  for (const key of await control.keys("krs:redis-cache:v1:*:entry")) {
    if (((await control.get(key)) ?? "").includes(`\nX-Origin-Path:/${id}\n`)) n++;
  }
  return n;
}

/** The fill lock of a key is gone (its holder gave it back). */
async function unlocked(cacheKey: string | null): Promise<void> {
  const key = `krs:redis-cache:v1:{${await generation()}.${cacheKey}}:fill`;
  for (let i = 0; i < 100; i++) {
    const v = await control.get(key);
    if (v === null || v === "!") return;
    await sleep(20);
  }
  throw new Error(`lock ${key} was never released`);
}

// ---------------------------------------------------------------- tests

describe("hit and miss", () => {
  it("misses once, then serves the stored response with Age and the same key", async () => {
    const p = `/nol1/${uniq("basic")}?x=1`;
    const first = await get(p);
    expect(first.status).toBe(200);
    expect(first.cache).toBe("Miss");
    await stored(first.key);
    const second = await get(p);
    expect(second.cache).toBe("Hit");
    expect(second.key).toBe(first.key);
    expect(second.text).toBe(first.text);
    expect(second.headers.get("content-type")).toBe("application/json");
    expect(second.headers.get("x-origin-n")).toBe("1");
    expect(Number(second.headers.get("age"))).toBeGreaterThanOrEqual(0);
    // The other node reads the same entry from Redis.
    const other = await get(p, {}, gwB);
    expect(other.cache).toBe("Hit");
    expect(other.text).toBe(first.text);
    expect(origin.hits(new URL(`http://x${p}`).pathname.replace("/nol1", ""))).toBe(1);
  });

  it("serves from L1 without Redis while l1_ttl lasts, and only from Redis without L1", async () => {
    // /basic keeps L1 (5 s): with the Redis entry gone, the one-worker gateway that
    // stored it still serves it; another node has no copy and misses.
    const p = `/basic/${uniq("l1")}`;
    const first = await get(p, {}, gw1);
    expect(first.cache).toBe("Miss");
    const key = await stored(first.key);
    await control.del(key);
    for (let i = 0; i < 10; i++) {
      const hit = await get(p, {}, gw1);
      expect(hit.cache).toBe("Hit");
      expect(hit.text).toBe(first.text);
    }
    expect((await get(p, {}, gwB)).cache).toBe("Miss");

    const q = `/nol1/${uniq("nol1")}`;
    const a = await get(q);
    const qKey = await stored(a.key);
    expect((await get(q)).cache).toBe("Hit");
    await control.del(qKey);
    expect((await get(q)).cache).toBe("Miss");
  });

  it("never stores a HEAD response, so no GET (nor HEAD) is ever answered from one", async () => {
    const id = uniq("head");
    const p = `/nol1/${id}?size=30&ct=text/plain`;
    const head = await get(p, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.cache).toBe("Bypass");
    expect(head.key).toBeNull();
    const again = await get(p, { method: "HEAD" });
    expect(again.cache).toBe("Bypass");
    expect(origin.hits(`/${id}`, "HEAD")).toBe(2);
    await sleep(100);
    expect(await entriesFor(id)).toBe(0);
    // HEADs and GETs at once on a cold key: every GET gets the whole body.
    const mixed = await Promise.all(Array.from({ length: 10 }, (_, i) => get(p, { method: i % 2 === 0 ? "HEAD" : "GET" })));
    for (const [i, r] of mixed.entries()) {
      expect(r.status).toBe(200);
      if (i % 2 === 1) expect(r.text).toBe("x".repeat(30));
    }
    const body = await get(p);
    expect(body.cache).toBe("Hit");
    expect(body.text).toBe("x".repeat(30));
    expect(body.headers.get("content-length")).toBe("30");
    // The GET's is the only entry of this URL.
    expect(await entriesFor(id)).toBe(1);
    expect((await get(p, { method: "HEAD" })).cache).toBe("Bypass");
  });

  it("a hit replays the upstream's Server and the Via of the miss, as Kong does", async () => {
    for (const q of ["server=origin%2F1.0", "ct=application/json"]) {
      const p = `/nol1/${uniq("server")}?${q}`;
      const miss = await get(p);
      expect(miss.cache).toBe("Miss");
      await stored(miss.key);
      const hit = await get(p);
      expect(hit.cache).toBe("Hit");
      expect(hit.headers.get("server")).toBe(miss.headers.get("server"));
      expect(hit.headers.get("via")).toBe(miss.headers.get("via"));
      expect(miss.headers.get("via")).not.toBeNull();
      if (q.startsWith("server")) expect(hit.headers.get("server")).toBe("origin/1.0");
      // Proxied, as Kong's proxy-cache hit is (KONG_PROXIED): proxy latency, not response latency.
      expect(hit.headers.get("x-kong-proxy-latency")).toMatch(/^\d+$/);
      expect(hit.headers.get("x-kong-response-latency")).toBeNull();
    }
  });

  it("never stores hop-by-hop headers; a chunked response is replayed with a Content-Length", async () => {
    const p = `/nol1/${uniq("hop")}?size=20&chunked=1&ct=text/plain`;
    const first = await get(p);
    expect(first.cache).toBe("Miss");
    const key = await stored(first.key);
    const value = (await control.get(key))!;
    expect(value).toMatch(/^1\|300000\|\d+\|E\|200\n/);
    expect(value.toLowerCase()).not.toMatch(/\n(transfer-encoding|content-length|connection|keep-alive|x-kong-[a-z-]+):/);
    expect(value).toContain("\nX-Origin-N:1\n");
    const hit = await get(p);
    expect(hit.cache).toBe("Hit");
    expect(hit.headers.get("transfer-encoding")).toBeNull();
    expect(hit.headers.get("content-length")).toBe("20");
    expect(hit.text).toBe("x".repeat(20));
  });
});

/** Two requests, both Bypass, both reach the origin. */
async function twiceBypassed(path: string, init: RequestInit = {}, gw: TestGateway = gwA): Promise<void> {
  const originPath = new URL(`http://x${path}`).pathname.replace(/^\/[^/]+/, "");
  const before = origin.hits(originPath);
  const a = await get(path, init, gw);
  expect(a.cache).toBe("Bypass");
  await sleep(50);
  const b = await get(path, init, gw);
  expect(b.cache).toBe("Bypass");
  expect(origin.hits(originPath) - before).toBe(2);
}

/** A Miss that is stored, then a Hit. */
async function cached(path: string, init: RequestInit = {}, gw: TestGateway = gwA): Promise<void> {
  const a = await get(path, init, gw);
  expect(a.cache).toBe("Miss");
  await stored(a.key);
  expect((await get(path, init, gw)).cache).toBe("Hit");
}

/** `count` headers no key uses. */
function junkHeaders(count: number): Record<string, string> {
  const headers: Record<string, string> = {};
  for (let i = 0; i < count; i++) headers[`x-junk-${i}`] = "1";
  return headers;
}

describe("filters: what is not cached", () => {
  it("request_method: POST is bypassed, GET cached", async () => {
    await twiceBypassed(`/filters/${uniq("post")}`, { method: "POST", body: "x" });
    await cached(`/filters/${uniq("get")}`);
  });

  it("response_code: 500 bypassed, 404 cached", async () => {
    await twiceBypassed(`/filters/${uniq("s500")}?status=500`);
    await cached(`/filters/${uniq("s404")}?status=404`);
  });

  it("content_type: type/subtype with parameters ignored, type/* wildcards, others bypassed", async () => {
    await twiceBypassed(`/filters/${uniq("png")}?ct=image/png`);
    await twiceBypassed(`/filters/${uniq("nojson")}?ct=application/jsonx`);
    await cached(`/filters/${uniq("charset")}?ct=${encodeURIComponent("application/json; charset=utf-8")}`);
    await cached(`/filters/${uniq("html")}?ct=text/html`);
    await cached(`/small/${uniq("any")}?ct=image/png&size=10`);
  });

  it("Set-Cookie responses are never cached", async () => {
    await twiceBypassed(`/filters/${uniq("cookie")}?cookie=1`);
  });

  it("Vary: * is never cached", async () => {
    await twiceBypassed(`/filters/${uniq("varystar")}?vary=*`);
  });

  it("Authorization without a consumer to key on is bypassed", async () => {
    await twiceBypassed(`/filters/${uniq("authz")}`, { headers: { authorization: "Bearer x" } });
    await twiceBypassed(`/shared-auth/${uniq("authz")}`, { headers: { authorization: "Bearer x", "x-consumer": "alice" } });
  });

  it("Authorization let in as an auth plugin's anonymous consumer (no credential) is bypassed", async () => {
    // Every caller key-auth does not know is the same consumer: keyed on it, alice's
    // response would be served to bob.
    const p = `/anon/${uniq("anon")}`;
    await twiceBypassed(p, { headers: { authorization: "Bearer alice-token" } });
    await twiceBypassed(p, { headers: { authorization: "Bearer bob-token" } });
    // Without Authorization, anonymous responses are cached as usual.
    await cached(`/anon/${uniq("anon-plain")}`);
  });

  it("more than 100 query arguments or request headers: bypassed, so those past the 100th cannot poison an entry", async () => {
    const junkArgs = Array.from({ length: 100 }, (_, i) => `j${i}=1`).join("&");
    const vq = `/vq/${uniq("manyargs")}`;
    await twiceBypassed(`${vq}?${junkArgs}&a=evil`);
    const plain = await get(vq);
    expect(plain.cache).toBe("Miss");
    expect(plain.json.query.a).toBeUndefined();

    const many = junkHeaders(100);
    const vh = `/vh/${uniq("manyheaders")}`;
    await twiceBypassed(vh, { headers: { ...many, "accept-language": "evil" } });
    const noLang = await get(vh);
    expect(noLang.cache).toBe("Miss");
    expect(noLang.json.lang).not.toBe("evil");

    // A response's own Vary: the variant cannot be told either, when filling ...
    const v = `/nol1/${uniq("manyvary")}?vary=Accept-Language`;
    await twiceBypassed(v, { headers: { ...many, "accept-language": "evil" } });
    const en = await get(v, { headers: { "accept-language": "en" } });
    expect(en.cache).toBe("Miss");
    expect(en.json.lang).toBe("en");
    await stored(en.key);
    // ... nor when the stored Vary marker is found.
    const enMany = await get(v, { headers: { ...many, "accept-language": "fr" } });
    expect(enMany.cache).toBe("Bypass");
    expect(enMany.json.lang).toBe("fr");
    expect((await get(v, { headers: { "accept-language": "en" } })).cache).toBe("Hit");
    expect((await get(v, { headers: { "accept-language": "fr" } })).cache).toBe("Miss");
  });

  it("max_body_size: a large Content-Length is bypassed; a large chunked body streams through unstored", async () => {
    await twiceBypassed(`/small/${uniq("big")}?size=1000`);
    const p = `/small/${uniq("bigchunked")}?size=1000&chunked=1`;
    const originPath = new URL(`http://x${p}`).pathname.replace("/small", "");
    const a = await get(p);
    expect(a.status).toBe(200);
    expect(a.text).toBe("x".repeat(1000));
    await unlocked(a.key);
    const b = await get(p);
    expect(b.cache).toBe("Miss");
    expect(b.text).toBe("x".repeat(1000));
    expect(origin.hits(originPath)).toBe(2);
    await cached(`/small/${uniq("smallchunked")}?size=50&chunked=1`);
  });
});

describe("cache_control", () => {
  it("request no-store bypasses; no-cache and a too low max-age refetch (Refresh) and store", async () => {
    const p = `/cc/${uniq("req")}`;
    expect((await get(p, { headers: { "cache-control": "no-store" } })).cache).toBe("Bypass");
    const a = await get(p);
    expect(a.cache).toBe("Miss");
    await stored(a.key);
    expect((await get(p)).json.n).toBe(2);
    const refreshed = await get(p, { headers: { "cache-control": "no-cache" } });
    expect(refreshed.cache).toBe("Refresh");
    expect(refreshed.json.n).toBe(3);
    for (let i = 0; i < 50 && (await get(p)).json.n !== 3; i++) await sleep(20);
    const hit = await get(p);
    expect(hit.cache).toBe("Hit");
    expect(hit.json.n).toBe(3);
    await sleep(1100);
    const old = await get(p, { headers: { "cache-control": "max-age=1" } });
    expect(old.cache).toBe("Refresh");
    expect(old.json.n).toBe(4);
    const young = await get(p, { headers: { "cache-control": "max-age=60" } });
    expect(young.cache).toBe("Hit");
  });

  it("response private, no-store, no-cache, max-age=0 and a past Expires are not stored", async () => {
    for (const cc of ["private", "no-store", "no-cache", "max-age=0"]) {
      const p = `/cc/${uniq("resp")}?cc=${encodeURIComponent(cc)}`;
      expect((await get(p)).cache).toBe("Bypass");
      expect((await get(p)).cache).toBe("Bypass");
    }
    const p = `/cc/${uniq("expired")}?expires=${encodeURIComponent("Thu, 01 Jan 1970 00:00:00 GMT")}`;
    expect((await get(p)).cache).toBe("Bypass");
  });

  it("s-maxage, then max-age, set the TTL; without either cache_ttl applies", async () => {
    const cases: [string, number][] = [["max-age=7", 7000], ["public, max-age=3, s-maxage=9", 9000], ["public", 300_000]];
    for (const [cc, ttl] of cases) {
      const a = await get(`/cc/${uniq("ttl")}?cc=${encodeURIComponent(cc)}`);
      expect(a.cache).toBe("Miss");
      const pttl = await control.pttl(await stored(a.key));
      expect(pttl).toBeLessThanOrEqual(ttl);
      expect(pttl).toBeGreaterThan(ttl - 2000);
    }
  });

  it("only-if-cached: 504 and never the upstream when nothing stored will do; the entry when it will", async () => {
    const id = uniq("oic");
    const p = `/cc/${id}`;
    const none = await get(p, { headers: { "cache-control": "only-if-cached" } });
    expect(none.status).toBe(504);
    expect(origin.hits(`/${id}`)).toBe(0);
    const a = await get(p);
    expect(a.cache).toBe("Miss");
    await stored(a.key);
    const hit = await get(p, { headers: { "cache-control": "only-if-cached" } });
    expect(hit.status).toBe(200);
    expect(hit.cache).toBe("Hit");
    await sleep(1100);
    // Stored, but older than the client takes: still not the upstream.
    const old = await get(p, { headers: { "cache-control": "only-if-cached, max-age=1" } });
    expect(old.status).toBe(504);
    expect(origin.hits(`/${id}`)).toBe(1);
    // The lock it took on the cold key was given back: nobody waits for it.
    const other = `/cc/${uniq("oic-lock")}`;
    expect((await get(other, { headers: { "cache-control": "only-if-cached" } })).status).toBe(504);
    const started = Date.now();
    expect((await get(other)).cache).toBe("Miss");
    expect(Date.now() - started).toBeLessThan(1500);
  });

  it("only-if-cached never takes the fill or the refresh lock, so a flood of them cannot hold up real requests", async () => {
    const events: string[] = [];
    const watcher = new Redis({ port: redis.port });
    await control.config("SET", "notify-keyspace-events", "K$g");
    try {
      await watcher.psubscribe("__keyspace@0__:krs:redis-cache:v1:*");
      watcher.on("pmessage", (_pattern: string, channel: string, event: string) => events.push(`${event} ${channel}`));
      const warm = `/cc/${uniq("oic-refresh")}?cc=max-age%3D2`;
      const filled = await get(warm);
      const filledAt = Date.now();
      await stored(filled.key);
      // The filler's own lock events are over.
      await sleep(200);
      events.length = 0;
      const cold = `/cc/${uniq("oic-flood")}`;
      const flood = await Promise.all(Array.from({ length: 10 }, () => get(cold, { headers: { "cache-control": "only-if-cached" } })));
      expect(flood.every((r) => r.status === 504)).toBe(true);
      const cacheKey = flood[0]!.key;
      expect(cacheKey).toMatch(/^[0-9a-f]{64}$/);
      // Inside the refresh window (refresh_ahead 0.2 of 2 s) of the stored entry.
      await sleep(filledAt + 1750 - Date.now());
      const served = await get(warm, { headers: { "cache-control": "only-if-cached" } });
      expect(served.cache).toBe("Hit");
      await sleep(200);
      const locks = events.filter((e) => / __keyspace@0__:.*\{\d+\.[0-9a-f]{64}\}:(fill|refresh)$/.test(e) && (e.includes(cacheKey!) || e.includes(filled.key!)));
      expect(locks).toEqual([]);
      // A real request is the filler at once.
      const started = Date.now();
      expect((await get(cold)).cache).toBe("Miss");
      expect(Date.now() - started).toBeLessThan(1500);
    } finally {
      await control.config("SET", "notify-keyspace-events", "");
      watcher.disconnect();
    }
  });

  it("min-fresh: an entry that expires sooner than asked is refetched; max-age=0 always refetches", async () => {
    const p = `/cc/${uniq("minfresh")}?cc=max-age%3D10`;
    const a = await get(p);
    expect(a.cache).toBe("Miss");
    await stored(a.key);
    expect((await get(p, { headers: { "cache-control": "min-fresh=5" } })).cache).toBe("Hit");
    const refreshed = await get(p, { headers: { "cache-control": "min-fresh=20" } });
    expect(refreshed.cache).toBe("Refresh");
    expect(refreshed.json.n).toBe(2);
    for (let i = 0; i < 50 && (await get(p)).json.n !== 2; i++) await sleep(20);
    // Just stored, so its age is 0 s, yet max-age=0 takes no stored response.
    const zero = await get(p, { headers: { "cache-control": "max-age=0" } });
    expect(zero.cache).toBe("Refresh");
    expect(zero.json.n).toBe(3);
  });

  it("without cache_control, Cache-Control is ignored", async () => {
    const p = `/nol1/${uniq("nocc")}?cc=no-store`;
    const a = await get(p, { headers: { "cache-control": "no-cache" } });
    expect(a.cache).toBe("Miss");
    await stored(a.key);
    expect((await get(p, { headers: { "cache-control": "no-cache" } })).cache).toBe("Hit");
  });
});

describe("headers other plugins add", () => {
  it("are neither stored nor replayed: a hit carries only the upstream's (issue 18.8)", async () => {
    const p = `/rl/${uniq("rl")}`;
    const miss = await get(p);
    expect(miss.cache).toBe("Miss");
    expect(miss.headers.get("x-ratelimit-limit-minute")).toBe("1000");
    const value = (await control.get(await stored(miss.key)))!;
    expect(value).toContain("\nX-Origin-N:1\n");
    expect(value.toLowerCase()).not.toContain("ratelimit");
    expect(value.toLowerCase()).not.toContain("x-kong-");
    // redis-rate-limit's Redis goes away: fault tolerant, it sets no headers; the hit must
    // not replay those of the request that filled the entry.
    await rlRedis.stop();
    for (const gw of [gwA, gwB]) {
      const hit = await get(p, {}, gw);
      expect(hit.cache).toBe("Hit");
      expect([...hit.headers.keys()].filter((h) => h.includes("ratelimit"))).toEqual([]);
      expect(hit.headers.get("x-origin-n")).toBe("1");
    }
  });
});

describe("the cache key", () => {
  it("takes every query argument (in any order) unless vary_query_params names some", async () => {
    const base = `/nol1/${uniq("q")}`;
    const a = await get(`${base}?x=1&y=2`);
    expect(a.cache).toBe("Miss");
    await stored(a.key);
    const b = await get(`${base}?y=2&x=1`);
    expect(b.cache).toBe("Hit");
    expect(b.key).toBe(a.key);
    // One argument whose value looks like two is another resource.
    expect((await get(`${base}?x=1%26y%3D2`)).cache).toBe("Miss");
    expect((await get(`${base}?x=1&y=3`)).cache).toBe("Miss");

    const vq = `/vq/${uniq("vq")}`;
    const c = await get(`${vq}?a=1&b=1`);
    await stored(c.key);
    expect((await get(`${vq}?a=1&b=2`)).cache).toBe("Hit");
    expect((await get(`${vq}?a=2&b=1`)).cache).toBe("Miss");
  });

  it("ignore_uri_case", async () => {
    const id = uniq("Case");
    const a = await get(`/case/${id}`);
    await stored(a.key);
    expect((await get(`/case/${id.toLowerCase()}`)).cache).toBe("Hit");
    const b = await get(`/nol1/${id}`);
    await stored(b.key);
    expect((await get(`/nol1/${id.toLowerCase()}`)).cache).toBe("Miss");
  });

  it("vary_headers: the named request headers are part of the key", async () => {
    const p = `/vh/${uniq("vh")}`;
    const en = await get(p, { headers: { "accept-language": "en" } });
    await stored(en.key);
    const fr = await get(p, { headers: { "accept-language": "fr" } });
    expect(fr.cache).toBe("Miss");
    expect(fr.key).not.toBe(en.key);
    await stored(fr.key);
    const en2 = await get(p, { headers: { "accept-language": "en" } });
    expect(en2.cache).toBe("Hit");
    expect(en2.json.lang).toBe("en");
    expect((await get(p)).cache).toBe("Miss");
  });

  it("honours a response's own Vary header", async () => {
    const id = uniq("vary");
    const p = `/nol1/${id}?vary=Accept-Language`;
    const en = await get(p, { headers: { "accept-language": "en" } });
    expect(en.cache).toBe("Miss");
    await stored(en.key);
    const fr = await get(p, { headers: { "accept-language": "fr" } });
    expect(fr.cache).toBe("Miss");
    expect(fr.key).not.toBe(en.key);
    await stored(fr.key);
    for (const [lang, key] of [["en", en.key], ["fr", fr.key]] as const) {
      const hit = await get(p, { headers: { "accept-language": lang } });
      expect(hit.cache).toBe("Hit");
      expect(hit.key).toBe(key);
      expect(hit.json.lang).toBe(lang);
      const other = await get(p, { headers: { "accept-language": lang } }, gwB);
      expect(other.cache).toBe("Hit");
      expect(other.json.lang).toBe(lang);
    }
    expect(origin.hits(`/${id}`)).toBe(2);
    expect((await get(p, { headers: { "accept-language": "de" } })).cache).toBe("Miss");
  });

  it("cache_per_consumer keeps consumers apart; off, they share entries", async () => {
    const p = `/auth/${uniq("cons")}`;
    const alice = await get(p, { headers: { "x-consumer": "alice" } });
    expect(alice.cache).toBe("Miss");
    await stored(alice.key);
    const bob = await get(p, { headers: { "x-consumer": "bob" } });
    expect(bob.cache).toBe("Miss");
    expect(bob.json.consumer).toBe("bob");
    await stored(bob.key);
    const alice2 = await get(p, { headers: { "x-consumer": "alice" } });
    expect(alice2.cache).toBe("Hit");
    expect(alice2.json.consumer).toBe("alice");
    const bob2 = await get(p, { headers: { "x-consumer": "bob" } });
    expect(bob2.cache).toBe("Hit");
    expect(bob2.json.consumer).toBe("bob");
    // With a consumer to key on, a request with Authorization is cached for that consumer.
    const withAuthz = await get(p, { headers: { "x-consumer": "alice", authorization: "Bearer a" } });
    expect(withAuthz.cache).toBe("Hit");
    expect(withAuthz.json.consumer).toBe("alice");

    const s = `/shared-auth/${uniq("shared")}`;
    const a = await get(s, { headers: { "x-consumer": "alice" } });
    await stored(a.key);
    const b = await get(s, { headers: { "x-consumer": "bob" } });
    expect(b.cache).toBe("Hit");
    expect(b.json.consumer).toBe("alice");
  });
});

/** The same on one Redis and on a Redis Cluster (spec/helpers/backends.ts). */
describe.each(BACKENDS)("stampede lock across nodes (%s redis)", (kind) => {
  const on = {} as { gwA: TestGateway; gwB: TestGateway };
  beforeAll(async () => {
    if (kind === "single") {
      Object.assign(on, { gwA, gwB });
      return;
    }
    const backend = await redisBackend(kind);
    const config = {
      _format_version: "3.0",
      services: [{ name: "demo", url: demoUrl, routes: [{ name: "stampede", paths: ["/stampede"], plugins: [{ name: "redis-cache", config: { redis: backend.redis } }] }] }],
    };
    const [a, b] = await Promise.all([gateway(config), gateway(config)]);
    Object.assign(on, { gwA: a, gwB: b });
  }, 90_000);

  afterAll(async () => {
    if (kind === "single") return;
    for (const g of [on.gwA, on.gwB]) expect(g.unexpectedErrors()).toEqual([]);
    await Promise.all([on.gwA.stop(), on.gwB.stop()]);
  });

  it("100 concurrent requests to a cold key with a slow upstream reach it once (2 nodes x 2 workers)", async () => {
    const before = (await demoHits())["/delay/500"] ?? 0;
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) => get("/stampede/delay/500", {}, i % 2 === 0 ? on.gwA : on.gwB)),
    );
    expect(results.map((r) => r.status)).toEqual(Array(100).fill(200));
    expect(((await demoHits())["/delay/500"] ?? 0) - before).toBe(1);
    const statuses = results.map((r) => r.cache);
    expect(statuses.filter((s) => s === "Miss")).toHaveLength(1);
    expect(statuses.filter((s) => s === "Hit")).toHaveLength(99);
    expect(new Set(results.map((r) => r.key)).size).toBe(1);
    expect(new Set(results.map((r) => r.text)).size).toBe(1);
  });
});

describe("stampede lock", () => {
  it("30 concurrent misses on one key of one worker (with L1) reach the upstream once", async () => {
    const id = uniq("one-worker");
    const results = await Promise.all(Array.from({ length: 30 }, () => get(`/basic/${id}?delay=300`, {}, gw1)));
    expect(results.map((r) => r.status)).toEqual(Array(30).fill(200));
    expect(origin.hits(`/${id}`)).toBe(1);
    expect(results.filter((r) => r.cache === "Miss")).toHaveLength(1);
    expect(new Set(results.map((r) => r.json.n))).toEqual(new Set([1]));
  });

  it("the fill lock is held with a TTL of lock_timeout, and is gone once the entry is stored", async () => {
    const id = uniq("lockttl");
    const p = `/nol1/${id}?delay=600`;
    const pending = get(p);
    let lockKey: string | undefined;
    let pttl = -3;
    for (let i = 0; i < 100 && lockKey === undefined; i++) {
      const keys = await control.keys(`krs:redis-cache:v1:{${await generation()}.*}:fill`);
      for (const k of keys) {
        const t = await control.pttl(k);
        if ((await control.get(k)) !== "!" && t > 0) {
          lockKey = k;
          pttl = t;
        }
      }
      if (lockKey === undefined) await sleep(10);
    }
    expect(lockKey).toBeDefined();
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(3000);
    const res = await pending;
    expect(res.cache).toBe("Miss");
    expect(lockKey).toBe(`krs:redis-cache:v1:{${await generation()}.${res.key}}:fill`);
    await stored(res.key);
    expect(await control.exists(lockKey!)).toBe(0);
  });

  it("when the holder's upstream times out, the waiters do not hang and the lock does not outlive lock_timeout", async () => {
    // Service read_timeout 300 ms, lock_timeout 1000 ms, an upstream that takes 2 s.
    const id = uniq("holder-timeout");
    const p = `/lockfail/${id}?delay=2000`;
    const started = Date.now();
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => get(p, {}, i % 2 === 0 ? gwA : gwB)));
    const elapsed = Date.now() - started;
    expect(results.map((r) => r.status)).toEqual(Array(10).fill(504));
    // At worst a waiter waits out lock_timeout, then times out upstream itself.
    expect(elapsed).toBeLessThan(1000 + 300 + 2500);
    const key = results.find((r) => r.key !== null)?.key;
    expect(key).toMatch(/^[0-9a-f]{64}$/);
    const lockKey = `krs:redis-cache:v1:{${await generation()}.${key}}:fill`;
    expect(await control.pttl(lockKey)).toBeLessThanOrEqual(1000);
    await sleep(1100);
    expect(await control.exists(lockKey)).toBe(0);
    expect(await control.exists(await entryKey(key!))).toBe(0);
  });

  it("when the filling response is not cacheable, the waiters go upstream at once", async () => {
    const p = `/nol1/${uniq("slow500")}?status=500&delay=300`;
    const started = Date.now();
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => get(p, {}, i % 2 === 0 ? gwA : gwB)));
    const elapsed = Date.now() - started;
    expect(results.map((r) => r.status)).toEqual(Array(20).fill(500));
    expect(results.every((r) => r.cache === "Bypass")).toBe(true);
    expect(origin.hits(new URL(`http://x${p}`).pathname.replace("/nol1", ""))).toBe(20);
    // Waiting out lock_timeout (3 s) or taking the lock one after another (20 x 300 ms)
    // would both take far longer.
    expect(elapsed).toBeLessThan(2500);
  });
});

describe("refresh-ahead and TTL", () => {
  it("inside the last fraction of the TTL one request refreshes; nobody sees a miss", async () => {
    const id = uniq("ra");
    const p = `/refresh/${id}?delay=300`;
    const first = await get(p);
    expect(first.cache).toBe("Miss");
    await stored(first.key);
    // cache_ttl 2 s, refresh_ahead 0.5: the window opens at 1 s.
    await sleep(1150);
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => get(p, {}, i % 2 === 0 ? gwA : gwB)));
    const statuses = results.map((r) => r.cache);
    expect(statuses.filter((s) => s === "Refresh")).toHaveLength(1);
    expect(statuses.filter((s) => s === "Hit")).toHaveLength(19);
    expect(origin.hits(`/${id}`)).toBe(2);
    expect(results.find((r) => r.cache === "Refresh")!.json.n).toBe(2);
    // The refreshed entry replaces the old one with a full TTL.
    let after = await get(p);
    for (let i = 0; i < 50 && after.json.n !== 2; i++) after = await get(p);
    expect(after.cache).toBe("Hit");
    expect(after.json.n).toBe(2);
    const pttl = await control.pttl(await entryKey(first.key!));
    expect(pttl).toBeGreaterThan(1000);
  });

  it("sliding_ttl: hits keep an entry alive past its TTL; a fixed TTL expires", async () => {
    const s = `/sliding/${uniq("slide")}`;
    const f = `/fixed/${uniq("fixed")}`;
    await stored((await get(s)).key);
    await stored((await get(f)).key);
    for (let i = 0; i < 3; i++) {
      await sleep(1200);
      expect((await get(s)).cache).toBe("Hit");
    }
    expect((await get(f)).cache).toBe("Miss");
  });
});

describe("purge", () => {
  it("DELETE /redis-cache/:cache_key removes one entry; 404 when there is none", async () => {
    const p = `/nol1/${uniq("purge")}`;
    const a = await get(p);
    await stored(a.key);
    const other = await get(`/nol1/${uniq("keep")}`);
    await stored(other.key);
    const del = await fetch(`${gwA.adminUrl}/redis-cache/${a.key}`, { method: "DELETE" });
    expect(del.status).toBe(204);
    expect((await get(p)).cache).toBe("Miss");
    expect((await control.exists(await entryKey(other.key!)))).toBe(1);
    await stored(a.key);
    expect((await fetch(`${gwB.adminUrl}/redis-cache/${a.key}`, { method: "DELETE" })).status).toBe(204);
    expect((await fetch(`${gwB.adminUrl}/redis-cache/${a.key}`, { method: "DELETE" })).status).toBe(404);
    expect((await fetch(`${gwB.adminUrl}/redis-cache/not-a-key`, { method: "DELETE" })).status).toBe(404);
  });

  it("DELETE /redis-cache drops every entry by moving to a new generation", async () => {
    const p1 = `/nol1/${uniq("all1")}`;
    const p2 = `/enc/${uniq("all2")}`;
    const old1 = await stored((await get(p1)).key);
    const old2 = await stored((await get(p2)).key);
    const gen = Number(await generation());
    const del = await fetch(`${gwA.adminUrl}/redis-cache`, { method: "DELETE" });
    expect(del.status).toBe(204);
    expect(Number(await generation())).toBe(gen + 1);
    // O(1): nothing was scanned or deleted; the old generation's keys just expire.
    expect(await control.exists(old1, old2)).toBe(2);
    expect((await get(p1)).cache).toBe("Miss");
    expect((await get(p2, {}, gwB)).cache).toBe("Miss");
  });
});

describe("encryption", () => {
  it("stores no plaintext of the body in Redis and serves it decrypted", async () => {
    const secret = `TOP-SECRET-${Date.now()}`;
    const p = `/enc/${uniq("enc")}?secret=${secret}`;
    const a = await get(p);
    expect(a.cache).toBe("Miss");
    expect(a.text).toContain(secret);
    const value = (await control.getBuffer(await stored(a.key)))!;
    expect(value.toString("latin1")).toMatch(/^1\|300000\|\d+\|K\|[0-9a-f]{8}\|/);
    expect(value.includes(secret)).toBe(false);
    expect(value.includes("application/json")).toBe(false);
    const hit = await get(p);
    expect(hit.cache).toBe("Hit");
    expect(hit.text).toBe(a.text);
  });

  it("a corrupted or unencrypted value is a miss (and logged), not a 500; the entry is rebuilt", async () => {
    const p = `/enc/${uniq("tamper")}`;
    const a = await get(p);
    const key = await stored(a.key);
    const value = (await control.getBuffer(key))!;
    const flipped = Buffer.from(value);
    flipped[flipped.length - 5] ^= 0x01;
    await control.set(key, flipped, "PX", 60_000);
    const b = await get(p);
    expect(b.status).toBe(200);
    expect(b.cache).toBe("Miss");
    expect(b.json.n).toBe(2);
    await stored(a.key);
    expect((await get(p)).cache).toBe("Hit");
    expect(gwA.errorLog().some((l) => l.includes(`cache entry ${a.key} ignored`) && l.includes("failed authentication"))).toBe(true);

    // A plain entry someone else wrote is not accepted where encryption is on.
    const forged = `1|300000|${Date.now()}|E|200\nContent-Type:application/json\n\n{"forged":true}`;
    await control.set(key, forged, "PX", 60_000);
    const c = await get(p);
    expect(c.cache).toBe("Miss");
    expect(c.json.forged).toBeUndefined();

    // Garbage under a plain route is a miss as well.
    const q = `/nol1/${uniq("garbage")}`;
    const d = await get(q);
    const qKey = await stored(d.key);
    await control.set(qKey, "garbage", "PX", 60_000);
    const e = await get(q);
    expect(e.status).toBe(200);
    expect(e.cache).toBe("Miss");
  });
});

describe("encryption binds an entry to its key", () => {
  it("an encrypted entry copied onto another key, or into a later generation, is a miss", async () => {
    const pa = `/enc/${uniq("alice")}?secret=alice-secret`;
    const pb = `/enc/${uniq("bob")}`;
    const a = await get(pa);
    const b = await get(pb);
    const ka = await stored(a.key);
    const kb = await stored(b.key);
    const valueA = (await control.getBuffer(ka))!;
    await control.set(kb, valueA, "PX", 60_000);
    const copied = await get(pb);
    expect(copied.cache).toBe("Miss");
    expect(copied.text).not.toContain("alice-secret");
    expect(copied.json.n).toBe(2);

    // Replayed after a purge of everything: the new generation does not take it.
    expect((await fetch(`${gwA.adminUrl}/redis-cache`, { method: "DELETE" })).status).toBe(204);
    await control.set(await entryKey(a.key!), valueA, "PX", 60_000);
    const replayed = await get(pa);
    expect(replayed.cache).toBe("Miss");
    expect(replayed.json.n).toBe(2);
  });
});

describe("content_type with parameters", () => {
  let gwCt: TestGateway;

  beforeAll(async () => {
    gwCt = await gateway(
      {
        _format_version: "3.0",
        services: [
          {
            name: "origin",
            url: `http://127.0.0.1:${origin.port}`,
            routes: [route("ctparams", { l1_ttl: 0, content_type: ["application/json; charset=utf-8", 'text/*; charset="utf-8"', "image/png"] })],
          },
        ],
      },
      { workers: 1 },
    );
  });

  const ct = (value: string) => `ct=${encodeURIComponent(value)}`;

  it("is accepted; such an entry matches, as in Kong, only exactly those parameters", async () => {
    await cached(`/ctparams/${uniq("json")}?${ct("application/json; charset=utf-8")}`, {}, gwCt);
    await cached(`/ctparams/${uniq("jsonq")}?${ct('application/json;Charset="utf-8"')}`, {}, gwCt);
    await cached(`/ctparams/${uniq("html")}?${ct("text/html; charset=utf-8")}`, {}, gwCt);
    await twiceBypassed(`/ctparams/${uniq("bare")}?${ct("application/json")}`, {}, gwCt);
    await twiceBypassed(`/ctparams/${uniq("other")}?${ct("application/json; charset=iso-8859-1")}`, {}, gwCt);
    await twiceBypassed(`/ctparams/${uniq("more")}?${ct("text/html; charset=utf-8; q=1")}`, {}, gwCt);
    // An entry without parameters takes any.
    await cached(`/ctparams/${uniq("png")}?${ct("image/png; x=1")}&size=10`, {}, gwCt);
  });

  it("logs no error", () => {
    expect(gwCt.unexpectedErrors()).toEqual([]);
  });
});

describe("writer queue under a slow Redis", () => {
  const DELAY_MS = 100;
  // 160 MiB against a 64 MiB queue: even on a loaded machine, where responses come slowly
  // and Redis drains some stores meanwhile, the queue must overflow.
  const N = 160;
  const SIZE = 1024 * 1024;
  let slowRedis: RedisServer;
  let slowControl: Redis;
  let proxy: TcpServer;
  const sockets = new Set<Socket>();
  let gwSlow: TestGateway;

  /** Forwards what `from` sends to `to` DELAY_MS later, in order. */
  function delayed(from: Socket, to: Socket): void {
    sockets.add(from);
    from.on("data", (d) => setTimeout(() => to.write(d), DELAY_MS));
    from.on("close", () => setTimeout(() => to.destroy(), DELAY_MS));
    from.on("error", () => {});
  }

  beforeAll(async () => {
    slowRedis = await startRedis();
    slowControl = new Redis({ port: slowRedis.port });
    proxy = createTcpServer((c) => {
      const r = connect(slowRedis.port, "127.0.0.1");
      delayed(c, r);
      delayed(r, c);
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    const port = (proxy.address() as AddressInfo).port;
    gwSlow = await gateway(
      {
        _format_version: "3.0",
        services: [
          {
            name: "origin",
            url: `http://127.0.0.1:${origin.port}`,
            routes: [
              {
                name: "slow",
                paths: ["/slow"],
                plugins: [
                  {
                    name: "redis-cache",
                    // A lock that is not given back would stay for 10 minutes.
                    config: { l1_ttl: 0, content_type: ["*"], max_body_size: 2 * SIZE, lock_timeout: 600_000, redis: { port, timeout: 10_000 } },
                  },
                ],
              },
            ],
          },
        ],
      },
      { workers: 1 },
    );
  });

  afterAll(async () => {
    slowControl?.disconnect();
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => (proxy ? proxy.close(() => r()) : r()));
  });

  it("drops the stores past 64 MiB waiting for Redis, yet serves every response and gives back every lock", async () => {
    const id = uniq("slow");
    const results = await Promise.all(Array.from({ length: N }, (_, i) => get(`/slow/${id}-${i}?size=${SIZE}&ct=text/plain`, {}, gwSlow)));
    expect(results.map((r) => r.status)).toEqual(Array(N).fill(200));
    expect(results.every((r) => r.cache === "Miss" && r.text.length === SIZE)).toBe(true);
    let locks = -1;
    for (let i = 0; i < 600 && locks !== 0; i++) {
      locks = (await slowControl.keys("krs:redis-cache:*:fill")).length;
      if (locks !== 0) await sleep(100);
    }
    expect(locks).toBe(0);
    const entries = (await slowControl.keys("krs:redis-cache:*:entry")).length;
    expect(entries).toBeGreaterThanOrEqual(64);
    expect(entries).toBeLessThan(N);
    expect(gwSlow.errorLog().some((l) => l.includes("cache write queue full"))).toBe(true);
    expect(gwSlow.unexpectedErrors([/\[redis-cache\] cache write queue full/])).toEqual([]);
  }, 120_000);
});

describe("Redis down", () => {
  let gwDown: TestGateway;

  beforeAll(async () => {
    const dead = { port: await freePort(), timeout: 200 };
    gwDown = await gateway({
      _format_version: "3.0",
      services: [
        {
          name: "origin",
          url: `http://127.0.0.1:${origin.port}`,
          routes: [
            { name: "down", paths: ["/down"], plugins: [{ name: "redis-cache", config: { redis: dead } }] },
            { name: "strict", paths: ["/strict"], plugins: [{ name: "redis-cache", config: { fault_tolerant: false, redis: dead } }] },
          ],
        },
      ],
    });
  });

  it("fault_tolerant: the request goes upstream with X-Cache-Status: Bypass", async () => {
    const a = await get(`/down/${uniq("down")}`, {}, gwDown);
    expect(a.status).toBe(200);
    expect(a.cache).toBe("Bypass");
    expect(a.json.n).toBe(1);
  });

  it("fault_tolerant false: 500", async () => {
    const a = await get(`/strict/${uniq("down")}`, {}, gwDown);
    expect(a.status).toBe(500);
    expect(a.json).toEqual({ message: "An unexpected error occurred" });
  });

  it("the Admin API reports a purge it could not do", async () => {
    const res = await fetch(`${gwDown.adminUrl}/redis-cache`, { method: "DELETE" });
    expect(res.status).toBe(500);
    expect(((await res.json()) as { message: string }).message).toMatch(/^could not purge the cache: could not connect to redis/);
  });

  it("logs the failure, throttled, and nothing else", () => {
    const errors = gwDown.unexpectedErrors();
    expect(errors.length).toBeGreaterThan(0);
    expect(errors.every((l) => /\[redis-cache\] redis unavailable: could not connect to redis/.test(l))).toBe(true);
    // Several requests, at most one line per worker per 10 s.
    expect(errors.length).toBeLessThanOrEqual(2);
  });
});

describe("error log", () => {
  it("has no unexpected errors", () => {
    const expected = [
      /cache entry [0-9a-f]{64} ignored \(treated as a miss\): (entry failed authentication|unencrypted entry while encryption_key is set|malformed entry)/,
      // The /rl test stops redis-rate-limit's Redis; the holder-timeout test's upstream is too slow.
      /\[redis-rate-limit\] redis unavailable/,
      /upstream timed out/,
    ];
    expect(gwA.unexpectedErrors(expected)).toEqual([]);
    expect(gwB.unexpectedErrors(expected)).toEqual([]);
    expect(gw1.unexpectedErrors(expected)).toEqual([]);
  });
});

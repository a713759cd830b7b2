/**
 * redis-key-auth through the local gateway, against real redis-server processes: Kong
 * key-auth's responses and headers, hide_credentials, anonymous, run_on_preflight,
 * expiry, revocation reaching a second gateway within a second, Redis down with and
 * without a cached key, keys with odd bytes, the worker cache (zero Redis calls when
 * warm), the Admin API, the `krs keys` CLI, and subscribers following config changes.
 */
import { spawn, spawnSync } from "node:child_process";
import { Agent, request as httpRequest } from "node:http";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKey, hashKey, newKey as newApiKey, recordKey, revokeKey, withScripts, type KeysRedis } from "../../src/cli/keys.js";
import { BACKENDS, redisBackend, type RedisBackend } from "../helpers/backends.js";
import { ROOT, gateway, getJson, startRedis, stopAll, tempDir, upstream, type RedisServer, type TestGateway } from "../helpers/services.js";

const ALICE = "8a6a4f9e-1d1b-4a53-9d07-0a1f2b3c4d01";
const BOB = "8a6a4f9e-1d1b-4a53-9d07-0a1f2b3c4d02";
const ANON = "8a6a4f9e-1d1b-4a53-9d07-0a1f2b3c4d03";
const CHANNEL = "krs:redis-key-auth:v1:invalidations";
/** Lines every gateway here may log: Redis stopped on purpose, config changes. */
const EXPECTED_REDIS_ERRORS = [/\[redis-key-auth\] redis unavailable/, /\[redis-key-auth:subscriber\] invalidation subscriber/];

let upstreamUrl: string;
let redisServer: RedisServer;
let redis: KeysRedis;
let gw: TestGateway;
let gw2: TestGateway;
const createdKeys: string[] = [];

const consumers = [
  { id: ALICE, username: "alice", custom_id: "alice-cid" },
  { id: BOB, username: "bob" },
  { id: ANON, username: "anonymous-user" },
];

/** `redis`: a port on loopback, or the `config.redis` fields of a backend. */
function plugin(redis: number | object, config: Record<string, unknown> = {}) {
  return { name: "redis-key-auth", config: { redis: typeof redis === "number" ? { port: redis } : redis, ...config } };
}

function mainConfig(redisPort: number | object) {
  const route = (name: string, config: Record<string, unknown> = {}) => ({ name, paths: [`/${name}`], plugins: [plugin(redisPort, config)] });
  return {
    _format_version: "3.0",
    services: [{
      name: "svc",
      url: upstreamUrl,
      routes: [
        route("auth"),
        route("hide", { hide_credentials: true }),
        route("body", { key_in_body: true, key_in_header: false, key_in_query: false, hide_credentials: true }),
        route("anon", { anonymous: "anonymous-user" }),
        route("anon-id", { anonymous: ANON }),
        route("preflight", { run_on_preflight: false }),
        route("realm", { realm: 'my "special" realm' }),
        route("named", { key_names: ["X-Team-Key"], key_in_query: false }),
        route("two-names", { key_names: ["apikey", "x-api-key"] }),
        route("hide-two", { key_names: ["apikey", "x-api-key"], hide_credentials: true }),
        route("longcache", { cache_ttl: 300 }),
        { name: "open", paths: ["/open"] },
      ],
    }],
    consumers,
  };
}

async function newKey(input: { consumer?: string; consumerId?: string; ttl?: number } = {}, on: KeysRedis = redis): Promise<{ id: string; key: string; expiresAt: number }> {
  const created = await createKey(on, { consumer: input.consumer ?? "alice", consumerId: input.consumerId, ttl: input.ttl });
  createdKeys.push(created.key);
  return created;
}

interface Raw {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json(): any;
}

/** node:http, so a header can be sent twice and carry raw bytes; a fresh connection each time. */
function raw(url: string, opts: { method?: string; headers?: Record<string, string | string[]>; body?: string } = {}): Promise<Raw> {
  return new Promise((res, rej) => {
    const req = httpRequest(url, { method: opts.method ?? "GET", agent: false }, (r) => {
      const chunks: Buffer[] = [];
      r.on("data", (c: Buffer) => chunks.push(c));
      r.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        res({ status: r.statusCode ?? 0, headers: r.headers, body, json: () => JSON.parse(body) });
      });
    });
    req.on("error", rej);
    for (const [name, value] of Object.entries(opts.headers ?? {})) req.setHeader(name, value);
    if (opts.body !== undefined) req.write(opts.body);
    req.end();
  });
}

async function hgetallCalls(r: Redis): Promise<number> {
  const stats = await r.info("commandstats");
  const m = /cmdstat_hgetall:calls=(\d+)/.exec(stats);
  return m ? Number(m[1]) : 0;
}

async function subscribers(r: Redis): Promise<number> {
  return Number(((await r.pubsub("NUMSUB", CHANNEL)) as [string, number])[1]);
}

/**
 * Until `n` workers listen for invalidations. A worker drops its cache when its
 * subscription comes up, so tests that count on a cached key wait for this first.
 */
async function subscribed(r: Redis, n: number): Promise<void> {
  await waitFor(`${n} subscribed workers`, async () => (await subscribers(r)) >= n, 5000);
}

async function sleepUntil(at: number): Promise<void> {
  const left = at - Date.now();
  if (left > 0) await new Promise((r) => setTimeout(r, left));
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    if (await check()) return Date.now() - started;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

beforeAll(async () => {
  const up = await upstream();
  upstreamUrl = `http://127.0.0.1:${up.port}`;
  redisServer = await startRedis();
  redis = withScripts(new Redis({ port: redisServer.port }));
  [gw, gw2] = await Promise.all([
    gateway(mainConfig(redisServer.port), { logLevel: "info" }),
    gateway(mainConfig(redisServer.port)),
  ]);
  await subscribed(redis, 4);
});

afterAll(async () => {
  // The key never appears in a log line, whatever happened above.
  for (const g of [gw, gw2]) {
    if (g === undefined) continue;
    const log = g.errorLog().join("\n");
    for (const key of createdKeys) expect(log).not.toContain(key);
  }
  redis?.disconnect();
  await stopAll();
});

describe("refusals (Kong key-auth's messages and WWW-Authenticate)", () => {
  it("no key: 401 No API key found in request", async () => {
    const res = await getJson(`${gw.proxyUrl}/auth/anything`);
    expect(res.status).toBe(401);
    expect(res.body).toEqual({ message: "No API key found in request", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    expect(res.headers.get("www-authenticate")).toBe("Key");
    const empty = await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: "" } });
    expect(empty.status).toBe(401);
    expect(empty.body).toEqual({ message: "No API key found in request", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
  });

  it("unknown key: 401 Unauthorized", async () => {
    const res = await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: "A".repeat(43) } });
    expect(res.status).toBe(401);
    expect(res.body).toEqual({ message: "Unauthorized", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    expect(res.headers.get("www-authenticate")).toBe("Key");
  });

  it("the same key name twice: 401 Duplicate API key found (header or query)", async () => {
    const { key } = await newKey();
    const headers = await raw(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: [key, "B".repeat(43)] } });
    expect(headers.status).toBe(401);
    expect(headers.json()).toEqual({ message: "Duplicate API key found", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    expect(headers.headers["www-authenticate"]).toBe("Key");
    const query = await getJson(`${gw.proxyUrl}/auth/anything?apikey=${key}&apikey=other`);
    expect(query.status).toBe(401);
    expect(query.body).toEqual({ message: "Duplicate API key found", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
  });

  it("no realm set: a bare `Key` challenge, as Kong; a realm is sent quoted on every 401", async () => {
    expect((await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: "D".repeat(43) } })).headers.get("www-authenticate")).toBe("Key");
    const res = await getJson(`${gw.proxyUrl}/realm/anything`);
    expect(res.headers.get("www-authenticate")).toBe('Key realm="my \\"special\\" realm"');
    const unknown = await getJson(`${gw.proxyUrl}/realm/anything`, { headers: { apikey: "D".repeat(43) } });
    expect(unknown.status).toBe(401);
    expect(unknown.headers.get("www-authenticate")).toBe('Key realm="my \\"special\\" realm"');
    const duplicate = await raw(`${gw.proxyUrl}/realm/anything`, { headers: { apikey: ["D".repeat(43), "E".repeat(43)] } });
    expect(duplicate.headers["www-authenticate"]).toBe('Key realm="my \\"special\\" realm"');
  });

  it("keys with odd bytes get 401, never 500", async () => {
    const utf8AsLatin1 = Buffer.from("ключ-🔑-キー", "utf8").toString("latin1");
    const headerValues = ["x".repeat(4000), utf8AsLatin1, "{abc}:def", "{".repeat(43), ":".repeat(43), "a\tb", "é".repeat(43)];
    for (const value of headerValues) {
      const res = await raw(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: value } });
      expect(res.status, JSON.stringify(value)).toBe(401);
      expect(res.json()).toEqual({ message: "Unauthorized", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    }
    const queryValues = ["%0A", "abc%0Adef", "%7B%7D%3A", "%00", "%FF%FE", "x".repeat(3000), `${"A".repeat(42)}%0A`, "%E3%82%AD%E3%83%BC"];
    for (const value of queryValues) {
      const res = await raw(`${gw.proxyUrl}/auth/anything?apikey=${value}`);
      expect(res.status, value).toBe(401);
      expect(res.json()).toEqual({ message: "Unauthorized", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    }
    for (const body of [{ apikey: "line\nbreak{:}" }, { apikey: "\u0000".repeat(43) }, { apikey: "🔑".repeat(20) }]) {
      const res = await raw(`${gw.proxyUrl}/body/anything`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
      expect(res.status).toBe(401);
      expect(res.json()).toEqual({ message: "Unauthorized", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    }
    // Neither a string nor a repeated field: no key at all, as in Kong.
    const numeric = await raw(`${gw.proxyUrl}/body/anything`, { method: "POST", headers: { "content-type": "application/json" }, body: '{"apikey": 12345}' });
    expect(numeric.json()).toEqual({ message: "No API key found in request", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    const bare = await raw(`${gw.proxyUrl}/auth/anything?apikey`);
    expect(bare.json()).toEqual({ message: "No API key found in request", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    expect(gw.unexpectedErrors(EXPECTED_REDIS_ERRORS)).toEqual([]);
  });
});

describe("authentication", () => {
  it("a valid key in a header: the consumer's headers upstream, the key's id, not the key", async () => {
    const { key, id } = await newKey();
    const res = await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: key } });
    expect(res.status).toBe(200);
    const h = res.body.headers;
    expect(h["x-consumer-id"]).toBe(ALICE);
    expect(h["x-consumer-username"]).toBe("alice");
    expect(h["x-consumer-custom-id"]).toBe("alice-cid");
    expect(h["x-credential-identifier"]).toBe(id);
    expect(h["x-anonymous-consumer"]).toBeUndefined();
    // hide_credentials is off: the key goes on as the client sent it.
    expect(h.apikey).toBe(key);
    expect(JSON.stringify(res.headers)).not.toContain(key);
  });

  it("in the query string, or under configured names; `x-api-key` is no default name (Kong's is `apikey` alone)", async () => {
    const { key, id } = await newKey({ consumer: "bob" });
    const query = await getJson(`${gw.proxyUrl}/auth/anything?apikey=${key}`);
    expect(query.status).toBe(200);
    expect(query.body.headers["x-consumer-username"]).toBe("bob");
    expect(query.body.headers["x-consumer-custom-id"]).toBeUndefined();
    expect(query.body.headers["x-credential-identifier"]).toBe(id);
    // With the default config a header Kong ignores is neither a key nor hidden.
    const notDefault = await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { "X-API-Key": key } });
    expect(notDefault.status).toBe(401);
    expect(notDefault.body).toEqual({ message: "No API key found in request", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    const second = await getJson(`${gw.proxyUrl}/two-names/anything`, { headers: { "X-API-Key": key } });
    expect(second.status).toBe(200);
    expect(second.body.headers["x-credential-identifier"]).toBe(id);
    const named = await getJson(`${gw.proxyUrl}/named/anything`, { headers: { "x-team-key": key } });
    expect(named.status).toBe(200);
    // That route reads headers only.
    expect((await getJson(`${gw.proxyUrl}/named/anything?X-Team-Key=${key}`)).status).toBe(401);
  });

  it("client-sent identity headers are replaced", async () => {
    const { key } = await newKey();
    const res = await getJson(`${gw.proxyUrl}/auth/anything`, {
      headers: { apikey: key, "x-consumer-username": "mallory", "x-anonymous-consumer": "true", "x-consumer-id": "forged" },
    });
    expect(res.body.headers["x-consumer-username"]).toBe("alice");
    expect(res.body.headers["x-consumer-id"]).toBe(ALICE);
    expect(res.body.headers["x-anonymous-consumer"]).toBeUndefined();
  });

  it("a key pinned to a consumer id follows that id; a consumer Kong does not know is refused", async () => {
    const pinned = await newKey({ consumer: "alice", consumerId: BOB });
    const res = await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: pinned.key } });
    expect(res.status).toBe(200);
    expect(res.body.headers["x-consumer-username"]).toBe("bob");
    const strangerId = await newKey({ consumer: "alice", consumerId: "00000000-0000-4000-8000-000000000000" });
    expect((await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: strangerId.key } })).status).toBe(401);
    const strangerName = await newKey({ consumer: "nobody-in-kong" });
    const refused = await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: strangerName.key } });
    expect(refused.status).toBe(401);
    expect(refused.body).toEqual({ message: "Unauthorized", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
  });

  it("hide_credentials: the upstream sees no key in headers or query", async () => {
    const { key } = await newKey();
    const header = await getJson(`${gw.proxyUrl}/hide/anything?keep=1`, { headers: { apikey: key } });
    expect(header.status).toBe(200);
    expect(header.body.headers.apikey).toBeUndefined();
    expect(header.body.query).toEqual({ keep: "1" });
    expect(header.body.headers["x-consumer-username"]).toBe("alice");
    const query = await getJson(`${gw.proxyUrl}/hide/anything?a=1&apikey=${key}&b=two%20words&a=3`);
    expect(query.status).toBe(200);
    expect(query.body.query).toEqual({ a: ["1", "3"], b: "two words" });
    expect(JSON.stringify(query.body)).not.toContain(key);
    const other = await getJson(`${gw.proxyUrl}/hide-two/anything?x-api-key=${key}&keep=%20x`);
    expect(other.status).toBe(200);
    expect(JSON.stringify(other.body)).not.toContain(key);
    // The other arguments go upstream as the client sent them (Kong re-encodes them as `keep=+x`).
    expect(other.body.url).toMatch(/\?keep=%20x$/);
  });

  it("hide_credentials with key_in_body: the key leaves the form or JSON body", async () => {
    const { key } = await newKey();
    const form = await raw(`${gw.proxyUrl}/body/anything`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: `apikey=${key}&note=hello`,
    });
    expect(form.status).toBe(200);
    expect(form.json().body).toBe("note=hello");
    const json = await raw(`${gw.proxyUrl}/body/anything`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ apikey: key, note: "hello" }),
    });
    expect(json.status).toBe(200);
    expect(JSON.parse(json.json().body)).toEqual({ note: "hello" });
    expect(json.json().headers["x-consumer-username"]).toBe("alice");
  });

  it("run_on_preflight false: OPTIONS goes through unauthenticated; true (default): refused", async () => {
    const preflight = await raw(`${gw.proxyUrl}/preflight/anything`, { method: "OPTIONS" });
    expect(preflight.status).toBe(200);
    expect(preflight.json().headers["x-consumer-id"]).toBeUndefined();
    expect((await raw(`${gw.proxyUrl}/preflight/anything`)).status).toBe(401);
    expect((await raw(`${gw.proxyUrl}/auth/anything`, { method: "OPTIONS" })).status).toBe(401);
  });
});

describe("anonymous", () => {
  it("no key or an invalid key: goes on as the anonymous consumer (by username or id)", async () => {
    for (const path of ["/anon/anything", "/anon-id/anything"]) {
      for (const headers of [{}, { apikey: "C".repeat(43) }, { apikey: "{odd}" }] as Record<string, string>[]) {
        const res = await getJson(`${gw.proxyUrl}${path}`, { headers });
        expect(res.status).toBe(200);
        expect(res.body.headers["x-anonymous-consumer"]).toBe("true");
        expect(res.body.headers["x-consumer-id"]).toBe(ANON);
        expect(res.body.headers["x-consumer-username"]).toBe("anonymous-user");
        expect(res.body.headers["x-credential-identifier"]).toBeUndefined();
      }
    }
  });

  it("no key, forged identity headers: the upstream gets none of them, only the anonymous consumer's (as Kong's set_consumer)", async () => {
    const forged = {
      "x-consumer-id": "forged-id",
      "x-consumer-username": "mallory",
      "x-consumer-custom-id": "forged-custom-id",
      "x-credential-identifier": "forged-credential",
      "x-anonymous-consumer": "false",
    };
    for (const headers of [forged, { ...forged, apikey: "F".repeat(43) }]) {
      const res = await getJson(`${gw.proxyUrl}/anon/anything`, { headers });
      expect(res.status).toBe(200);
      const h = res.body.headers;
      expect(h["x-anonymous-consumer"]).toBe("true");
      expect(h["x-consumer-id"]).toBe(ANON);
      expect(h["x-consumer-username"]).toBe("anonymous-user");
      // The anonymous consumer has no custom_id and there is no credential: both cleared.
      expect(h["x-consumer-custom-id"]).toBeUndefined();
      expect(h["x-credential-identifier"]).toBeUndefined();
      expect(JSON.stringify(h)).not.toMatch(/forged|mallory/);
    }
  });

  it("a valid key: the key's consumer, no anonymous header (even if the client sent one)", async () => {
    const { key, id } = await newKey();
    const res = await getJson(`${gw.proxyUrl}/anon/anything`, { headers: { apikey: key, "x-anonymous-consumer": "true" } });
    expect(res.body.headers["x-consumer-username"]).toBe("alice");
    expect(res.body.headers["x-credential-identifier"]).toBe(id);
    expect(res.body.headers["x-anonymous-consumer"]).toBeUndefined();
  });
});

describe("expiry", () => {
  it("a key with a TTL works until it expires, then 401 (the worker cache does not outlive it)", async () => {
    const { key, expiresAt } = await newKey({ ttl: 2 });
    expect((await getJson(`${gw.proxyUrl}/longcache/anything`, { headers: { apikey: key } })).status).toBe(200);
    expect((await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: key } })).status).toBe(200);
    const untilExpiry = expiresAt * 1000 - Date.now();
    expect(untilExpiry).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, untilExpiry + 100));
    for (const path of ["/longcache/anything", "/auth/anything"]) {
      const res = await getJson(`${gw.proxyUrl}${path}`, { headers: { apikey: key } });
      expect(res.status).toBe(401);
      expect(res.body).toEqual({ message: "Unauthorized", request_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    }
  });
});

/**
 * The same on one Redis and on a Redis Cluster (spec/helpers/backends.ts), where the
 * workers subscribe on different masters and the key's {k} slot is on one of them.
 */
describe.each(BACKENDS)("revocation (%s redis)", (kind) => {
  const on = {} as { gw: TestGateway; gw2: TestGateway; redis: KeysRedis; backend?: RedisBackend };
  beforeAll(async () => {
    if (kind === "single") {
      Object.assign(on, { gw, gw2, redis });
      return;
    }
    const backend = await redisBackend(kind);
    const [a, b] = await Promise.all([gateway(mainConfig(backend.redis)), gateway(mainConfig(backend.redis))]);
    Object.assign(on, { gw: a, gw2: b, redis: withScripts(backend.client as Redis), backend });
    await waitFor("4 subscribed workers", async () => (await backend.subscribers(CHANNEL)) >= 4, 10_000);
  }, 90_000);

  afterAll(async () => {
    if (kind === "single") return;
    for (const g of [on.gw, on.gw2]) {
      const log = g.errorLog().join("\n");
      for (const key of createdKeys) expect(log).not.toContain(key);
      expect(g.unexpectedErrors()).toEqual([]);
    }
    await Promise.all([on.gw.stop(), on.gw2.stop()]);
  });

  const lookups = () => (on.backend !== undefined ? on.backend.commandCalls(["hgetall"]) : hgetallCalls(redis));

  async function statuses(g: TestGateway, key: string, n: number): Promise<number[]> {
    return Promise.all(Array.from({ length: n }, async () => (await raw(`${g.proxyUrl}/longcache/anything`, { headers: { apikey: key } })).status));
  }

  /** Until every worker of both gateways has the key cached (no more HGETALL for it). */
  async function warm(key: string): Promise<void> {
    const { gw, gw2 } = on;
    await waitFor("both gateways to cache the key", async () => {
      await Promise.all([statuses(gw, key, 10), statuses(gw2, key, 10)]);
      const before = await lookups();
      const all = [...(await statuses(gw, key, 20)), ...(await statuses(gw2, key, 20))];
      expect(all.every((s) => s === 200)).toBe(true);
      return (await lookups()) === before;
    }, 10_000);
  }

  async function propagation(key: string, revoke: () => Promise<void>): Promise<number> {
    const { gw, gw2 } = on;
    await warm(key);
    await revoke();
    const started = Date.now();
    // cache_ttl is 300 s on this route: only the invalidation can make these 401 in time.
    await waitFor("every worker of both gateways to refuse the key", async () => {
      const all = [...(await statuses(gw, key, 8)), ...(await statuses(gw2, key, 8))];
      return all.every((s) => s === 401);
    }, 1000);
    const elapsed = Date.now() - started;
    const after = [...(await statuses(gw, key, 20)), ...(await statuses(gw2, key, 20))];
    expect(after.every((s) => s === 401)).toBe(true);
    return elapsed;
  }

  it("revoked from the CLI side (by key): refused on every worker of a second gateway within a second", async () => {
    const { key } = await newKey({}, on.redis);
    const elapsed = await propagation(key, async () => {
      expect(await revokeKey(on.redis, key)).toBeDefined();
    });
    console.log(`${kind} redis: revocation (CLI, by key) seen by every worker of 2 gateways after ${elapsed} ms`);
    expect(elapsed).toBeLessThan(1000);
  });

  it("revoked through the Admin API (by id): refused everywhere within a second", async () => {
    const { key, id } = await newKey({}, on.redis);
    const elapsed = await propagation(key, async () => {
      const res = await fetch(`${on.gw.adminUrl}/redis-key-auth/keys/${id}`, { method: "DELETE" });
      expect(res.status).toBe(204);
    });
    console.log(`${kind} redis: revocation (Admin API, by id) seen by every worker of 2 gateways after ${elapsed} ms`);
    expect(elapsed).toBeLessThan(1000);
  });
});

describe("worker cache", () => {
  it("warm: zero Redis calls per request; one lookup for a burst of misses; unknown keys cached for negative_cache_ttl", async () => {
    const r2 = await startRedis();
    const admin = new Redis({ port: r2.port });
    const keys2 = withScripts(new Redis({ port: r2.port }));
    const one = await gateway({
      _format_version: "3.0",
      services: [{ name: "svc", url: upstreamUrl, routes: [{ name: "auth", paths: ["/auth"], plugins: [plugin(r2.port, { cache_ttl: 60, negative_cache_ttl: 1 })] }] }],
      consumers,
    }, { workers: 1 });
    await subscribed(admin, 1);
    const { key } = await createKey(keys2, { consumer: "alice" });
    createdKeys.push(key);
    expect((await getJson(`${one.proxyUrl}/auth/anything`, { headers: { apikey: key } })).status).toBe(200);
    await admin.config("RESETSTAT");
    const results = await Promise.all(Array.from({ length: 200 }, async () => (await raw(`${one.proxyUrl}/auth/anything`, { headers: { apikey: key } })).status));
    expect(results.every((s) => s === 200)).toBe(true);
    const stats = await admin.info("commandstats");
    const calls = [...stats.matchAll(/cmdstat_([a-z|]+):calls=(\d+)/g)].filter(([, name]) => !["config|resetstat", "info", "ping"].includes(name));
    expect(calls).toEqual([]);

    // Past negative_cache_ttl (1 s), well within cache_ttl (60 s): a valid key kept only
    // for the negative TTL would be looked up again here.
    await new Promise((r) => setTimeout(r, 1500));
    await admin.config("RESETSTAT");
    for (let i = 0; i < 5; i++) expect((await raw(`${one.proxyUrl}/auth/anything`, { headers: { apikey: key } })).status).toBe(200);
    expect(await hgetallCalls(admin)).toBe(0);

    // A burst of requests missing the same key: one lookup, the others wait for it.
    const { key: fresh } = await createKey(keys2, { consumer: "bob" });
    createdKeys.push(fresh);
    await admin.config("RESETSTAT");
    const burst = await Promise.all(Array.from({ length: 50 }, async () => (await raw(`${one.proxyUrl}/auth/anything`, { headers: { apikey: fresh } })).json().headers["x-consumer-username"]));
    expect(burst.every((u) => u === "bob")).toBe(true);
    expect(await hgetallCalls(admin)).toBe(1);

    const unknown = "U".repeat(43);
    await admin.config("RESETSTAT");
    for (let i = 0; i < 5; i++) expect((await raw(`${one.proxyUrl}/auth/anything`, { headers: { apikey: unknown } })).status).toBe(401);
    expect(await hgetallCalls(admin)).toBe(1);
    await new Promise((r) => setTimeout(r, 1100));
    expect((await raw(`${one.proxyUrl}/auth/anything`, { headers: { apikey: unknown } })).status).toBe(401);
    expect(await hgetallCalls(admin)).toBe(2);
    admin.disconnect();
    keys2.disconnect();
    expect(one.unexpectedErrors()).toEqual([]);
  });
});

describe("Redis down", () => {
  it("fail closed: cached keys keep working (a few seconds past cache_ttl), others get 500; back up: the cache is dropped", async () => {
    const r3 = await startRedis();
    const port = r3.port;
    const keys3 = withScripts(new Redis({ port, maxRetriesPerRequest: 0 }));
    keys3.on("error", () => undefined);
    const down = await gateway({
      _format_version: "3.0",
      services: [{
        name: "svc",
        url: upstreamUrl,
        routes: [
          { name: "closed", paths: ["/closed"], plugins: [plugin(port, { cache_ttl: 1, redis: { port, timeout: 500 } })] },
          { name: "open", paths: ["/open"], plugins: [plugin(port, { fault_tolerant: true, redis: { port, timeout: 500 } })] },
        ],
      }],
      consumers,
    }, { workers: 1 });
    await subscribed(keys3, 1);
    const { key } = await createKey(keys3, { consumer: "alice" });
    createdKeys.push(key);
    const other = await createKey(keys3, { consumer: "bob" });
    createdKeys.push(other.key);
    expect((await getJson(`${down.proxyUrl}/closed/anything`, { headers: { apikey: key } })).status).toBe(200);
    keys3.disconnect();
    await r3.stop();

    const cached = await getJson(`${down.proxyUrl}/closed/anything`, { headers: { apikey: key } });
    expect(cached.status).toBe(200);
    expect(cached.body.headers["x-consumer-username"]).toBe("alice");
    await new Promise((r) => setTimeout(r, 1300));
    // Past cache_ttl but within its grace: Redis cannot be asked, the key this worker knew keeps working.
    expect((await getJson(`${down.proxyUrl}/closed/anything`, { headers: { apikey: key } })).status).toBe(200);

    const uncached = await getJson(`${down.proxyUrl}/closed/anything`, { headers: { apikey: other.key } });
    expect(uncached.status).toBe(500);
    expect(uncached.body).toEqual({ message: "An unexpected error occurred" });
    // No key needs no Redis.
    expect((await getJson(`${down.proxyUrl}/closed/anything`)).status).toBe(401);

    // fault_tolerant: unchecked, the request goes on without any identity (forged ones removed).
    const open = await getJson(`${down.proxyUrl}/open/anything`, { headers: { apikey: other.key, "x-consumer-username": "forged" } });
    expect(open.status).toBe(200);
    expect(open.body.headers["x-consumer-username"]).toBeUndefined();
    expect(open.body.headers["x-consumer-id"]).toBeUndefined();

    // The same port again, empty (no persistence): once the subscriber is back, the
    // cache is dropped and the key, unknown to this Redis, is refused.
    const dir = tempDir("redis-again");
    const again = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], { stdio: "ignore" });
    try {
      const waited = await waitFor("the restarted Redis to be seen", async () => {
        const res = await getJson(`${down.proxyUrl}/closed/anything`, { headers: { apikey: key } });
        return res.status === 401;
      }, 15_000);
      console.log(`after Redis came back, the dropped cache was seen after ${waited} ms`);
    } finally {
      again.kill("SIGKILL");
    }
    const errors = down.unexpectedErrors(EXPECTED_REDIS_ERRORS);
    expect(errors).toEqual([]);
    const log = down.errorLog().join("\n");
    expect(log).toMatch(/\[redis-key-auth\] redis unavailable/);
    expect(log).toMatch(/\[redis-key-auth:subscriber\] invalidation subscriber lost the subscription/);
    expect(log).not.toContain(key);
    expect(log).not.toContain(other.key);
  });
});

describe("Redis down, a revocation missed", () => {
  it("a cached key works at most cache_ttl + 5 s after Redis last confirmed it (fault_tolerant false), longer with fault_tolerant", async () => {
    const r5 = await startRedis();
    const port = r5.port;
    const keys5 = withScripts(new Redis({ port, maxRetriesPerRequest: 0 }));
    keys5.on("error", () => undefined);
    const g = await gateway({
      _format_version: "3.0",
      services: [{
        name: "svc",
        url: upstreamUrl,
        routes: [
          { name: "closed", paths: ["/closed"], plugins: [plugin(port, { cache_ttl: 1, redis: { port, timeout: 500 } })] },
          { name: "tolerant", paths: ["/tolerant"], plugins: [plugin(port, { cache_ttl: 1, fault_tolerant: true, redis: { port, timeout: 500 } })] },
        ],
      }],
      consumers,
    }, { workers: 1 });
    await subscribed(keys5, 1);
    const { key } = await createKey(keys5, { consumer: "alice" });
    createdKeys.push(key);
    // Both routes share one Redis, so one worker cache: this lookup is the last confirmation.
    expect((await getJson(`${g.proxyUrl}/closed/anything`, { headers: { apikey: key } })).status).toBe(200);
    const checkedAt = Date.now();
    // Revoked without the invalidation reaching the gateway, then Redis goes away.
    expect(await keys5.del(recordKey(hashKey(key)))).toBe(1);
    keys5.disconnect();
    await r5.stop();

    await sleepUntil(checkedAt + 1500);
    expect((await getJson(`${g.proxyUrl}/closed/anything`, { headers: { apikey: key } })).status).toBe(200);
    await sleepUntil(checkedAt + 1000 + 5000 + 700);
    const refused = await getJson(`${g.proxyUrl}/closed/anything`, { headers: { apikey: key } });
    expect(refused.status).toBe(500);
    expect(refused.body).toEqual({ message: "An unexpected error occurred" });
    // fault_tolerant: still identified (up to cache_ttl + 300 s), not let through anonymous.
    const tolerant = await getJson(`${g.proxyUrl}/tolerant/anything`, { headers: { apikey: key } });
    expect(tolerant.status).toBe(200);
    expect(tolerant.body.headers["x-consumer-username"]).toBe("alice");
    expect(g.unexpectedErrors(EXPECTED_REDIS_ERRORS)).toEqual([]);
  });
});

describe("instances sharing one Redis", () => {
  it("each honours its own cache_ttl and negative_cache_ttl: an entry cached under a longer one is not fresh for a shorter one", async () => {
    const r6 = await startRedis();
    const port = r6.port;
    const keys6 = withScripts(new Redis({ port, maxRetriesPerRequest: 0 }));
    const g = await gateway({
      _format_version: "3.0",
      services: [{
        name: "svc",
        url: upstreamUrl,
        routes: [
          { name: "long", paths: ["/long"], plugins: [plugin(port, { cache_ttl: 300, negative_cache_ttl: 300 })] },
          { name: "short", paths: ["/short"], plugins: [plugin(port, { cache_ttl: 1, negative_cache_ttl: 1 })] },
        ],
      }],
      consumers,
    }, { workers: 1 });
    await subscribed(keys6, 1);
    const { key } = await createKey(keys6, { consumer: "alice" });
    createdKeys.push(key);
    expect((await getJson(`${g.proxyUrl}/long/anything`, { headers: { apikey: key } })).status).toBe(200);
    // Revoked without the invalidation (a lost message): only cache_ttl bounds it.
    expect(await keys6.del(recordKey(hashKey(key)))).toBe(1);
    await new Promise((r) => setTimeout(r, 1300));
    expect((await getJson(`${g.proxyUrl}/short/anything`, { headers: { apikey: key } })).status).toBe(401);

    // Likewise for unknown keys and negative_cache_ttl.
    const later = newApiKey();
    expect((await getJson(`${g.proxyUrl}/long/anything`, { headers: { apikey: later } })).status).toBe(401);
    await createKey(keys6, { consumer: "alice" }, { key: later });
    createdKeys.push(later);
    await new Promise((r) => setTimeout(r, 1300));
    expect((await getJson(`${g.proxyUrl}/short/anything`, { headers: { apikey: later } })).status).toBe(200);
    keys6.disconnect();
    expect(g.unexpectedErrors(EXPECTED_REDIS_ERRORS)).toEqual([]);
  });
});

describe("Admin API", () => {
  it("creates (the key once), lists (never a key), revokes by id and by key", async () => {
    const created = await getJson(`${gw.adminUrl}/redis-key-auth/keys`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ consumer: "bob", custom_id: "bob-cid", ttl: 3600 }),
    });
    expect(created.status).toBe(201);
    const { key, id } = created.body;
    createdKeys.push(key);
    expect(key).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(created.body.consumer).toEqual({ id: null, username: "bob", custom_id: "bob-cid" });
    // created_at is the second it was created in; expires_at is rounded up from the exact moment.
    expect(created.body.expires_at - created.body.created_at).toBeGreaterThanOrEqual(3600);
    expect(created.body.expires_at - created.body.created_at).toBeLessThanOrEqual(3601);
    expect((await getJson(`${gw2.proxyUrl}/auth/anything`, { headers: { apikey: key } })).body.headers["x-credential-identifier"]).toBe(id);

    const form = await getJson(`${gw.adminUrl}/redis-key-auth/keys`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "consumer=bob",
    });
    expect(form.status).toBe(201);
    createdKeys.push(form.body.key);
    expect(form.body.expires_at).toBeNull();

    const listRes = await fetch(`${gw.adminUrl}/redis-key-auth/keys?consumer=bob`);
    const listText = await listRes.text();
    const list = JSON.parse(listText);
    expect(list.next).toBeNull();
    const ids = list.data.map((k: { id: string }) => k.id);
    expect(ids).toContain(id);
    expect(ids).toContain(form.body.id);
    for (const k of list.data) expect(k.consumer.username).toBe("bob");
    for (const secret of createdKeys) expect(listText).not.toContain(secret);
    expect(listText).not.toMatch(/[0-9a-f]{64}/);
    const all = (await getJson(`${gw.adminUrl}/redis-key-auth/keys`)).body.data;
    expect(all.some((k: { consumer: { username: string } }) => k.consumer.username === "alice")).toBe(true);
    expect((await getJson(`${gw.adminUrl}/redis-key-auth/keys?consumer=nobody`)).body).toEqual({ data: [], next: null });

    expect((await fetch(`${gw.adminUrl}/redis-key-auth/keys/${id}`, { method: "DELETE" })).status).toBe(204);
    expect((await fetch(`${gw.adminUrl}/redis-key-auth/keys/${id}`, { method: "DELETE" })).status).toBe(404);
    expect((await fetch(`${gw.adminUrl}/redis-key-auth/keys/${form.body.key}`, { method: "DELETE" })).status).toBe(204);
    expect((await fetch(`${gw.adminUrl}/redis-key-auth/keys/${form.body.key}`, { method: "DELETE" })).status).toBe(404);
    expect((await fetch(`${gw.adminUrl}/redis-key-auth/keys/not-a-key`, { method: "DELETE" })).status).toBe(404);
    const after = (await getJson(`${gw.adminUrl}/redis-key-auth/keys?consumer=bob`)).body.data.map((k: { id: string }) => k.id);
    expect(after).not.toContain(id);
    expect(after).not.toContain(form.body.id);
  });

  it("refuses bad input with 400", async () => {
    const post = (body: unknown) => getJson(`${gw.adminUrl}/redis-key-auth/keys`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    expect((await post({})).status).toBe(400);
    expect((await post({ consumer: "bob", ttl: 0 })).body).toEqual({ message: "ttl: expected whole seconds between 1 and 2147483647" });
    expect((await post({ consumer: "bob", ttl: 1.5 })).status).toBe(400);
    expect((await post({ consumer: "bob", ttl: "soon" })).status).toBe(400);
    expect((await post({ consumer: 42 })).status).toBe(400);
    expect((await post({ consumer: "nobody-in-kong" })).body).toEqual({ message: "consumer: no consumer named 'nobody-in-kong'" });
    expect((await post({ consumer: "bob", consumer_id: "00000000-0000-4000-8000-000000000000" })).status).toBe(400);
    // Kong's consumer ids are uuids: anything else is refused before Kong is asked.
    const notUuid = await post({ consumer: "bob", consumer_id: "bob" });
    expect(notUuid.status).toBe(400);
    expect(notUuid.body).toEqual({ message: "consumer_id: expected a valid UUID" });
    expect((await getJson(`${gw.adminUrl}/redis-key-auth/keys?redis=10.0.0.1:6379`)).status).toBe(400);
    expect((await getJson(`${gw.adminUrl}/redis-key-auth/keys?redis=127.0.0.1:${redisServer.port}/0`)).status).toBe(200);
  });
});

describe("krs keys (CLI)", () => {
  function krs(args: string[], env: Record<string, string> = {}) {
    const res = spawnSync("node", [join(ROOT, "bin", "krs.mjs"), "keys", ...args], { encoding: "utf8", env: { ...process.env, ...env } });
    return { status: res.status, stdout: res.stdout, stderr: res.stderr };
  }

  it("create prints the key alone on the last line; list never shows it; revoke by id", async () => {
    const url = `redis://127.0.0.1:${redisServer.port}/0`;
    const created = krs(["create", "--consumer", "bob", "--custom-id", "cli", "--ttl", "600", "--redis", url]);
    expect(created.status, created.stderr).toBe(0);
    const lines = created.stdout.trimEnd().split("\n");
    const key = lines[lines.length - 1];
    createdKeys.push(key);
    expect(key).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const id = /created key ([0-9a-f-]{36})/.exec(created.stdout)![1];
    expect(created.stdout.split(key).length).toBe(2);
    const res = await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: key } });
    expect(res.status).toBe(200);
    expect(res.body.headers["x-consumer-username"]).toBe("bob");

    const listed = krs(["list", "--consumer", "bob"], { KRS_REDIS_URL: url });
    expect(listed.status).toBe(0);
    expect(listed.stdout).toContain(id);
    expect(listed.stdout).not.toContain(key);
    const json = JSON.parse(krs(["list", "--json", "--redis", url]).stdout);
    expect(json.find((k: { id: string }) => k.id === id).consumer).toEqual({ id: null, username: "bob", custom_id: "cli" });

    expect(krs(["revoke", id, "--redis", url])).toMatchObject({ status: 0, stdout: `revoked key ${id}\n` });
    await waitFor("the revoked key to be refused", async () => (await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: key } })).status === 401, 1000);
    expect(krs(["revoke", key, "--redis", url]).status).toBe(1);
  });

  it("fails clearly: usage errors exit 2, an unreachable Redis exits 1", () => {
    expect(krs(["create"]).status).toBe(2);
    expect(krs(["create", "--consumer", "bob", "--ttl", "-5"]).status).toBe(2);
    expect(krs(["revoke"]).status).toBe(2);
    expect(krs(["frobnicate"]).status).toBe(2);
    // A consumer id that is not a uuid could never authenticate: refused before Redis is touched.
    const notUuid = krs(["create", "--consumer", "bob", "--consumer-id", "bob", "--redis", `redis://127.0.0.1:${redisServer.port}/0`]);
    expect(notUuid.status).toBe(2);
    expect(notUuid.stderr).toContain("--consumer-id: expected the consumer's id, a uuid");
    expect(notUuid.stdout).toBe("");
    const bad = krs(["list", "--redis", "http://example.com"]);
    expect(bad.status).toBe(2);
    const down = krs(["list", "--redis", "redis://:secret-pw@127.0.0.1:1/0"]);
    expect(down.status).toBe(1);
    expect(down.stderr).toMatch(/could not connect to redis/);
    expect(down.stderr).not.toContain("secret-pw");
  });
});

describe("subscribers follow the configuration", () => {
  it("one per worker while a config uses the Redis, none once it does not; a removed consumer's keys stop working", async () => {
    const r4 = await startRedis();
    const admin = new Redis({ port: r4.port });
    const numsub = () => subscribers(admin);
    const withPlugin = {
      _format_version: "3.0",
      services: [{ name: "svc", url: upstreamUrl, routes: [{ name: "auth", paths: ["/auth"], plugins: [plugin(r4.port)] }] }],
      consumers,
    };
    const g = await gateway(withPlugin, { workers: 2 });
    await waitFor("2 subscribers", async () => (await numsub()) === 2, 5000);
    const post = (config: unknown) => fetch(`${g.adminUrl}/config`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(config) });

    // A consumer removed from the configuration: its keys stop working with it (cached or not).
    const keys4 = withScripts(new Redis({ port: r4.port }));
    const { key } = await createKey(keys4, { consumer: "bob" });
    createdKeys.push(key);
    keys4.disconnect();
    const bobStatus = async () => (await raw(`${g.proxyUrl}/auth/anything`, { headers: { apikey: key } })).status;
    expect(await bobStatus()).toBe(200);
    expect((await post({ ...withPlugin, consumers: consumers.filter((c) => c.username !== "bob") })).status).toBe(201);
    await waitFor("bob's key to be refused on every worker", async () => (await Promise.all([1, 2, 3, 4, 5, 6].map(bobStatus))).every((st) => st === 401), 3000);
    const without = { _format_version: "3.0", services: [{ name: "svc", url: upstreamUrl, routes: [{ name: "auth", paths: ["/auth"] }] }], consumers };
    expect((await post(without)).status).toBe(201);
    await waitFor("no subscriber", async () => (await numsub()) === 0, 5000);
    expect((await post(withPlugin)).status).toBe(201);
    await waitFor("2 subscribers again", async () => (await numsub()) === 2, 5000);
    admin.disconnect();
    expect(g.unexpectedErrors()).toEqual([]);
  });
});

describe("junk keys", () => {
  it("12,000 well-formed unknown keys do not evict a valid key: with Redis then gone, it still authenticates", async () => {
    const r8 = await startRedis();
    const port = r8.port;
    const keys8 = withScripts(new Redis({ port, maxRetriesPerRequest: 0 }));
    keys8.on("error", () => undefined);
    const g = await gateway({
      _format_version: "3.0",
      services: [{ name: "svc", url: upstreamUrl, routes: [{ name: "auth", paths: ["/auth"], plugins: [plugin(port, { cache_ttl: 300, negative_cache_ttl: 300, redis: { port, timeout: 500 } })] }] }],
      consumers,
    }, { workers: 1 });
    await subscribed(keys8, 1);
    const { key } = await createKey(keys8, { consumer: "alice" });
    createdKeys.push(key);
    expect((await getJson(`${g.proxyUrl}/auth/anything`, { headers: { apikey: key } })).status).toBe(200);

    // More junk than the 10,000 entries a worker cache holds, over kept-alive connections.
    const agent = new Agent({ keepAlive: true, maxSockets: 16 });
    const status = (apikey: string) => new Promise<number>((res, rej) => {
      const req = httpRequest(`${g.proxyUrl}/auth/anything`, { agent, headers: { apikey } }, (r) => {
        r.resume();
        r.on("end", () => res(r.statusCode ?? 0));
      });
      req.on("error", rej);
      req.end();
    });
    const JUNK = 12_000;
    const counts = new Map<number, number>();
    await Promise.all(Array.from({ length: 16 }, async (_, lane) => {
      for (let i = lane; i < JUNK; i += 16) {
        const st = await status(`junk${String(i).padStart(39, "0")}`);
        counts.set(st, (counts.get(st) ?? 0) + 1);
      }
    }));
    agent.destroy();
    expect(Object.fromEntries(counts)).toEqual({ 401: JUNK });

    keys8.disconnect();
    await r8.stop();
    const res = await getJson(`${g.proxyUrl}/auth/anything`, { headers: { apikey: key } });
    expect(res.status).toBe(200);
    expect(res.body.headers["x-consumer-username"]).toBe("alice");
    expect(g.unexpectedErrors(EXPECTED_REDIS_ERRORS)).toEqual([]);
  }, 60_000);
});

describe("a config change during a Redis outage", () => {
  it("keeps the cached keys: an unrelated POST /services does not turn a warm key into 500", async () => {
    const r7 = await startRedis();
    const port = r7.port;
    const keys7 = withScripts(new Redis({ port, maxRetriesPerRequest: 0 }));
    keys7.on("error", () => undefined);
    const g = await gateway({
      _format_version: "3.0",
      services: [{ name: "svc", url: upstreamUrl, routes: [{ name: "auth", paths: ["/auth"], plugins: [plugin(port, { cache_ttl: 30, redis: { port, timeout: 500 } })] }] }],
      consumers,
    }, { workers: 1 });
    await subscribed(keys7, 1);
    const { key } = await createKey(keys7, { consumer: "alice" });
    createdKeys.push(key);
    expect((await getJson(`${g.proxyUrl}/auth/anything`, { headers: { apikey: key } })).status).toBe(200);
    keys7.disconnect();
    await r7.stop();
    const statuses = async () => Promise.all(Array.from({ length: 30 }, async () => (await raw(`${g.proxyUrl}/auth/anything`, { headers: { apikey: key } })).status));
    expect(await statuses()).toEqual(Array(30).fill(200));

    const created = await getJson(`${g.adminUrl}/services`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "unrelated", url: upstreamUrl }),
    });
    expect(created.status).toBe(201);
    expect(await statuses()).toEqual(Array(30).fill(200));
    const res = await getJson(`${g.proxyUrl}/auth/anything`, { headers: { apikey: key } });
    expect(res.body.headers["x-consumer-username"]).toBe("alice");
    expect(g.unexpectedErrors(EXPECTED_REDIS_ERRORS)).toEqual([]);
  });
});

describe("401 answers on one worker", () => {
  it("a text/plain 401 does not make the next 401 of that instance text/plain for a JSON client", async () => {
    const g = await gateway({
      _format_version: "3.0",
      services: [{ name: "svc", url: upstreamUrl, routes: [{ name: "auth", paths: ["/auth"], plugins: [plugin(redisServer.port, { realm: "one" })] }] }],
      consumers,
    }, { workers: 1 });
    const plain = await raw(`${g.proxyUrl}/auth/anything`, { headers: { accept: "text/plain" } });
    expect(plain.status).toBe(401);
    expect(plain.headers["content-type"]).toMatch(/^text\/plain/);
    for (const accept of ["application/json", "*/*"]) {
      const json = await raw(`${g.proxyUrl}/auth/anything`, { headers: { accept } });
      expect(json.status).toBe(401);
      expect(json.headers["content-type"]).toMatch(/^application\/json/);
      expect(json.json()).toMatchObject({ message: "No API key found in request" });
      expect(json.headers["www-authenticate"]).toBe('Key realm="one"');
    }
    expect(g.unexpectedErrors(EXPECTED_REDIS_ERRORS)).toEqual([]);
  });
});

describe("key TTLs", () => {
  /** Until the clock is `from` to `to` ms into a second (a whole-second truncation of the creation time costs that much). */
  async function lateInASecond(from = 600, to = 850): Promise<void> {
    for (let i = 0; i < 100 && !(Date.now() % 1000 >= from && Date.now() % 1000 < to); i++) await new Promise((r) => setTimeout(r, 10));
  }
  const TTL = 3;

  it("a key created with ttl: 3 (Admin API, or the CLI's createKey) works at least 3 s, and less than 1 s more", async () => {
    await lateInASecond();
    const started = Date.now();
    const [viaApi, viaCli] = await Promise.all([
      getJson(`${gw.adminUrl}/redis-key-auth/keys`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ consumer: "alice", ttl: TTL }) }),
      newKey({ ttl: TTL }),
    ]);
    expect(viaApi.status).toBe(201);
    createdKeys.push(viaApi.body.key);
    for (const expiresAt of [viaApi.body.expires_at, viaCli.expiresAt]) {
      expect(expiresAt * 1000).toBeGreaterThanOrEqual(started + TTL * 1000);
      expect(expiresAt * 1000).toBeLessThan(started + TTL * 1000 + 1000 + 100);
    }
    const status = async (key: string) => (await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: key } })).status;
    await sleepUntil(started + TTL * 1000 - 150);
    expect([await status(viaApi.body.key), await status(viaCli.key)]).toEqual([200, 200]);
    await sleepUntil(started + (TTL + 1) * 1000 + 200);
    expect([await status(viaApi.body.key), await status(viaCli.key)]).toEqual([401, 401]);
  });

  it("krs keys create --ttl 3: the printed expiry is at least 3 s after the command started", async () => {
    const url = `redis://127.0.0.1:${redisServer.port}/0`;
    // Early in a second, so the CLI's start-up does not carry its creation into the next one.
    await lateInASecond(0, 150);
    const started = Date.now();
    const out = await new Promise<string>((res, rej) => {
      const child = spawn("node", [join(ROOT, "bin", "krs.mjs"), "keys", "create", "--consumer", "bob", "--ttl", String(TTL), "--redis", url], { stdio: ["ignore", "pipe", "inherit"] });
      let text = "";
      child.stdout.on("data", (c: Buffer) => (text += c.toString()));
      child.on("error", rej);
      child.on("close", (code) => (code === 0 ? res(text) : rej(new Error(`krs exited ${code}`))));
    });
    const lines = out.trimEnd().split("\n");
    createdKeys.push(lines[lines.length - 1]);
    const expires = Date.parse(/expires: (\S+)/.exec(out)![1]);
    expect(expires).toBeGreaterThanOrEqual(started + TTL * 1000);
    expect((await getJson(`${gw.proxyUrl}/auth/anything`, { headers: { apikey: lines[lines.length - 1] } })).status).toBe(200);
  });
});

describe("error log", () => {
  it("no unexpected errors in the main gateways", () => {
    expect(gw.unexpectedErrors(EXPECTED_REDIS_ERRORS)).toEqual([]);
    expect(gw2.unexpectedErrors(EXPECTED_REDIS_ERRORS)).toEqual([]);
  });
});

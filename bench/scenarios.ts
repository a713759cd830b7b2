import { createHmac, generateKeyPairSync, sign } from "node:crypto";
// Benchmark scenarios. To add one (a plugin, say), append an entry to SCENARIOS: give it
// a gateway config (usually `oneService(env, { plugins: [...] })`), a path, and the
// scenario it is compared with (usually `gateway-no-plugins`).

/** What a scenario's config and setup can use: the ports this run started things on. */
export interface BenchEnv {
  /** Base URL of the nginx benchmark upstream, e.g. http://127.0.0.1:41234 */
  upstreamUrl: string;
  /** Port of the run's redis-server; set only when the scenario has `needsRedis`. */
  redisPort?: number;
  /** `cluster_nodes` of the run's Redis Cluster; set only when the scenario has `needsRedisCluster`. */
  clusterNodes?: { ip: string; port: number }[];
}

/** Kong 3.x declarative config (the subset the benchmarks use). */
export interface DeclarativeConfig {
  _format_version: "3.0";
  services?: ServiceEntry[];
  routes?: (RouteEntry & { service: { name: string } })[];
  plugins?: PluginEntry[];
  consumers?: ConsumerEntry[];
}

export interface ServiceEntry {
  name: string;
  url: string;
  routes?: RouteEntry[];
  plugins?: PluginEntry[];
}

export interface RouteEntry {
  name: string;
  paths?: string[];
  hosts?: string[];
  methods?: string[];
  strip_path?: boolean;
  plugins?: PluginEntry[];
}

export interface PluginEntry {
  /** An explicit id (otherwise the gateway derives one from the plugin's name and scope). */
  id?: string;
  name: string;
  config?: Record<string, unknown>;
  enabled?: boolean;
}

export interface ConsumerEntry {
  username: string;
  custom_id?: string;
  plugins?: PluginEntry[];
}

interface ScenarioBase {
  name: string;
  /** One line for the report. */
  description: string;
  /** Request path (with query) that wrk sends. */
  path: string;
  method?: string;
  body?: string;
  headers?: Record<string, string>;
  /**
   * Extra Lua for wrk's script (e.g. a `request` function that varies keys). The global
   * `bench_run` is a string unique to each wrk run of the invocation (warm-up, each round):
   * keys that must be new on every request include it, as the rounds re-run the script.
   */
  wrkLua?: string;
  /** Name of the scenario this one is compared with; it runs in the same invocation. */
  baseline?: string;
  /**
   * The req/s ratio to the baseline this scenario should reach (the chart's goal line):
   * only goals an issue sets against this same baseline, none invented.
   */
  goal?: number;
  /** The most Redis commands per request (INFO commandstats delta / requests) an issue allows this scenario. */
  maxRedisPerRequest?: number;
  /** Status a single check request must get before the load starts (default 200).
   *  When it is >= 400, wrk's error-status count is expected and not flagged. */
  expectStatus?: number;
  /** Start a redis-server for this scenario (its port is `env.redisPort`). */
  needsRedis?: boolean;
  /** Start a Redis Cluster (3 masters, 3 replicas) for this scenario (`env.clusterNodes`). */
  needsRedisCluster?: boolean;
  /** Runs after the processes are up and before the check request (e.g. seed Redis). */
  setup?: (env: BenchEnv) => Promise<void>;
  /**
   * Gateway nodes on the same config and Redis (default 1). With 2, wrk's threads and
   * connections are split between them (one wrk per node, run at the same time) and the
   * results summed (requests, req/s, errors; latency percentiles: the higher node's).
   */
  nodes?: 1 | 2;
  /**
   * Runs of this scenario (B S B S ... B), instead of the run's `--rounds`: 1 where a
   * second run would measure something else (state the first one consumed, e.g. a limit
   * reached). A baseline is measured around every run of the scenarios that use it, so
   * a scenario with `rounds`, `noWarmup` or `verify` cannot be anyone's baseline.
   */
  rounds?: 1;
  /** No warmup run (a scenario that counts every admitted request from the first one). */
  noWarmup?: boolean;
  /** The load is expected to get rejections (status >= 400) as well: not flagged. */
  rejectionsExpected?: boolean;
  /**
   * Runs after the load: what it returns are flags (an empty list: all is well).
   * `admitted` is the 2xx responses seen from the check request on, every wrk run included.
   */
  verify?: (env: BenchEnv, seen: { admitted: number; startedAt: number; endedAt: number }) => Promise<string[]>;
}

export type Scenario =
  | (ScenarioBase & { target: "upstream" })
  /** nginx's proxy_pass to the upstream, without Lua (bench/nginx-plain-proxy.conf). */
  | (ScenarioBase & { target: "plain-proxy" })
  | (ScenarioBase & { target: "gateway"; config: (env: BenchEnv) => DeclarativeConfig });

/** The usual shape: one service pointing at the benchmark upstream, one route on "/". */
export function oneService(
  env: BenchEnv,
  extra: { plugins?: PluginEntry[]; routePlugins?: PluginEntry[]; consumers?: ConsumerEntry[] } = {},
): DeclarativeConfig {
  const config: DeclarativeConfig = {
    _format_version: "3.0",
    services: [
      {
        name: "bench",
        url: env.upstreamUrl,
        routes: [{ name: "bench-root", paths: ["/"], ...(extra.routePlugins !== undefined ? { plugins: extra.routePlugins } : {}) }],
        ...(extra.plugins !== undefined ? { plugins: extra.plugins } : {}),
      },
    ],
  };
  if (extra.consumers !== undefined) config.consumers = extra.consumers;
  return config;
}

const RATE_LIMIT_ID = "5f0c6a2e-3b7d-4c1e-9a84-6d2f1b7e0c93";

/** Uses up the hour's limit of 1 for wrk's client IP, through the plugin's own script, as a first request would. */
async function useUpRateLimit(env: BenchEnv): Promise<void> {
  const { Redis } = await import("ioredis");
  const { loadScript } = await import("../src/cli/redis.js");
  const source = loadScript("rate-limit").lua;
  const hour = 3_600_000;
  const now = Date.now();
  const start = now - (now % hour);
  const redis = new Redis({ port: env.redisPort });
  try {
    const key = `krs:redis-rate-limit:v1:{${RATE_LIMIT_ID}:ip:127.0.0.1}`;
    await redis.eval(source, 1, key, now, "sliding", 3 * hour, 1, "hour", 1, start, hour, start - hour, hour);
  } finally {
    redis.disconnect();
  }
}

const NEAR_LIMIT_ID = "0b7d2c4e-8f1a-4e6b-9c3d-5a7e9f1b2d48";
/** rate-limit-near-limit's hourly limit: reached within a few seconds by 2 nodes under wrk. */
const NEAR_LIMIT = 5000;

/** The gateways' readiness probes (GET /) were admitted too: the count starts from the check request. */
async function resetNearLimit(env: BenchEnv): Promise<void> {
  const { Redis } = await import("ioredis");
  const redis = new Redis({ port: env.redisPort });
  try {
    await redis.del(`krs:redis-rate-limit:v1:{${NEAR_LIMIT_ID}:ip:127.0.0.1}`);
  } finally {
    redis.disconnect();
  }
}

/**
 * rate-limit-near-limit: the 2xx responses wrk saw (with the check request) are exactly the
 * limit, and once the leases are back (lease_ttl, 1 s) Redis counts exactly that too.
 * Flagged otherwise, and when the run crossed an hour boundary (two windows' worth).
 */
async function verifyNearLimit(env: BenchEnv, seen: { admitted: number; startedAt: number; endedAt: number }): Promise<string[]> {
  const hour = 3_600_000;
  const flags: string[] = [];
  if (Math.floor(seen.startedAt / hour) !== Math.floor(seen.endedAt / hour)) return ["the run crossed an hour boundary: admitted count not checked"];
  const { Redis } = await import("ioredis");
  await new Promise((r) => setTimeout(r, 1500));
  const redis = new Redis({ port: env.redisPort });
  try {
    const counted = Number(await redis.hget(`krs:redis-rate-limit:v1:{${NEAR_LIMIT_ID}:ip:127.0.0.1}`, "hour:count"));
    console.log(`rate-limit-near-limit: ${seen.admitted} admitted (2xx seen), Redis counts ${counted}, limit ${NEAR_LIMIT}`);
    if (seen.admitted !== NEAR_LIMIT) flags.push(`admitted ${seen.admitted} (2xx seen), limit ${NEAR_LIMIT}`);
    if (counted !== NEAR_LIMIT) flags.push(`Redis counts ${counted} after lease_ttl, limit ${NEAR_LIMIT}`);
  } finally {
    redis.disconnect();
  }
  return flags;
}

/** The key of the key-auth scenario: fixed (wrk sends it), created by its setup with the CLI's code. */
const BENCH_API_KEY = "krs-bench-key".padEnd(43, "0");

async function createBenchKey(env: BenchEnv): Promise<void> {
  const { Redis } = await import("ioredis");
  const { createKey, withScripts } = await import("../src/cli/keys.js");
  const redis = withScripts(new Redis({ port: env.redisPort }));
  try {
    await createKey(redis, { consumer: "bench" }, { key: BENCH_API_KEY });
  } finally {
    redis.disconnect();
  }
}

/** 100,000 distinct /24s in one Redis deny list, none of them the client's (127.0.0.1). */
async function seedIpAccess100k(env: BenchEnv): Promise<void> {
  const { Redis } = await import("ioredis");
  const { addEntry, listKeys, withScripts } = await import("../src/cli/ip.js");
  const redis = withScripts(new Redis({ port: env.redisPort }));
  try {
    const [entries] = listKeys("bench-100k");
    const members: (string | number)[] = [];
    for (let i = 0; i < 100_000; i++) members.push("+inf", `${10 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}.0/24`);
    for (let i = 0; i < members.length; i += 20_000) await redis.zadd(entries, ...members.slice(i, i + 20_000));
    // One entry through the script: it sets the version every worker compares.
    await addEntry(redis, "bench-100k", "192.0.2.0/24", 0, "bench");
  } finally {
    redis.disconnect();
  }
}


/** redis-jwt: the HS* secrets are sealed under this (the scenarios' credential_encryption_key). */
const BENCH_JWT_ENCRYPTION_KEY = "krs-bench-encryption-key";
const BENCH_JWT_SECRET = "krs-bench-hs256-secret";
/** The RS256 key pair and token of jwt-valid-warm, made once per run (wrk's headers are fixed). */
const BENCH_RSA = (() => {
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const b64 = (v: string) => Buffer.from(v).toString("base64url");
  const input = `${b64('{"alg":"RS256","typ":"JWT"}')}.${b64('{"iss":"bench-rs","sub":"bench","exp":4102444800}')}`;
  return { publicPem: publicKey.export({ type: "spki", format: "pem" }).toString(), token: `${input}.${sign("sha256", Buffer.from(input), privateKey).toString("base64url")}` };
})();

async function createJwtCredentials(env: BenchEnv): Promise<void> {
  const { Redis } = await import("ioredis");
  const { createCredential, withScripts } = await import("../src/cli/jwt.js");
  const redis = withScripts(new Redis({ port: env.redisPort }));
  try {
    await createCredential(redis, { consumer: "bench", key: "bench-rs", algorithm: "RS256", rsa_public_key: BENCH_RSA.publicPem });
    await createCredential(redis, { consumer: "bench", key: "bench-hs", algorithm: "HS256", secret: BENCH_JWT_SECRET, encryptionKey: BENCH_JWT_ENCRYPTION_KEY });
  } finally {
    redis.disconnect();
  }
}

/** A token for the check request of jwt-unique-tokens (wrk then signs a new one per request). */
function benchHsToken(): string {
  const b64 = (v: string) => Buffer.from(v).toString("base64url");
  const input = `${b64('{"alg":"HS256","typ":"JWT"}')}.${b64('{"iss":"bench-hs","exp":4102444800,"jti":"check"}')}`;
  return `${input}.${createHmac("sha256", BENCH_JWT_SECRET).update(input).digest("base64url")}`;
}

function jwtPlugin(env: BenchEnv): PluginEntry {
  return { name: "redis-jwt", config: { credential_encryption_key: BENCH_JWT_ENCRYPTION_KEY, claims_to_verify: ["exp"], redis: { port: env.redisPort } } };
}

/**
 * wrk signs a new HS256 token per request with the libcrypto it links (HMAC and
 * EVP_EncodeBlock through LuaJIT's FFI): each thread numbers its tokens' jti, after the
 * run's `bench_run` (a round must not resend the tokens an earlier run had verified).
 */
const UNIQUE_JWT_LUA = [
  "local ffi = require('ffi')",
  "ffi.cdef[[unsigned char *HMAC(const void *md, const void *key, int key_len, const unsigned char *d, size_t n, unsigned char *out, unsigned int *out_len); const void *EVP_sha256(void); int EVP_EncodeBlock(unsigned char *t, const unsigned char *f, int n);]]",
  "local C = ffi.C",
  "local mac, maclen, enc = ffi.new('unsigned char[32]'), ffi.new('unsigned int[1]'), ffi.new('unsigned char[512]')",
  "local function b64url(s) local n = C.EVP_EncodeBlock(enc, s, #s); return (ffi.string(enc, n):gsub('[+/=]', { ['+'] = '-', ['/'] = '_', ['='] = '' })) end",
  `local secret = '${BENCH_JWT_SECRET}'`,
  "local header = b64url('{\"alg\":\"HS256\",\"typ\":\"JWT\"}')",
  "local threads = 0",
  "function setup(thread) threads = threads + 1; thread:set('tid', threads) end",
  "local n = 0",
  "function request()",
  "  n = n + 1",
  "  local input = header .. '.' .. b64url('{\"iss\":\"bench-hs\",\"exp\":4102444800,\"jti\":\"' .. bench_run .. '-' .. tid .. '-' .. n .. '\"}')",
  "  C.HMAC(C.EVP_sha256(), secret, #secret, input, #input, mac, maclen)",
  "  return wrk.format(nil, '/', { Authorization = 'Bearer ' .. input .. '.' .. b64url(ffi.string(mac, 32)) })",
  "end",
].join("\n");

export const SCENARIOS: Scenario[] = [
  {
    name: "upstream-direct",
    description: "wrk straight at the nginx upstream (the ceiling)",
    target: "upstream",
    path: "/",
  },
  {
    name: "plain-proxy",
    description: "nginx proxy_pass to the upstream with no Lua, as the gateway's nginx.conf without its Lua (2 workers)",
    target: "plain-proxy",
    path: "/",
    baseline: "upstream-direct",
  },
  {
    name: "gateway-no-plugins",
    description: "through the local gateway, one service and route, no plugins",
    target: "gateway",
    config: (env) => oneService(env),
    path: "/",
    baseline: "plain-proxy",
    goal: 0.75, // issue 15: the bare gateway >= 0.75x plain nginx proxy_pass
  },
  {
    name: "rate-limit-under-limit",
    description: "redis-rate-limit (sliding window, sync: lease, the default), limit never reached: each worker admits from leases of up to 100 admissions, one EVALSHA per lease",
    target: "gateway",
    needsRedis: true,
    config: (env) => oneService(env, { plugins: [{ name: "redis-rate-limit", config: { minute: 1_000_000_000, redis: { port: env.redisPort } } }] }),
    path: "/",
    baseline: "gateway-no-plugins",
    goal: 0.9, // issue 15: rate-limit-under-limit (leased, high limit) >= 0.90x
    maxRedisPerRequest: 0.05, // issue 15: <= 0.05 Redis calls per request
  },
  {
    name: "rate-limit-exact",
    description: "redis-rate-limit (sliding window, sync: exact), limit never reached: one EVALSHA per request",
    target: "gateway",
    needsRedis: true,
    config: (env) => oneService(env, { plugins: [{ name: "redis-rate-limit", config: { minute: 1_000_000_000, sync: "exact", redis: { port: env.redisPort } } }] }),
    path: "/",
    baseline: "gateway-no-plugins",
    goal: 0.6, // issue 15: rate-limit-exact (sync: exact) >= 0.60x
  },
  {
    name: "rate-limit-near-limit",
    description: `redis-rate-limit (fixed hour window, sync: lease) on 2 gateway nodes sharing one counter, limit ${NEAR_LIMIT} reached during the run, then 429s: exactly ${NEAR_LIMIT} admitted (checked)`,
    target: "gateway",
    needsRedis: true,
    nodes: 2,
    // The limit is reached during the first run: a second would measure only 429s.
    rounds: 1,
    noWarmup: true,
    rejectionsExpected: true,
    config: (env) => oneService(env, { plugins: [{ id: NEAR_LIMIT_ID, name: "redis-rate-limit", config: { hour: NEAR_LIMIT, algorithm: "fixed-window", limit_by: "ip", redis: { port: env.redisPort } } }] }),
    setup: resetNearLimit,
    verify: verifyNearLimit,
    path: "/",
    baseline: "gateway-no-plugins",
  },
  {
    name: "rate-limit-cluster",
    description: "redis-rate-limit as rate-limit-under-limit (leased), on a Redis Cluster (3 masters + 3 replicas): one EVALSHA per lease to the counter's master",
    target: "gateway",
    needsRedisCluster: true,
    config: (env) => oneService(env, { plugins: [{ name: "redis-rate-limit", config: { minute: 1_000_000_000, redis: { cluster_nodes: env.clusterNodes } } }] }),
    path: "/",
    baseline: "rate-limit-under-limit",
  },
  {
    name: "rate-limit-rejecting",
    description: "redis-rate-limit, limit used up before the run: 429s, from each worker's cache after its first",
    target: "gateway",
    needsRedis: true,
    config: (env) => oneService(env, { plugins: [{ id: RATE_LIMIT_ID, name: "redis-rate-limit", config: { hour: 1, redis: { port: env.redisPort } } }] }),
    setup: useUpRateLimit,
    path: "/",
    expectStatus: 429,
    baseline: "gateway-no-plugins",
  },
  {
    name: "key-auth-warm",
    description: "redis-key-auth, one valid key in a header, warm worker cache: no Redis call per request",
    target: "gateway",
    needsRedis: true,
    config: (env) =>
      oneService(env, {
        plugins: [{ name: "redis-key-auth", config: { redis: { port: env.redisPort } } }],
        consumers: [{ username: "bench" }],
      }),
    setup: createBenchKey,
    headers: { apikey: BENCH_API_KEY },
    path: "/",
    baseline: "gateway-no-plugins",
    goal: 0.95, // issue 15: key-auth-warm >= 0.95x
  },
  {
    name: "ip-access-100k",
    description: "redis-ip-access, 100,000 CIDRs in a Redis deny list compiled in every worker, allowed client: no Redis call per request",
    target: "gateway",
    needsRedis: true,
    config: (env) => oneService(env, { plugins: [{ name: "redis-ip-access", config: { redis_deny_lists: ["bench-100k"], redis: { port: env.redisPort } } }] }),
    setup: seedIpAccess100k,
    path: "/",
    baseline: "gateway-no-plugins",
    goal: 0.95, // issue 12: ip-access-100k >= 0.95x
  },
  {
    name: "usage-batched",
    description: "redis-usage, metering per client IP, route and service with a batched monthly quota never reached: counts buffered per worker, one pipelined flush per second, no Redis call per request",
    target: "gateway",
    needsRedis: true,
    config: (env) => oneService(env, { plugins: [{ name: "redis-usage", config: { quota_month: 1_000_000_000_000, redis: { port: env.redisPort } } }] }),
    path: "/",
    baseline: "gateway-no-plugins",
    goal: 0.95, // issue 11: usage-batched >= 0.95x
  },
  {
    name: "usage-quota-exact",
    description: "redis-usage, exact monthly quota never reached: one EVALSHA per request (check and count), metering buffered as in usage-batched",
    target: "gateway",
    needsRedis: true,
    config: (env) => oneService(env, { plugins: [{ name: "redis-usage", config: { quota_month: 1_000_000_000_000, quota_mode: "exact", redis: { port: env.redisPort } } }] }),
    path: "/",
    baseline: "gateway-no-plugins",
  },
  {
    name: "metrics-on",
    description: "redis-metrics global: Kong's request metrics (status codes, the three latency histograms, bandwidth; per_consumer off) and the krs_* ones, cluster push every 10 s from a timer: no Redis call per request",
    target: "gateway",
    needsRedis: true,
    config: (env) => ({
      ...oneService(env),
      plugins: [{ name: "redis-metrics", config: { status_code_metrics: true, latency_metrics: true, bandwidth_metrics: true, push_interval: 10, redis: { port: env.redisPort } } }],
    }),
    path: "/",
    baseline: "gateway-no-plugins",
    goal: 0.95, // issue 13: metrics-on >= 0.95x
  },
  {
    name: "nginx-proxy-cache-hit",
    description: "nginx's own proxy_cache serving hits (a server block of the upstream nginx, 1 worker, selected by Host)",
    target: "upstream",
    headers: { Host: "proxy-cache.bench" },
    path: "/",
    baseline: "upstream-direct",
  },
  {
    name: "cache-l1-hit",
    description: "redis-cache, one cached response served from the worker's L1 (no Redis call per request)",
    target: "gateway",
    needsRedis: true,
    config: (env) => oneService(env, { plugins: [{ name: "redis-cache", config: { redis: { port: env.redisPort } } }] }),
    path: "/",
    baseline: "nginx-proxy-cache-hit",
    goal: 0.8, // issue 15: cache-l1-hit >= 0.80x of nginx's proxy_cache hit
  },
  {
    name: "cache-l2-hit",
    description: "redis-cache with L1 disabled (l1_ttl 0): every hit is one Redis round trip (generation + lookup script)",
    target: "gateway",
    needsRedis: true,
    config: (env) => oneService(env, { plugins: [{ name: "redis-cache", config: { l1_ttl: 0, redis: { port: env.redisPort } } }] }),
    path: "/",
    baseline: "gateway-no-plugins",
  },
  {
    name: "cache-miss",
    description: "redis-cache, a new key per request (unique query): lookup + fill lock, upstream, store and unlock from a timer",
    target: "gateway",
    needsRedis: true,
    config: (env) => oneService(env, { plugins: [{ name: "redis-cache", config: { cache_ttl: 10, redis: { port: env.redisPort } } }] }),
    path: "/",
    // Every wrk thread numbers its requests; thread ids keep the threads apart, bench_run the runs (each round's keys are new).
    wrkLua: [
      "local threads = 0",
      "function setup(thread) threads = threads + 1; thread:set(\"tid\", threads) end",
      "local n = 0",
      "function request() n = n + 1; return wrk.format(nil, \"/?miss=\" .. bench_run .. \"-\" .. tid .. \"-\" .. n) end",
    ].join("\n"),
    baseline: "gateway-no-plugins",
  },
  {
    name: "jwt-valid-warm",
    description: "redis-jwt, the same RS256 token on every request: verified once per worker, then no signature check and no Redis call",
    target: "gateway",
    needsRedis: true,
    config: (env) => oneService(env, { plugins: [jwtPlugin(env)], consumers: [{ username: "bench" }] }),
    setup: createJwtCredentials,
    headers: { Authorization: `Bearer ${BENCH_RSA.token}` },
    path: "/",
    baseline: "gateway-no-plugins",
    goal: 0.95, // issue 10: jwt-valid-warm >= 0.95x and 0 Redis calls per request
  },
  {
    name: "jwt-unique-tokens",
    description: "redis-jwt, a new HS256 token per request (wrk signs each): HMAC verify + one Redis round trip (the revocation MGET)",
    target: "gateway",
    needsRedis: true,
    config: (env) => oneService(env, { plugins: [jwtPlugin(env)], consumers: [{ username: "bench" }] }),
    setup: createJwtCredentials,
    headers: { Authorization: `Bearer ${benchHsToken()}` },
    wrkLua: UNIQUE_JWT_LUA,
    path: "/",
    baseline: "gateway-no-plugins",
  },
  {
    name: "log-file",
    description: "structured-log to a file under the prefix: serialize, redact, encode, one write(2) per batch of 500 lines or 0.5 s per worker; no Redis command",
    target: "gateway",
    config: (env) => oneService(env, { plugins: [{ name: "structured-log", config: { sink: "file", path: "plugin-logs/bench.log" } }] }),
    path: "/?apikey=bench-secret",
    headers: { authorization: "Bearer bench-secret", "x-request-id": "bench" },
    baseline: "gateway-no-plugins",
    goal: 0.9, // issue 14: log-file >= 0.90x
  },
  {
    name: "log-redis-stream",
    description: "structured-log to a Redis Stream: per worker, one pipelined round trip per batch (an XADD per request + one EXPIRE per batch of up to 500), from a timer every 0.5 s; none on the request's path",
    target: "gateway",
    needsRedis: true,
    config: (env) => oneService(env, { plugins: [{ name: "structured-log", config: { sink: "redis-stream", stream_key: "bench", max_len: 10000, redis: { port: env.redisPort } } }] }),
    path: "/?apikey=bench-secret",
    headers: { authorization: "Bearer bench-secret", "x-request-id": "bench" },
    baseline: "gateway-no-plugins",
    goal: 0.85, // issue 14: log-redis-stream >= 0.85x
  },
  {
    name: "all-plugins-chained",
    description: "one route with redis-key-auth (warm), redis-ip-access (static deny list), redis-rate-limit (leased, limit never reached), redis-usage (batched), redis-cache (L1 hit), redis-metrics (global) and structured-log (file)",
    target: "gateway",
    needsRedis: true,
    config: (env) => {
      const redis = { port: env.redisPort };
      return {
        ...oneService(env, {
          routePlugins: [
            { name: "redis-key-auth", config: { redis } },
            { name: "redis-ip-access", config: { deny: ["192.0.2.0/24", "2001:db8::/32"], redis } },
            { name: "redis-rate-limit", config: { minute: 1_000_000_000, redis } },
            { name: "redis-usage", config: { quota_month: 1_000_000_000_000, redis } },
            { name: "redis-cache", config: { redis } },
            { name: "structured-log", config: { sink: "file", path: "plugin-logs/bench.log" } },
          ],
          consumers: [{ username: "bench" }],
        }),
        plugins: [{ name: "redis-metrics", config: { status_code_metrics: true, latency_metrics: true, bandwidth_metrics: true, push_interval: 10, redis } }],
      };
    },
    setup: createBenchKey,
    headers: { apikey: BENCH_API_KEY },
    path: "/",
    baseline: "gateway-no-plugins",
    goal: 0.6, // issue 15: all-plugins-chained >= 0.60x gateway-no-plugins (p99 in the table)
  },
];

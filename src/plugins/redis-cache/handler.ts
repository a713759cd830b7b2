/**
 * redis-cache: a response cache shared by every node through Redis, with a per-worker
 * copy (L1) in front, one upstream request per cold key (the stampede lock), one
 * background refresh per expiring key (refresh-ahead), and optional AES-256-GCM.
 *
 * access         key → L1 → Redis (one round trip: generation + lookup script); a hit is
 *                served with kong.response.exit; a cold key makes this request the
 *                filler or a waiter
 * header_filter  decides whether the upstream response may be stored, and what of it: the
 *                upstream's headers only (not those other plugins added); on a hit, puts
 *                back the Server and Via a miss of the same entry had
 * body_filter    buffers it (up to max_body_size) and, at the end, queues the store and
 *                the lock release for the worker's writer timer (no cosockets here)
 * log            gives back a lock still held (aborted responses)
 */
import * as facts from "../../lib/facts";
import { logThrottled, onRedisFailure } from "../../lib/redis/fault";
import type * as client from "../../lib/redis/client";
import { SUITE_VERSION } from "../../lib/version";
import { baseKey, variantKey } from "./cachekey";
import * as codec from "./codec";
import { PLUGIN_NAME, type Conf } from "./conf";
import * as l1cache from "./l1";
import * as policy from "./policy";
import { prepare, setConfigs, type Prepared } from "./state";
import * as storage from "./storage";
import * as writer from "./writer";

const floor = math.floor;
const gsub = string.gsub;
const lower = string.lower;
const max = math.max;
const min = math.min;
const now = ngx.now;
const sub = string.sub;

const CTX_KEY = "redis_cache";
const STATUS_HEADER = "X-Cache-Status";
const KEY_HEADER = "X-Cache-Key";
const HIT = "Hit";
const MISS = "Miss";
const REFRESH = "Refresh";
const BYPASS = "Bypass";

/** Seconds between looks at a key another request is filling: doubling, capped. */
const WAIT_FIRST = 0.005;
const WAIT_MAX = 0.05;

/**
 * Never stored: hop-by-hop headers (RFC 9110 7.6.1), headers that describe one response
 * on its way (length, cookies, age) and the cache's own.
 */
const NOT_STORED = new LuaTable<string, boolean>();
for (const name of [
  "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
  "trailers", "transfer-encoding", "upgrade", "content-length", "set-cookie", "age",
  "x-cache-status", "x-cache-key",
]) NOT_STORED.set(name, true);

interface Capture {
  status: number;
  headers: HeaderTable;
  ttlMs: number;
  /** Where the entry goes: the base key, or the variant key when the response has Vary. */
  key: string;
  vary: string[];
  chunks: string[];
  size: number;
}

interface RequestState {
  conf: Conf;
  p: Prepared;
  status: string;
  base: string;
  /** The key reported in X-Cache-Key (and looked up last). */
  key?: string;
  gen?: string;
  token?: string;
  /** The fill or refresh lock this request holds. */
  lockKey?: string;
  fillLock: boolean;
  /** The upstream response may be stored (the request was cacheable and Redis answered). */
  mayStore: boolean;
  capture?: Capture;
  /** The lock was given back or the store was scheduled. */
  done: boolean;
  /**
   * The key holds an unexpired entry this node cannot read: the response goes to L1
   * only, and the entry is left to the nodes that can read it (no thrashing during a
   * rolling key rotation).
   */
  foreign: boolean;
}

interface StoreJob {
  keyring: codec.Keyring | undefined;
  gen: string;
  base: string;
  key: string;
  vary: string[];
  entry: codec.Entry;
  lockKey?: string;
  token?: string;
}

// ---------------------------------------------------------------- helpers

let tokenPrefix: string | undefined;
let tokenCount = 0;

/** A lock token unique across nodes, workers and requests. */
function newToken(this: void): string {
  if (tokenPrefix === undefined) tokenPrefix = `${sub(kong.node.get_id(), 1, 8)}:${ngx.worker.pid()}:${floor(now() * 1000)}:`;
  tokenCount++;
  return tokenPrefix + tokenCount;
}

/** Bytes an L1 copy holds: its body, header names and values, Vary names. */
function sizeOf(this: void, cached: codec.Cached): number {
  let size = 0;
  if (cached.kind === "V") {
    for (const name of cached.vary) size += name.length + 1;
    return size;
  }
  size = cached.body.length;
  for (const [name, value] of pairs(cached.headers)) {
    size += name.length + 4;
    if (type(value) === "table") for (const v of value as string[]) size += v.length + 4;
    else size += (value as string).length;
  }
  return size;
}

function l1Put(this: void, p: Prepared, key: string, cached: codec.Cached, nowMs: number): void {
  if (p.l1 === undefined) return;
  let ttl = p.l1Ttl;
  // A copy never outlives its Redis entry (which a sliding TTL keeps extending).
  if (p.slidingArg === "0") ttl = min(ttl, (cached.storedAt + cached.ttl - nowMs) / 1000);
  if (ttl > 0) l1cache.set(p.l1, key, cached, ttl, sizeOf(cached));
}

/** What the client's Cache-Control asks of a stored response (cache_control: true). */
interface Wants {
  /** max-age: seconds. */
  maxAge?: number;
  /** min-fresh: seconds the entry must still be fresh for. */
  minFresh?: number;
  /** only-if-cached: a stored response or 504, never the upstream. */
  onlyIfCached: boolean;
}

const NO_WANTS: Wants = { onlyIfCached: false };

/**
 * Does the entry satisfy the client's max-age and min-fresh? max-age compares
 * milliseconds: `max-age=0` takes no stored response at all (Kong compares whole seconds
 * and serves one stored in the same second).
 */
function acceptable(this: void, e: codec.Entry, nowMs: number, wants: Wants): boolean {
  const age = nowMs - e.storedAt;
  if (wants.maxAge !== undefined && age > wants.maxAge * 1000) return false;
  if (wants.minFresh !== undefined && e.ttl - age < wants.minFresh * 1000) return false;
  return true;
}

/** May an L1 copy be served without asking Redis? Not inside the refresh-ahead window. */
function fresh(this: void, p: Prepared, e: codec.Entry, nowMs: number, wants: Wants): boolean {
  const age = nowMs - e.storedAt;
  if (p.slidingArg === "0" && age >= e.ttl) return false;
  if (p.refreshFraction > 0 && age >= e.ttl * (1 - p.refreshFraction)) return false;
  return acceptable(e, nowMs, wants);
}

/**
 * Sends the entry. In Kong, kong.response.exit returns in access: callers return right
 * after. A hit needs no request state (header_filter and log have nothing to do for it);
 * a request that has one (it asked Redis) is marked served.
 */
function serve(this: void, st: RequestState | undefined, e: codec.Entry, key: string, nowMs: number): void {
  if (st !== undefined) {
    st.status = HIT;
    st.key = key;
  }
  facts.cache(PLUGIN_NAME, HIT);
  // A fresh table each time: the PDK may change the one it is handed.
  const headers: KongHeaders = {};
  // Headers a plugin before this one has set already (rate-limit counters, ...) win over
  // their stored copies.
  for (const [name, value] of pairs(e.headers)) {
    if (ngx.header[name] === undefined) headers[name] = value;
  }
  headers[STATUS_HEADER] = HIT;
  headers[KEY_HEADER] = key;
  headers["Age"] = max(floor((nowMs - e.storedAt) / 1000), 0);
  // As Kong's proxy-cache: the cached response stands in for the upstream's, so Kong adds
  // its proxied headers (keeping the stored Server) rather than those of its own answers.
  const ctx = ngx.ctx;
  ctx.KONG_PROXIED = true;
  ctx.KONG_PROXY_LATENCY = floor((ngx.now() - ngx.req.start_time()) * 1000);
  kong.response.exit(e.status, e.body, headers);
}

function redisFailed(this: void, st: RequestState, err: string | undefined): void {
  st.status = BYPASS;
  st.mayStore = false;
  onRedisFailure(PLUGIN_NAME, st.conf, err);
}

function goUpstream(this: void, st: RequestState, status: string, key: string, gen: string): void {
  st.status = status;
  st.key = key;
  st.gen = gen;
  st.mayStore = true;
}

/**
 * Nothing stored may answer this request: with the client's `only-if-cached`, 504 and
 * never the upstream (RFC 9111 5.2.1.7, as Kong), giving back any lock taken; else the
 * request goes upstream as `status`.
 */
function notCached(this: void, st: RequestState, wants: Wants, status: string, key: string, gen: string): void {
  if (!wants.onlyIfCached) return goUpstream(st, status, key, gen);
  st.status = MISS;
  st.key = key;
  st.gen = gen;
  giveBack(st, false);
  return kong.response.exit(504);
}

// ---------------------------------------------------------------- access

/** Serves the request from this worker's copy when it has a fresh one; true when served. */
function fromL1(this: void, p: Prepared, base: string, l1: l1cache.L1<codec.Cached>, nowMs: number, wants: Wants): boolean {
  let key = base;
  let cached = l1cache.get(l1, key);
  if (cached !== undefined && cached.kind === "V") {
    const variant = variantKey(base, cached.vary);
    if (variant === undefined) return false;
    key = variant;
    cached = l1cache.get(l1, key);
  }
  if (cached === undefined || cached.kind !== "E" || !fresh(p, cached, nowMs, wants)) return false;
  serve(undefined, cached, key, nowMs);
  return true;
}

/**
 * The Redis side of access: loops over lookups until the request is served, becomes the
 * filler or refresher, or is let through (a waiter whose filler gave up or took longer
 * than lock_timeout).
 */
function fromRedis(this: void, st: RequestState, wants: Wants): void {
  const redis = st.conf.redis;
  const p = st.p;
  const token = newToken();
  st.token = token;
  let key = st.base;
  let followedVary = false;
  let repaired = false;
  let deadline: number | undefined;
  let delay = WAIT_FIRST;
  while (true) {
    const nowMs = now() * 1000;
    const [r, err] = storage.lookup(redis, p, key, token, nowMs, wants.onlyIfCached);
    if (r === undefined) return redisFailed(st, err);
    st.key = key;
    st.gen = r.gen;

    if (r.kind === storage.HIT) {
      const [cached, decodeErr, foreign] = codec.decode(r.value!, p.keyring, storage.entryKey(r.gen, key));
      if (cached === undefined) {
        logThrottled(PLUGIN_NAME, `cache entry ${key} ignored (treated as a miss): ${decodeErr}`);
        // The lookup handed this request the refresh lock of an entry it cannot use: give it
        // back, so that a node that can read the entry refreshes it in time.
        if (r.refresh === true) release(st, storage.refreshKey(r.gen, key), 0);
        // Written by a node configured otherwise (a legacy entry none of this node's keys
        // opens): left for the nodes that can read it, neither deleted nor overwritten,
        // while it is fresh; once its own TTL has passed it is only in the way (sliding TTL
        // would keep it forever), and is replaced like a corrupt one.
        if (foreign && nowMs < (codec.expiresAt(r.value!) ?? 0)) {
          if (wants.onlyIfCached) return notCached(st, wants, MISS, key, r.gen);
          st.status = MISS;
          st.key = key;
          st.gen = r.gen;
          return;
        }
        if (repaired) return notCached(st, wants, MISS, key, r.gen);
        // Remove it, then look again: this request may become the filler.
        repaired = true;
        const [, purgeErr] = storage.purge(redis, key);
        if (purgeErr !== undefined) return redisFailed(st, purgeErr);
        continue;
      }
      if (cached.kind === "V") {
        if (followedVary) return notCached(st, wants, MISS, key, r.gen);
        followedVary = true;
        l1Put(p, key, cached, nowMs);
        const variant = variantKey(st.base, cached.vary);
        if (variant === undefined) {
          // Too many request headers to tell the variant: not cached (no lock is held).
          st.key = undefined;
          return;
        }
        key = variant;
        continue;
      }
      l1Put(p, key, cached, nowMs);
      // Never handed to only-if-cached (a peek): the refresh is left to a request that may
      // go upstream.
      if (r.refresh === true) {
        st.lockKey = storage.refreshKey(r.gen, key);
        st.fillLock = false;
        return goUpstream(st, REFRESH, key, r.gen);
      }
      if (!acceptable(cached, nowMs, wants)) return notCached(st, wants, REFRESH, key, r.gen);
      return serve(st, cached, key, nowMs);
    }

    if (r.kind === storage.FOREIGN) {
      const [, reason] = codec.decode(r.value!, p.keyring, storage.entryKey(r.gen, key));
      logThrottled(PLUGIN_NAME, `cache entry ${key} ignored (treated as a miss): ${reason}`);
      // This request fetches for this node; the others of this worker wait for its copy in
      // L1. Without L1 there is nothing to wait for: they are let through at once.
      st.lockKey = storage.fillKey(r.gen, key);
      st.fillLock = true;
      st.foreign = true;
      if (p.l1 === undefined) giveBack(st, true);
      return notCached(st, wants, MISS, key, r.gen);
    }

    if (r.kind === storage.FILL) {
      st.lockKey = storage.fillKey(r.gen, key);
      st.fillLock = true;
      st.foreign = false;
      return notCached(st, wants, MISS, key, r.gen);
    }

    // Another request is filling this key. What is in the way is what the last look saw: a
    // foreign entry gone meanwhile no longer keeps this request from storing.
    st.foreign = r.foreign === true;
    if (r.holder === storage.UNCACHEABLE || wants.onlyIfCached) return notCached(st, wants, MISS, key, r.gen);
    const t = now();
    if (deadline === undefined) deadline = t + p.lockMs / 1000;
    if (t >= deadline) return goUpstream(st, MISS, key, r.gen);
    ngx.sleep(min(delay, deadline - t));
    delay = min(delay * 2, WAIT_MAX);
    if (p.l1 !== undefined) {
      // Another request of this worker may have got it meanwhile.
      const cached = l1cache.get(p.l1, key);
      if (cached !== undefined && cached.kind === "E" && acceptable(cached, now() * 1000, wants)) return serve(st, cached, key, now() * 1000);
    }
  }
}

// ---------------------------------------------------------------- storing

/** Gives the lock back (at most once); `uncacheable` lets the waiters go upstream at once. */
function giveBack(this: void, st: RequestState, uncacheable: boolean): void {
  if (st.done || st.lockKey === undefined) return;
  st.done = true;
  release(st, st.lockKey, uncacheable && st.fillLock ? st.p.lockMs : 0);
}

/** Queues the release of a lock this request's token holds (see cache-release-1.lua). */
function release(this: void, st: RequestState, lockKey: string, markerMs: number): void {
  const token = st.token;
  if (token === undefined) return;
  const call = storage.releaseCall(lockKey, token, markerMs);
  writer.enqueueRelease(st.conf.redis, () => [call]);
}

/** The writes of one store, built in the writer's timer (encoding, encryption). */
function storeCalls(this: void, job: StoreJob): client.Call[] {
  const calls: client.Call[] = [];
  const entryKey = storage.entryKey(job.gen, job.key);
  const [value, encodeErr] = codec.encodeEntry(job.entry, job.keyring, entryKey);
  if (value === undefined) {
    logThrottled(PLUGIN_NAME, `could not encode a cache entry: ${encodeErr}`);
  } else {
    const ttlMs = job.entry.ttl;
    // The variant first, then its marker: whoever sees the marker finds the variant.
    calls.push(storage.setCall(entryKey, value, ttlMs));
    if (job.key !== job.base) {
      calls.push(storage.setCall(storage.entryKey(job.gen, job.base), codec.encodeMarker(job.vary, job.entry.storedAt, ttlMs), ttlMs));
    }
  }
  if (job.lockKey !== undefined && job.token !== undefined) calls.push(storage.releaseCall(job.lockKey, job.token, 0));
  return calls;
}

function finishStore(this: void, st: RequestState, cap: Capture): void {
  const nowMs = now() * 1000;
  const entry: codec.Entry = { kind: "E", status: cap.status, headers: cap.headers, body: table.concat(cap.chunks), storedAt: nowMs, ttl: cap.ttlMs };
  l1Put(st.p, cap.key, entry, nowMs);
  if (cap.key !== st.base) l1Put(st.p, st.base, { kind: "V", vary: cap.vary, storedAt: nowMs, ttl: cap.ttlMs }, nowMs);
  // Nothing for Redis: this worker's waiters find the response in L1; the others are let
  // through at once (the "uncacheable" marker) rather than queue up for the lock one by one.
  if (st.foreign) return giveBack(st, true);
  st.done = true;
  const job: StoreJob = {
    keyring: st.p.keyring,
    gen: st.gen ?? "0",
    base: st.base,
    key: cap.key,
    vary: cap.vary,
    entry,
    lockKey: st.lockKey,
    token: st.token,
  };
  const lockKey = st.lockKey;
  const token = st.token;
  // What still has to reach Redis when the writer has no room for the store.
  const release = lockKey !== undefined && token !== undefined ? (): client.Call[] => [storage.releaseCall(lockKey, token, 0)] : undefined;
  writer.enqueueStore(st.conf.redis, entry.body.length, () => storeCalls(job), release);
}

/**
 * The response headers worth replaying on a hit: those the upstream sent (as
 * kong.service.response.get_headers() tells them apart: nginx's $upstream_http_* variables),
 * but not NOT_STORED. Headers that plugins or the gateway add (rate-limit counters,
 * X-Kong-*, the gateway's Via) belong to one request and are not stored; on a hit the
 * stored Server stands and the gateway adds its proxied headers (see serve). A header sent once keeps the upstream's own value (a plugin that rewrites it
 * does so again on the hit); a repeated one keeps the response's values (nginx's variable
 * holds only the first).
 */
function storedHeaders(this: void): HeaderTable {
  const [all] = ngx.resp.get_headers(0, true);
  const out: HeaderTable = new LuaTable();
  for (const [name, value] of pairs(all)) {
    const l = lower(name);
    if (NOT_STORED.has(l)) continue;
    const upstream = ngx.var["upstream_http_" + gsub(l, "-", "_")[0]];
    if (upstream === undefined) continue;
    out.set(name, type(value) === "table" ? value : upstream);
  }
  return out;
}

function headerString(this: void, value: string | string[] | undefined): string | undefined {
  return type(value) === "string" ? (value as string) : undefined;
}

/** Whether the upstream response may be stored, and how: undefined when not. */
function capture(this: void, st: RequestState): Capture | undefined {
  const conf = st.conf;
  const p = st.p;
  const status = ngx.status;
  if (!p.codes.has(status)) return undefined;
  const contentType = headerString(ngx.header["Content-Type"]);
  if (contentType === undefined || !policy.matchesType(p.types, contentType)) return undefined;
  if (ngx.header["Set-Cookie"] !== undefined) return undefined;
  // HEAD is never stored (Kong neither): its entry would have no body, and nothing may
  // ever let a GET be answered from it.
  if (kong.request.get_method() === "HEAD") return undefined;
  // No upstream response in nginx's variables (Kong's buffered proxying answers through a
  // subrequest): the upstream's headers cannot be told from the plugins', so nothing is stored.
  if (ngx.var["upstream_status"] === undefined) return undefined;
  const vary = policy.parseVary(ngx.header["Vary"]);
  if (vary === "*") return undefined;
  let ttl = conf.cache_ttl;
  if (conf.cache_control) {
    const expires = ngx.header["Expires"];
    // An Expires header that cannot be parsed means "already expired" (RFC 9111 5.3).
    const expiresAt = expires !== undefined ? ngx.parse_http_time(headerString(expires) ?? "") ?? 0 : undefined;
    ttl = policy.responseTtl(policy.parseCacheControl(ngx.header["Cache-Control"]), expiresAt, ngx.time(), conf.cache_ttl);
    if (ttl <= 0) return undefined;
  }
  const length = tonumber(headerString(ngx.header["Content-Length"]));
  if (length !== undefined && length > conf.max_body_size) return undefined;
  let key = st.base;
  if (vary.length > 0) {
    const variant = variantKey(st.base, vary);
    if (variant === undefined) {
      // Only this request cannot be keyed (too many headers): the lock goes back without
      // the "uncacheable" marker, so that a waiter fills the entry.
      giveBack(st, false);
      return undefined;
    }
    key = variant;
  }
  return {
    status,
    headers: storedHeaders(),
    ttlMs: ttl * 1000,
    key,
    vary,
    chunks: [],
    size: 0,
  };
}

/** The request's state, kept for the later phases (kong.ctx.plugin: two tables per request). */
function newState(this: void, conf: Conf, p: Prepared, base: string): RequestState {
  const st: RequestState = { conf, p, status: BYPASS, base, key: base !== "" ? base : undefined, fillLock: false, mayStore: false, done: false, foreign: false };
  kong.ctx.plugin[CTX_KEY] = st;
  return st;
}

function stateOf(this: void): RequestState | undefined {
  return kong.ctx.plugin[CTX_KEY] as RequestState | undefined;
}

// ---------------------------------------------------------------- handler

const handler: KongPluginHandler<Conf> = {
  PRIORITY: 100,
  VERSION: SUITE_VERSION,

  configure(configs) {
    setConfigs(configs);
  },

  access(conf) {
    facts.enter(PLUGIN_NAME);
    const p = prepare(conf);
    const method = kong.request.get_method();
    // HEAD responses are never stored, so a HEAD has nothing to look up.
    if (!p.methods.has(method) || method === "HEAD") return void newState(conf, p, "");
    let requestCc: policy.Directives | undefined;
    if (conf.cache_control) {
      requestCc = policy.parseCacheControl(ngx.var["http_cache_control"]);
      if (requestCc !== undefined && requestCc.has("no-store")) return void newState(conf, p, "");
    }
    const consumer = kong.client.get_consumer();
    const consumerId = conf.cache_per_consumer && consumer !== undefined ? consumer.id : undefined;
    // A credential the cache cannot tell apart must not share entries with anyone: keying
    // on the consumer is only safe when a credential identified it (an auth plugin's
    // `anonymous` consumer has none, and stands for every caller it let in).
    if (ngx.var["http_authorization"] !== undefined && (consumerId === undefined || kong.client.get_credential() === undefined)) return void newState(conf, p, "");
    const scope = kong.router.get_route()?.id ?? kong.router.get_service()?.id ?? "-";
    const base = baseKey(p, conf.ignore_uri_case, consumerId, scope);
    // More query arguments or headers than the key can take: the upstream would see some
    // the key leaves out.
    if (base === undefined) return void newState(conf, p, "");
    const wants: Wants = requestCc === undefined ? NO_WANTS : {
      maxAge: policy.seconds(requestCc, "max-age"),
      minFresh: policy.seconds(requestCc, "min-fresh"),
      onlyIfCached: requestCc.has("only-if-cached"),
    };
    if (requestCc !== undefined && requestCc.has("no-cache") && !wants.onlyIfCached) {
      // Fetched anew and stored for everyone else.
      return goUpstream(newState(conf, p, base), REFRESH, base, storage.knownGeneration(conf.redis));
    }
    if (p.l1 !== undefined && fromL1(p, base, p.l1, now() * 1000, wants)) return;
    fromRedis(newState(conf, p, base), wants);
  },

  header_filter(conf) {
    const st = stateOf();
    if (st === undefined) return;
    if (st.status === HIT) return;
    facts.enter(PLUGIN_NAME);
    if (st.mayStore) {
      const cap = capture(st);
      if (cap === undefined) {
        st.status = BYPASS;
        giveBack(st, true);
      } else {
        st.capture = cap;
        st.key = cap.key;
      }
    }
    facts.cache(PLUGIN_NAME, st.status as facts.CacheStatus);
    kong.response.set_header(STATUS_HEADER, st.status);
    if (st.key !== undefined) kong.response.set_header(KEY_HEADER, st.key);
  },

  body_filter(conf) {
    const st = stateOf();
    const cap = st?.capture;
    if (st === undefined || cap === undefined) return;
    const chunk = ngx.arg[1] as string | undefined;
    if (chunk !== undefined && chunk !== "") {
      cap.size += chunk.length;
      if (cap.size > conf.max_body_size) {
        // Too large after all (no Content-Length to tell in advance): streams through.
        st.capture = undefined;
        giveBack(st, true);
        return;
      }
      cap.chunks.push(chunk);
    }
    if (ngx.arg[2] === true) {
      st.capture = undefined;
      finishStore(st, cap);
    }
  },

  log(conf) {
    const st = stateOf();
    if (st !== undefined) giveBack(st, false);
  },
};

export = handler;

/**
 * redis-cache: a response cache shared by every node through Redis, with a per-worker
 * copy (L1) in front, one upstream request per cold key (the stampede lock), one
 * background refresh per expiring key (refresh-ahead), and optional AES-256-GCM.
 *
 * access         key → L1 → Redis (one round trip: generation + lookup script); a hit is
 *                served with kong.response.exit; a cold key makes this request the
 *                filler or a waiter
 * header_filter  decides whether the upstream response may be stored
 * body_filter    buffers it (up to max_body_size) and, at the end, queues the store and
 *                the lock release for the worker's writer timer (no cosockets here)
 * log            gives back a lock still held (aborted responses)
 */
import { logThrottled, onRedisFailure } from "../../lib/redis/fault";
import type * as client from "../../lib/redis/client";
import { SUITE_VERSION } from "../../lib/version";
import { baseKey, variantKey } from "./cachekey";
import * as codec from "./codec";
import { PLUGIN_NAME, type Conf } from "./conf";
import * as policy from "./policy";
import { prepare, setConfigs, type Prepared } from "./state";
import * as storage from "./storage";
import * as writer from "./writer";

const floor = math.floor;
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
 * on its way (length, cookies, age), the gateway's per-request headers and the cache's own.
 */
const NOT_STORED = new LuaTable<string, boolean>();
for (const name of [
  "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
  "trailers", "transfer-encoding", "upgrade", "content-length", "set-cookie", "age", "via",
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
}

interface StoreJob {
  aesKey: string | undefined;
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

function l1Put(this: void, p: Prepared, key: string, cached: codec.Cached, nowMs: number): void {
  if (p.l1 === undefined) return;
  let ttl = p.l1Ttl;
  // A copy never outlives its Redis entry (which a sliding TTL keeps extending).
  if (p.slidingArg === "0") ttl = min(ttl, (cached.storedAt + cached.ttl - nowMs) / 1000);
  if (ttl > 0) p.l1.set(key, cached, ttl);
}

/** May an L1 copy be served without asking Redis? Not inside the refresh-ahead window. */
function fresh(this: void, p: Prepared, e: codec.Entry, nowMs: number, maxAge: number | undefined): boolean {
  const age = nowMs - e.storedAt;
  if (p.slidingArg === "0" && age >= e.ttl) return false;
  if (p.refreshFraction > 0 && age >= e.ttl * (1 - p.refreshFraction)) return false;
  return maxAge === undefined || age <= maxAge * 1000;
}

/** Sends the entry. In Kong, kong.response.exit returns in access: callers return right after. */
function serve(this: void, st: RequestState, e: codec.Entry, key: string, nowMs: number): void {
  st.status = HIT;
  st.key = key;
  const headers: KongHeaders = {};
  // Headers a plugin before this one has set already (rate-limit counters, ...) win over
  // their stored copies.
  for (const [name, value] of pairs(e.headers)) {
    if (ngx.header[name] === undefined) headers[name] = value;
  }
  headers[STATUS_HEADER] = HIT;
  headers[KEY_HEADER] = key;
  headers["Age"] = max(floor((nowMs - e.storedAt) / 1000), 0);
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

// ---------------------------------------------------------------- access

/** Serves the request from this worker's copy when it has a fresh one; true when served. */
function fromL1(this: void, st: RequestState, l1: LruCache<codec.Cached>, nowMs: number, maxAge: number | undefined): boolean {
  let key = st.base;
  let [cached] = l1.get(key);
  if (cached !== undefined && cached.kind === "V") {
    const variant = variantKey(st.base, cached.vary);
    if (variant === undefined) return false;
    key = variant;
    [cached] = l1.get(key);
  }
  if (cached === undefined || cached.kind !== "E" || !fresh(st.p, cached, nowMs, maxAge)) return false;
  serve(st, cached, key, nowMs);
  return true;
}

/**
 * The Redis side of access: loops over lookups until the request is served, becomes the
 * filler or refresher, or is let through (a waiter whose filler gave up or took longer
 * than lock_timeout).
 */
function fromRedis(this: void, st: RequestState, maxAge: number | undefined): void {
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
    const [r, err] = storage.lookup(redis, p, key, token, nowMs);
    if (r === undefined) return redisFailed(st, err);
    st.key = key;
    st.gen = r.gen;

    if (r.kind === storage.HIT) {
      const [cached, decodeErr] = codec.decode(r.value!, p.aesKey, storage.entryKey(r.gen, key));
      if (cached === undefined) {
        kong.log.err(`cache entry ${key} ignored (treated as a miss): ${decodeErr}`);
        if (repaired) return goUpstream(st, MISS, key, r.gen);
        // Remove it, then look again: this request may become the filler.
        repaired = true;
        const [, purgeErr] = storage.purge(redis, key);
        if (purgeErr !== undefined) return redisFailed(st, purgeErr);
        continue;
      }
      if (cached.kind === "V") {
        if (followedVary) return goUpstream(st, MISS, key, r.gen);
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
      if (r.refresh === true) {
        st.lockKey = storage.refreshKey(r.gen, key);
        st.fillLock = false;
        return goUpstream(st, REFRESH, key, r.gen);
      }
      if (maxAge !== undefined && nowMs - cached.storedAt > maxAge * 1000) return goUpstream(st, REFRESH, key, r.gen);
      return serve(st, cached, key, nowMs);
    }

    if (r.kind === storage.FILL) {
      st.lockKey = storage.fillKey(r.gen, key);
      st.fillLock = true;
      return goUpstream(st, MISS, key, r.gen);
    }

    // Another request is filling this key.
    if (r.holder === storage.UNCACHEABLE) return goUpstream(st, MISS, key, r.gen);
    const t = now();
    if (deadline === undefined) deadline = t + p.lockMs / 1000;
    if (t >= deadline) return goUpstream(st, MISS, key, r.gen);
    ngx.sleep(min(delay, deadline - t));
    delay = min(delay * 2, WAIT_MAX);
    if (p.l1 !== undefined) {
      // Another request of this worker may have got it meanwhile.
      const [cached] = p.l1.get(key);
      if (cached !== undefined && cached.kind === "E") return serve(st, cached, key, now() * 1000);
    }
  }
}

// ---------------------------------------------------------------- storing

/** Gives the lock back (at most once); `uncacheable` lets the waiters go upstream at once. */
function giveBack(this: void, st: RequestState, uncacheable: boolean): void {
  if (st.done || st.lockKey === undefined || st.token === undefined) return;
  st.done = true;
  const call = storage.releaseCall(st.lockKey, st.token, uncacheable && st.fillLock ? st.p.lockMs : 0);
  writer.enqueueRelease(st.conf.redis, () => [call]);
}

/** The writes of one store, built in the writer's timer (encoding, encryption). */
function storeCalls(this: void, job: StoreJob): client.Call[] {
  const calls: client.Call[] = [];
  const entryKey = storage.entryKey(job.gen, job.key);
  const [value, encodeErr] = codec.encodeEntry(job.entry, job.aesKey, entryKey);
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
  st.done = true;
  const nowMs = now() * 1000;
  const entry: codec.Entry = { kind: "E", status: cap.status, headers: cap.headers, body: table.concat(cap.chunks), storedAt: nowMs, ttl: cap.ttlMs };
  l1Put(st.p, cap.key, entry, nowMs);
  if (cap.key !== st.base) l1Put(st.p, st.base, { kind: "V", vary: cap.vary, storedAt: nowMs, ttl: cap.ttlMs }, nowMs);
  const job: StoreJob = {
    aesKey: st.p.aesKey,
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

/** The response headers worth replaying on a hit: all but NOT_STORED and X-Kong-*. */
function storedHeaders(this: void, keepLength: boolean): HeaderTable {
  const [all] = ngx.resp.get_headers(0, true);
  const out: HeaderTable = new LuaTable();
  for (const [name, value] of pairs(all)) {
    const l = lower(name);
    if (NOT_STORED.has(l) && !(keepLength && l === "content-length")) continue;
    if (sub(l, 1, 7) === "x-kong-") continue;
    out.set(name, value);
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
    headers: storedHeaders(kong.request.get_method() === "HEAD"),
    ttlMs: ttl * 1000,
    key,
    vary,
    chunks: [],
    size: 0,
  };
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
    const p = prepare(conf);
    const st: RequestState = { conf, p, status: BYPASS, base: "", fillLock: false, mayStore: false, done: false };
    kong.ctx.plugin[CTX_KEY] = st;
    if (!p.methods.has(kong.request.get_method())) return;
    let requestCc: policy.Directives | undefined;
    if (conf.cache_control) {
      requestCc = policy.parseCacheControl(ngx.var["http_cache_control"]);
      if (requestCc !== undefined && requestCc.has("no-store")) return;
    }
    const consumer = kong.client.get_consumer();
    const consumerId = conf.cache_per_consumer && consumer !== undefined ? consumer.id : undefined;
    // A credential the cache cannot tell apart must not share entries with anyone: keying
    // on the consumer is only safe when a credential identified it (an auth plugin's
    // `anonymous` consumer has none, and stands for every caller it let in).
    if (ngx.var["http_authorization"] !== undefined && (consumerId === undefined || kong.client.get_credential() === undefined)) return;
    const scope = kong.router.get_route()?.id ?? kong.router.get_service()?.id ?? "-";
    const base = baseKey(p, conf.ignore_uri_case, consumerId, scope);
    // More query arguments or headers than the key can take: the upstream would see some
    // the key leaves out.
    if (base === undefined) return;
    st.base = base;
    st.key = st.base;
    if (requestCc !== undefined && requestCc.has("no-cache")) {
      // Fetched anew and stored for everyone else.
      return goUpstream(st, REFRESH, st.base, storage.knownGeneration(conf.redis));
    }
    const maxAge = policy.seconds(requestCc, "max-age");
    if (p.l1 !== undefined && fromL1(st, p.l1, now() * 1000, maxAge)) return;
    fromRedis(st, maxAge);
  },

  header_filter(conf) {
    const st = stateOf();
    if (st === undefined || st.status === HIT) return;
    if (st.mayStore) {
      const cap = capture(st);
      if (cap === undefined) {
        st.status = BYPASS;
        giveBack(st, true);
      } else if (kong.request.get_method() === "HEAD") {
        // No body will follow (nginx runs no body filter for a header-only response).
        st.key = cap.key;
        finishStore(st, cap);
      } else {
        st.capture = cap;
        st.key = cap.key;
      }
    }
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

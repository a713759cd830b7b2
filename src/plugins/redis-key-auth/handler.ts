/**
 * redis-key-auth: Kong key-auth's behaviour (names, messages, headers, anonymous,
 * hide_credentials, run_on_preflight) with the keys in Redis, stored as SHA-256 only.
 *
 * Hot path: find the key, check its format, hash it, find it in the worker cache. Redis
 * is asked (one HGETALL) only on a cache miss; revocations evict cache entries through
 * pub/sub (cache.ts).
 */
import * as cjson from "cjson.safe";
import * as lrucache from "resty.lrucache";
import * as semaphore from "ngx.semaphore";
import * as auth from "../../lib/auth";
import * as facts from "../../lib/facts";
import * as fault from "../../lib/redis/fault";
import { SUITE_VERSION } from "../../lib/version";
import * as workerCache from "./cache";
import type { Flight, LookupResult, PoolState, ValidKey } from "./cache";
import * as store from "./store";
import type { KeyAuthConf, KeyRecord } from "./store";
import { isId, removeQueryArg, staleUsable, wellFormed, wwwAuthenticate } from "./util";

const PLUGIN = "redis-key-auth";

const ERR_DUPLICATE_API_KEY = "Duplicate API key found";
const ERR_NO_API_KEY = "No API key found in request";
const ERR_INVALID_AUTH_CRED = "Unauthorized";
const ERR_UNEXPECTED = auth.ERR_UNEXPECTED;

const FORM = "application/x-www-form-urlencoded";
const JSON_MIME = "application/json";
const EMPTY_BODY = new LuaTable<string, unknown>();
/** The lookup result of an invalid key (shared: it carries nothing). */
const NOT_VALID: LookupResult = {};

/** What each config table needs on every request, computed once per table. */
interface Prepared {
  /** The WWW-Authenticate value; the headers table around it is new on every 401 (Kong's PDK writes Content-Type into it). */
  challenge: string;
  /** conf.anonymous, or undefined (whether Kong hands over nil or ngx.null). */
  anonymous?: string;
  /** The anonymous consumer, looked up at most once per cache_ttl and config version. */
  anonymousSlot: auth.AnonymousSlot;
  /** conf.key_names when it has one name (the default): findKey needs no loop then. */
  onlyName?: string;
  /** Where this config reads keys, for the request facts (a logger redacts them). */
  credentialNames: facts.CredentialNames;
}
const prepared = setmetatable(new LuaTable<KeyAuthConf, Prepared>(), { __mode: "k" });

/** An optional string field as Kong hands it over: nil or ngx.null when unset. */
function optional(this: void, value: string | undefined): string | undefined {
  return type(value) === "string" ? value : undefined;
}

function prepare(this: void, conf: KeyAuthConf): Prepared {
  let p = prepared.get(conf);
  if (p === undefined) {
    const names: string[] = [];
    for (const name of conf.key_names) names.push(name);
    const credentialNames = { plugin: PLUGIN, headers: conf.key_in_header ? names : [], query: conf.key_in_query ? names : [], cookies: false };
    p = {
      challenge: wwwAuthenticate(optional(conf.realm)),
      anonymous: optional(conf.anonymous),
      anonymousSlot: auth.newAnonymousSlot(),
      onlyName: names.length === 1 ? names[0] : undefined,
      credentialNames,
    };
    prepared.set(conf, p);
  }
  return p;
}

// ---------------------------------------------------------------- anonymous

function setAnonymous(this: void, conf: KeyAuthConf, p: Prepared, anonymous: string): void {
  auth.setAnonymous(p.anonymousSlot, anonymous, conf.cache_ttl, workerCache.configVersion());
}

// ---------------------------------------------------------------- finding the key

/**
 * The request headers (kong.request.get_headers), and the same table again when it holds
 * every header (not truncated): then auth.setConsumer need not clear the identity headers
 * it shows absent.
 */
function requestHeaders(this: void): LuaMultiReturn<[HeaderTable, HeaderTable | undefined]> {
  const [headers, truncated] = kong.request.get_headers();
  return $multi(headers, truncated === undefined ? headers : undefined);
}

function readBody(this: void): LuaMultiReturn<[LuaTable<string, unknown>, string | undefined]> {
  const [body, err, mime] = kong.request.get_body();
  if (body === undefined) {
    kong.log.info("Cannot process request body: ", err);
    return $multi(EMPTY_BODY, undefined);
  }
  return $multi(body, mime);
}

/** hide_credentials: the key leaves the header, the query string and the body. */
function hide(this: void, conf: KeyAuthConf, name: string, body: LuaTable<string, unknown> | undefined, mime: string | undefined): void {
  kong.service.request.clear_header(name);
  const query = kong.request.get_raw_query();
  if (query !== "") {
    const without = removeQueryArg(query, name, ngx.unescape_uri);
    if (without !== query) kong.service.request.set_raw_query(without);
  }
  if (!conf.key_in_body) return;
  if (body === undefined) [body, mime] = readBody();
  if (body === EMPTY_BODY || body.get(name) === undefined) return;
  // Only the bodies this plugin can write back; any other (Kong parses multipart too)
  // goes upstream as sent rather than re-encoded under a content type it no longer matches.
  if (mime !== FORM && mime !== JSON_MIME) return;
  body.set(name, undefined);
  const encoded = mime === FORM ? ngx.encode_args(body as unknown as LuaTable) : cjson.encode(body)[0];
  if (encoded !== undefined) kong.service.request.set_raw_body(encoded);
}

/**
 * What one name found: the key, or nil and the 401 message, or (`next`) nothing under
 * this name, so that the next name is tried.
 */
function settle(this: void, conf: KeyAuthConf, name: string, value: unknown, body: LuaTable<string, unknown> | undefined, mime: string | undefined): LuaMultiReturn<[string | undefined, string | undefined, boolean]> {
  const kind = type(value);
  if (kind === "string") {
    if (conf.hide_credentials) hide(conf, name, body, mime);
    if (value === "") return $multi(undefined, ERR_NO_API_KEY, false);
    return $multi(value as string, undefined, false);
  }
  // The same name twice: which one would be meant is anyone's guess.
  if (kind === "table") return $multi(undefined, ERR_DUPLICATE_API_KEY, false);
  return $multi(undefined, ERR_NO_API_KEY, true);
}

/**
 * findKey for a config with one key name (the default): the same lookups without the
 * loop, which LuaJIT cannot compile when it runs once per request.
 */
function findOnlyKey(this: void, conf: KeyAuthConf, name: string): LuaMultiReturn<[string | undefined, string | undefined, HeaderTable | undefined]> {
  let value: unknown = undefined;
  let body: LuaTable<string, unknown> | undefined;
  let mime: string | undefined;
  let sent: HeaderTable | undefined;
  if (conf.key_in_header) {
    const [headers, complete] = requestHeaders();
    value = headers.get(name);
    sent = complete;
  }
  if (value === undefined && conf.key_in_query) value = kong.request.get_query().get(name);
  if (value === undefined && conf.key_in_body) {
    [body, mime] = readBody();
    value = body.get(name);
  }
  const [key, failure] = settle(conf, name, value, body, mime);
  return $multi(key, failure, sent);
}

/**
 * The key as Kong's key-auth finds it: for each name in order, the header, then the
 * query argument, then the body field. Returns the key, or nil and the 401 message; then
 * the request's complete headers when they were read (requestHeaders).
 */
function findKey(this: void, conf: KeyAuthConf, p: Prepared): LuaMultiReturn<[string | undefined, string | undefined, HeaderTable | undefined]> {
  if (p.onlyName !== undefined) return findOnlyKey(conf, p.onlyName);
  let headers: HeaderTable | undefined;
  let sent: HeaderTable | undefined;
  let query: ArgTable | undefined;
  let body: LuaTable<string, unknown> | undefined;
  let mime: string | undefined;
  const names = conf.key_names;
  for (let i = 0; i < names.length; i++) {
    const name = names[i];
    let value: unknown = undefined;
    if (conf.key_in_header) {
      if (headers === undefined) [headers, sent] = requestHeaders();
      value = headers.get(name);
    }
    if (value === undefined && conf.key_in_query) {
      if (query === undefined) query = kong.request.get_query();
      value = query.get(name);
    }
    if (value === undefined && conf.key_in_body) {
      if (body === undefined) [body, mime] = readBody();
      value = body.get(name);
    }
    const [key, failure, next] = settle(conf, name, value, body, mime);
    if (!next) return $multi(key, failure, sent);
  }
  return $multi(undefined, ERR_NO_API_KEY, sent);
}

// ---------------------------------------------------------------- checking the key

/**
 * The Kong consumer a key belongs to: by the consumer id stored with the key when it has
 * one (pinned: another consumer later given the same username does not inherit the key),
 * else by username. A key of a consumer Kong does not know is not valid, nor one pinned
 * to an id that is not a uuid (Kong's load_consumer raises on those: no consumer has one).
 */
function consumerOf(this: void, record: Pick<KeyRecord, "consumer_id" | "consumer_username">): KongConsumer | undefined {
  if (record.consumer_id !== "") {
    if (!isId(record.consumer_id)) return undefined;
    const [consumer, err] = kong.client.load_consumer(record.consumer_id);
    if (err !== undefined) error(err);
    return consumer;
  }
  const [consumer, err] = kong.client.load_consumer(record.consumer_username, true);
  if (err !== undefined) error(err);
  return consumer;
}

/**
 * A cached valid key with its consumer as the current config has it. What Redis said
 * still holds after a config change; the consumer is looked up again (Kong only, no
 * Redis): nil when the new config no longer has it, and the entry becomes an unknown one.
 */
function current(this: void, conf: KeyAuthConf, state: PoolState, sha: string, entry: ValidKey): ValidKey | undefined {
  const version = workerCache.configVersion();
  if (entry.resolved_in === version) return entry;
  const consumer = consumerOf(entry);
  if (consumer === undefined) {
    state.cache.delete(sha);
    if (conf.negative_cache_ttl > 0) state.unknown.set(sha, { checked_at: ngx.now(), consumer_unknown_in: version }, conf.negative_cache_ttl);
    return undefined;
  }
  entry.consumer = consumer;
  entry.credential = { id: entry.credential.id, consumer: { id: consumer.id } };
  entry.resolved_in = version;
  return entry;
}

/** Asks Redis about one key (cache miss) and caches the answer. */
function fetch(this: void, conf: KeyAuthConf, state: PoolState, sha: string, stale: ValidKey | undefined): LookupResult {
  // The Redis call below is this plugin's (facts.redisCall); the warm path makes none, so it does not say so.
  facts.enter(PLUGIN);
  const generation = state.generation;
  const [record, err] = store.lookup(conf.redis, sha);
  const now = ngx.now();
  if (record === undefined) {
    // Redis is down: a key this worker knew to be valid keeps working for a bounded time
    // (its expiry still holds); revocations need Redis too, and the cache is dropped when
    // it is back.
    if (stale !== undefined && (stale.expires_at === 0 || stale.expires_at > now) && staleUsable(now - stale.checked_at, conf.cache_ttl, conf.fault_tolerant)) {
      fault.logThrottled(PLUGIN, `redis unavailable: ${err ?? "unknown error"} (keys in the worker cache keep working)`, conf);
      const known = current(conf, state, sha, stale);
      return known !== undefined ? { valid: known } : NOT_VALID;
    }
    return { err: err ?? "unknown error" };
  }

  const live = record !== false && (record.expires_at === 0 || record.expires_at > now);
  const consumer = live ? consumerOf(record as KeyRecord) : undefined;
  if (consumer === undefined) {
    // Whatever this worker knew of the key, Redis (or Kong) just said otherwise.
    state.cache.delete(sha);
    if (live) kong.log.info(`key ${(record as KeyRecord).id} belongs to consumer '${(record as KeyRecord).consumer_username}', unknown to Kong`);
    if (conf.negative_cache_ttl > 0) {
      state.unknown.set(sha, { checked_at: now, consumer_unknown_in: live ? workerCache.configVersion() : undefined }, conf.negative_cache_ttl);
    }
    return NOT_VALID;
  }

  const found = record as KeyRecord;
  const valid: ValidKey = {
    consumer,
    credential: { id: found.id, consumer: { id: consumer.id } },
    consumer_id: found.consumer_id,
    consumer_username: found.consumer_username,
    resolved_in: workerCache.configVersion(),
    expires_at: found.expires_at,
    checked_at: now,
  };
  state.unknown.delete(sha);
  // An invalidation that arrived while Redis was being asked may concern this key.
  if (generation === state.generation) {
    const ttl = found.expires_at !== 0 ? math.min(conf.cache_ttl, found.expires_at - now) : conf.cache_ttl;
    if (ttl > 0) state.cache.set(sha, valid, ttl);
  }
  return { valid };
}

/**
 * A valid key's consumer and credential; nil for an invalid key; nil plus the Redis
 * error when Redis could not be asked and the worker cache had nothing usable.
 */
function check(this: void, conf: KeyAuthConf, apiKey: string, sha: string): LuaMultiReturn<[ValidKey | undefined, string | undefined]> {
  const state = workerCache.stateFor(conf.redis);
  let [hit, stale] = state.cache.get(sha);
  // Instances on one Redis share these caches: an entry cached under a longer TTL is
  // fresh only for as long as this instance's own cache_ttl / negative_cache_ttl allow.
  if (hit !== undefined) {
    if (ngx.now() - hit.checked_at <= conf.cache_ttl) return $multi(current(conf, state, sha, hit), undefined);
    stale = hit;
  } else {
    const [unknown] = state.unknown.get(sha);
    // A consumer unknown to Kong may be known to a newer config: ask again then.
    if (unknown !== undefined && ngx.now() - unknown.checked_at <= conf.negative_cache_ttl
      && (unknown.consumer_unknown_in === undefined || unknown.consumer_unknown_in === workerCache.configVersion())) {
      return $multi(undefined, undefined);
    }
  }

  // Another request of this worker is asking Redis about this key: wait for its answer
  // rather than ask again (a popular key expiring must not become a burst of lookups).
  const pending = state.inflight.get(sha);
  if (pending !== undefined) {
    pending.waiters++;
    pending.sema.wait((2 * conf.redis.timeout) / 1000 + 0.1);
    if (pending.result !== undefined) return $multi(pending.result.valid, pending.result.err);
  }

  const [sema, semaErr] = semaphore.new(0);
  if (sema === undefined) return error(`redis-key-auth: could not create a semaphore: ${semaErr}`);
  const flight: Flight = { sema, waiters: 0 };
  state.inflight.set(sha, flight);
  const [ok, result] = pcall(fetch, conf, state, sha, stale);
  if (state.inflight.get(sha) === flight) state.inflight.delete(sha);
  if (ok) flight.result = result;
  if (flight.waiters > 0) sema.post(flight.waiters);
  if (!ok) return error(result, 0);
  return $multi(result.valid, result.err);
}

/**
 * The SHA-256 (store.hashKey) of keys this worker found valid, by the key itself, so the
 * warm path does not hash: a memo of a pure function, it changes no answer. Whether the
 * key is valid is still asked of the digest-keyed caches (cache.ts) on every request, and
 * their invalidation (pub/sub, cache_ttl) is all a revocation needs. Only keys seen valid
 * get in, and a key seen invalid leaves, so junk keys (anyone can send them, as many as
 * they like) cannot push known ones out: they pay the hash as before, and nothing here
 * grows past MAX_KNOWN_KEYS. The keys stay in this worker's memory only.
 */
const MAX_KNOWN_KEYS = 10000;
const [knownKeys, knownKeysErr] = lrucache.new<string>(MAX_KNOWN_KEYS);
if (knownKeys === undefined) error(`redis-key-auth: could not create the key memo: ${knownKeysErr}`);

/** The key's digest and whether it came from the memo; nil for a key that cannot be one of ours. */
function digestOf(this: void, apiKey: string): LuaMultiReturn<[string | undefined, boolean]> {
  const [known] = knownKeys!.get(apiKey);
  if (known !== undefined) return $multi(known, true);
  if (!wellFormed(apiKey)) return $multi(undefined, false);
  return $multi(store.hashKey(apiKey), false);
}

/** check() with the key memo kept up to date: valid keys in, keys no longer valid out. */
function checkKey(this: void, conf: KeyAuthConf, apiKey: string): LuaMultiReturn<[ValidKey | undefined, string | undefined, boolean]> {
  const [sha, memo] = digestOf(apiKey);
  if (sha === undefined) return $multi(undefined, undefined, false);
  const [valid, redisErr] = check(conf, apiKey, sha);
  if (valid !== undefined) {
    if (!memo) knownKeys!.set(apiKey, sha);
  } else if (memo && redisErr === undefined) {
    knownKeys!.delete(apiKey);
  }
  return $multi(valid, redisErr, true);
}

// ---------------------------------------------------------------- phases

const handler: KongPluginHandler<KeyAuthConf> = {
  PRIORITY: 1250,
  VERSION: SUITE_VERSION,

  configure(configs) {
    const redisConfs = [];
    if (configs !== undefined) for (const conf of configs) redisConfs.push(conf.redis);
    workerCache.configure(redisConfs);
  },

  access(conf) {
    if (!conf.run_on_preflight && kong.request.get_method() === "OPTIONS") return;
    const p = prepare(conf);
    const anonymous = p.anonymous;
    // With anonymous set, auth plugins are alternatives: another one already succeeded.
    if (anonymous !== undefined && kong.client.get_credential() !== undefined) return;

    facts.credentialNames(p.credentialNames);
    let [apiKey, failure, sent] = findKey(conf, p);
    if (apiKey !== undefined) {
      failure = ERR_INVALID_AUTH_CRED;
      const [valid, redisErr] = checkKey(conf, apiKey);
      if (valid !== undefined) {
        // Not tail calls (here and below): see lib/auth.ts.
        auth.authenticated(PLUGIN, valid.consumer, valid.credential, valid.credential.id, sent);
        return;
      }
      if (redisErr !== undefined) {
        facts.auth(PLUGIN, "error", undefined, ERR_UNEXPECTED);
        fault.onRedisFailure(PLUGIN, conf, redisErr);
        // fault_tolerant: the key cannot be checked; the request goes on unauthenticated.
        if (anonymous !== undefined) setAnonymous(conf, p, anonymous);
        else auth.clearConsumerHeaders();
        return;
      }
    }
    if (anonymous !== undefined) {
      facts.auth(PLUGIN, "anonymous", undefined, failure);
      setAnonymous(conf, p, anonymous);
      return;
    }
    facts.auth(PLUGIN, apiKey !== undefined ? "unknown" : failure === ERR_NO_API_KEY ? "missing" : "invalid", undefined, failure);
    kong.response.error(401, failure, { "WWW-Authenticate": p.challenge });
  },
};

export = handler;

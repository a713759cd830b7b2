/**
 * redis-key-auth's worker caches and their invalidation subscriber, one set per Redis
 * connection pool (plugin instances pointing at the same Redis share them).
 *
 * Two caches, by the key's SHA-256: valid keys for `cache_ttl`, and, in a cache of their
 * own, unknown ones for `negative_cache_ttl` (anyone can send junk keys, so they must not
 * push out keys known to be good). Revocations reach them through Redis pub/sub: each
 * worker runs one subscriber per pool (lib/redis/subscriber.ts: a timer that owns its
 * connection, never a pooled or shared one) and deletes the revoked hash the moment the
 * message arrives. When the subscription is (re)established both caches are dropped,
 * since messages sent while it was down are lost; `cache_ttl` bounds staleness should a
 * message be lost anyway (plus a short grace while Redis is unreachable: util.staleUsable).
 *
 * Subscribers start from `configure` (Kong 3 calls it on every worker after each config
 * change) and stop when no config uses their Redis any more. A config change keeps the
 * caches of the Redis still in use: what Redis said about a key does not depend on the
 * config. Only the consumer a valid key maps to does, so each entry notes the config
 * version it was resolved in and is resolved again against Kong (no Redis) after a change.
 */
import * as lrucache from "resty.lrucache";
import * as poolStates from "../../lib/redis/pools";
import type { RedisConf } from "../../lib/redis/schema";
import * as subscriber from "../../lib/redis/subscriber";
import { CHANNEL } from "./store";

/** Valid keys per pool and worker; least recently used keys go first. */
const MAX_ENTRIES = 10000;
/** Unknown keys per pool and worker, apart from the valid ones. */
const MAX_UNKNOWN_ENTRIES = 10000;

/** A valid key, as cached: the consumer and credential to authenticate with. */
export interface ValidKey {
  consumer: KongConsumer;
  credential: KongCredential;
  /** The record's consumer reference (KeyRecord), to find the consumer again after a config change. */
  consumer_id: string;
  consumer_username: string;
  /** The config version (configVersion()) `consumer` was looked up in. */
  resolved_in: number;
  /** Unix seconds; 0 = never. */
  expires_at: number;
  /** ngx.now() when Redis said the key was valid: bounds its use during an outage. */
  checked_at: number;
}
/** The cached answer for a key that is not valid: unknown to Redis (unknown, expired, revoked) or its consumer unknown to Kong. */
export interface UnknownKey {
  /** ngx.now() when Redis was asked: each instance's negative_cache_ttl counts from it. */
  checked_at: number;
  /** Set when Redis knows the key but Kong did not know its consumer: the config version that said so. */
  consumer_unknown_in?: number;
}

/** What one Redis lookup concluded: a valid key, or neither (invalid), or the Redis error. */
export interface LookupResult {
  valid?: ValidKey;
  err?: string;
}

/** What a flight needs of an ngx.semaphore. */
interface Semaphore {
  post(this: Semaphore, n?: number): void;
  wait(this: Semaphore, timeout_s: number): LuaMultiReturn<[boolean | undefined, string | undefined]>;
}

/** One lookup in progress: requests missing the same key meanwhile wait for its result. */
export interface Flight {
  sema: Semaphore;
  waiters: number;
  result?: LookupResult;
}

export interface PoolState extends poolStates.PoolState {
  cache: LruCache<ValidKey>;
  unknown: LruCache<UnknownKey>;
  /** Bumped by every invalidation: a lookup that raced one does not cache its answer. */
  generation: number;
  /** Lookups in progress by hash: one Redis call per key and worker, however many requests miss at once. */
  inflight: LuaTable<string, Flight>;
}

function invalidateAll(this: void, state: PoolState): void {
  state.cache.flush_all();
  state.unknown.flush_all();
  state.generation++;
}

/** Applies one invalidation: the revoked key's hash leaves the caches at once. */
export function invalidate(this: void, state: PoolState, sha: string): void {
  state.cache.delete(sha);
  state.unknown.delete(sha);
  state.generation++;
}

function newState(this: void, name: string, conf: RedisConf): PoolState {
  const [cache, err] = lrucache.new<ValidKey>(MAX_ENTRIES);
  if (cache === undefined) return error(`redis-key-auth: could not create the worker cache: ${err}`);
  const [unknown, unknownErr] = lrucache.new<UnknownKey>(MAX_UNKNOWN_ENTRIES);
  if (unknown === undefined) return error(`redis-key-auth: could not create the worker cache: ${unknownErr}`);
  const state = { name, conf, cache, unknown, generation: 0, inflight: new LuaTable() } as PoolState;
  state.subscriber = subscriber.create(conf, {
    plugin: "redis-key-auth",
    logTopic: "redis-key-auth:subscriber",
    what: "invalidation subscriber",
    channels: [CHANNEL],
    // Messages published while no subscription was up are lost: start clean.
    onConnected: () => invalidateAll(state),
    onMessage: (_channel, sha) => invalidate(state, sha),
  });
  return state;
}

const pools = poolStates.newPools(newState);

/** The current config version: a cached consumer resolved in another one may be stale. */
export function configVersion(this: void): number {
  return pools.version;
}

/** The cache of the Redis `conf` points at (hot path); see lib/redis/pools.ts for which subscribers run. */
export function stateFor(this: void, conf: RedisConf): PoolState {
  return poolStates.stateFor(pools, conf);
}

/**
 * Kong's `configure`: one cache and subscriber per Redis in use; the rest are stopped,
 * their caches dropped. The caches of a Redis still in use are kept, through an outage
 * too (a config change must not revoke what it does not concern); the consumers in them
 * are looked up again (configVersion).
 */
export function configure(this: void, redisConfs: RedisConf[]): void {
  poolStates.configure(pools, redisConfs);
}

/** The Redis configs of the enabled instances, in config order, one per pool. */
export function configuredRedis(this: void): RedisConf[] {
  return pools.configured;
}

/**
 * redis-jwt's worker caches and their invalidation subscriber, one set per Redis
 * connection pool (plugin instances on the same Redis share them); the same design as
 * redis-key-auth's cache.ts.
 *
 * Per pool: the credentials (by hash field, with their parsed public key or opened
 * secret) for `cache_ttl`, and two generations. A "c" message (a credential changed)
 * drops the credentials and bumps `credentials`, which every verified-token entry
 * remembers, so tokens are verified again against what Redis now says. An "r" message (a
 * revocation) bumps `revocations`: each token's "not revoked" answer is only trusted for
 * the generation it was obtained in, so the next request of every token asks Redis once
 * (one MGET) while the signature check stays cached.
 *
 * The invalidation subscriber is lib/redis/subscriber.ts. `subscribed` is true only
 * while its subscription is up: without it, messages may be lost, and the handler asks
 * Redis about revocations on every request.
 */
import * as lrucache from "resty.lrucache";
import * as poolStates from "../../lib/redis/pools";
import type { RedisConf } from "../../lib/redis/schema";
import * as subscriber from "../../lib/redis/subscriber";
import type { PublicKey } from "../../lib/crypto/sign";
import type { CredentialRecord } from "./store";
import { CHANNEL } from "./store";

const MAX_CREDENTIALS = 10000;

/** A credential as cached: the record, its verification key, its consumer. */
export interface CachedCredential {
  /** false: Redis has no credential under this field. */
  record: CredentialRecord | false;
  secret?: string;
  publicKey?: PublicKey;
  /** Why the record cannot verify anything (bad key, no encryption key): tokens get "Invalid key/secret". */
  unusable?: string;
  checked_at: number;
}

export interface PoolState extends poolStates.PoolState {
  credentials: LruCache<CachedCredential>;
  /** Bumped by every credential change (and by every new subscription). */
  credentialGeneration: number;
  /** Bumped by every revocation (and by every new subscription). */
  revocationGeneration: number;
  /** A subscription is up: messages reach this worker. */
  subscribed: boolean;
}

/** The plugin settings each configured Redis came with (the Admin API seals and times with them). */
let settings = new LuaTable<RedisConf, unknown>();


export function credentialsChanged(this: void, state: PoolState): void {
  state.credentials.flush_all();
  state.credentialGeneration++;
}

export function revoked(this: void, state: PoolState): void {
  state.revocationGeneration++;
}

function newState(this: void, name: string, conf: RedisConf): PoolState {
  const [credentials, err] = lrucache.new<CachedCredential>(MAX_CREDENTIALS);
  if (credentials === undefined) return error(`redis-jwt: could not create the worker cache: ${err}`);
  const state = { name, conf, credentials, credentialGeneration: 0, revocationGeneration: 0, subscribed: false } as PoolState;
  state.subscriber = subscriber.create(conf, {
    plugin: "redis-jwt",
    logTopic: "redis-jwt:subscriber",
    what: "invalidation subscriber",
    channels: [CHANNEL],
    onConnected: () => {
      // Messages published while no subscription was up are lost: trust nothing cached.
      credentialsChanged(state);
      revoked(state);
      state.subscribed = true;
    },
    onMessage: (_channel, payload) => {
      if (payload === "r") revoked(state);
      else credentialsChanged(state);
    },
    onLost: () => {
      state.subscribed = false;
    },
  });
  return state;
}

const pools = poolStates.newPools(newState);

export function configVersion(this: void): number {
  return pools.version;
}

export function stateFor(this: void, conf: RedisConf): PoolState {
  return poolStates.stateFor(pools, conf);
}

export function configure(this: void, redisConfs: RedisConf[]): void {
  if (ngx.get_phase() === "init") return;
  settings = new LuaTable();
  poolStates.configure(pools, redisConfs);
}

export function configuredRedis(this: void): RedisConf[] {
  return pools.configured;
}

export function rememberSettings(this: void, redisConf: RedisConf, conf: unknown): void {
  if (!settings.has(redisConf)) settings.set(redisConf, conf);
}
export function settingsOf(this: void, redisConf: RedisConf): unknown {
  return settings.get(redisConf);
}

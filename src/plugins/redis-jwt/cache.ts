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
import * as client from "../../lib/redis/client";
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

export interface PoolState {
  name: string;
  conf: RedisConf;
  credentials: LruCache<CachedCredential>;
  /** Bumped by every credential change (and by every new subscription). */
  credentialGeneration: number;
  /** Bumped by every revocation (and by every new subscription). */
  revocationGeneration: number;
  /** A subscription is up: messages reach this worker. */
  subscribed: boolean;
  subscriber: subscriber.Subscriber;
}

const pools = new LuaTable<string, PoolState>();
let configureSeen = false;
let wantedNames = new LuaTable<string, boolean>();
let configured: RedisConf[] = [];
let version = 0;
/** The plugin settings each configured Redis came with (the Admin API seals and times with them). */
let settings = new LuaTable<RedisConf, unknown>();

export function configVersion(this: void): number {
  return version;
}

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
  pools.set(name, state);
  return state;
}

export function stateFor(this: void, conf: RedisConf): PoolState {
  const name = client.poolName(conf);
  const state = pools.get(name);
  if (state !== undefined) {
    if (!state.subscriber.running && (!configureSeen || wantedNames.has(name))) subscriber.start(state.subscriber);
    return state;
  }
  const created = newState(name, conf);
  if (!configureSeen) subscriber.start(created.subscriber);
  return created;
}

export function configure(this: void, redisConfs: RedisConf[]): void {
  if (ngx.get_phase() === "init") return;
  version++;
  settings = new LuaTable();
  const wanted = new LuaTable<string, RedisConf>();
  const ordered: RedisConf[] = [];
  for (const conf of redisConfs) {
    const name = client.poolName(conf);
    if (!wanted.has(name)) {
      wanted.set(name, conf);
      ordered.push(conf);
    }
  }
  configured = ordered;
  configureSeen = true;
  wantedNames = new LuaTable();
  for (const [name] of pairs(wanted)) wantedNames.set(name, true);
  for (const [name, state] of pairs(pools)) {
    if (!wanted.has(name)) {
      subscriber.stop(state.subscriber);
      pools.delete(name);
    }
  }
  for (const [name, conf] of pairs(wanted)) {
    let state = pools.get(name);
    if (state === undefined) state = newState(name, conf);
    state.conf = conf;
    state.subscriber.conf = conf;
    subscriber.start(state.subscriber);
  }
}

export function configuredRedis(this: void): RedisConf[] {
  return configured;
}

export function rememberSettings(this: void, redisConf: RedisConf, conf: unknown): void {
  if (!settings.has(redisConf)) settings.set(redisConf, conf);
}
export function settingsOf(this: void, redisConf: RedisConf): unknown {
  return settings.get(redisConf);
}

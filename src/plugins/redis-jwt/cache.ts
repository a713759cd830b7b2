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
 * `subscribed` is true only while a subscription is up: without it, messages may be
 * lost, and the handler asks Redis about revocations on every request.
 */
import * as lrucache from "resty.lrucache";
import * as client from "../../lib/redis/client";
import { logThrottled } from "../../lib/redis/fault";
import * as subscriptions from "../../lib/redis/subscriptions";
import type { RedisConf } from "../../lib/redis/schema";
import type { PublicKey } from "../../lib/crypto/sign";
import type { CredentialRecord } from "./store";
import { CHANNEL } from "./store";

const LOG_TOPIC = "redis-jwt:subscriber";
const MAX_CREDENTIALS = 10000;
const READ_TIMEOUT_MS = 1000;
const HEARTBEAT = 5;
const BACKOFF_MIN = 0.2;
const BACKOFF_MAX = 5;
const STABLE_AFTER = 5;

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
  running: boolean;
  stopped: boolean;
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

type ReadReply = (this: RestyRedis) => LuaMultiReturn<[RedisReply | undefined, string | undefined]>;
type Subscribe = (this: RestyRedis, channel: string) => LuaMultiReturn<[RedisReply | false | undefined, string | undefined]>;
const PING = "*1\r\n$4\r\nPING\r\n";

export function credentialsChanged(this: void, state: PoolState): void {
  state.credentials.flush_all();
  state.credentialGeneration++;
}

export function revoked(this: void, state: PoolState): void {
  state.revocationGeneration++;
}

function shouldStop(this: void, state: PoolState): boolean {
  return state.stopped || ngx.worker.exiting();
}

function pause(this: void, state: PoolState, seconds: number): void {
  let left = seconds;
  while (left > 0 && !shouldStop(state)) {
    const slice = math.min(left, 1);
    ngx.sleep(slice);
    left -= slice;
  }
}

function listen(this: void, state: PoolState, red: RestyRedis): string | undefined {
  const readReply = red["read_reply"] as ReadReply;
  const sock = (red as RestyRedisWithSock)._sock!;
  let lastHeard = ngx.now();
  let pingSentAt: number | undefined;
  while (!shouldStop(state)) {
    const [reply, err] = readReply.call(red);
    const now = ngx.now();
    if (reply === undefined) {
      if (err !== "timeout") return `lost the subscription: ${err}`;
      if (pingSentAt !== undefined) {
        if (now - pingSentAt >= HEARTBEAT) return "lost the subscription: no answer to PING";
      } else if (now - lastHeard >= HEARTBEAT) {
        const [sent, sendErr] = sock.send(PING);
        if (sent === undefined) return `lost the subscription: ${sendErr}`;
        pingSentAt = now;
      }
      continue;
    }
    lastHeard = now;
    pingSentAt = undefined;
    const message = reply as string[];
    if (type(reply) === "table" && message[0] === "message" && message[1] === CHANNEL) {
      if (message[2] === "r") revoked(state);
      else credentialsChanged(state);
    }
  }
  return undefined;
}

function subscribeLoop(this: void, state: PoolState): void {
  let backoff = BACKOFF_MIN;
  const health = subscriptions.track("redis-jwt", state.name);
  while (!shouldStop(state)) {
    const [red, connectErr] = client.connect(state.conf);
    let failure: string | undefined;
    if (red === undefined) {
      failure = `invalidation subscriber could not connect: ${connectErr}`;
    } else {
      const subscribe = red["subscribe"] as Subscribe;
      const [ok, subErr] = subscribe.call(red, CHANNEL);
      if (ok === undefined || ok === false) {
        failure = `invalidation subscriber could not SUBSCRIBE: ${subErr}`;
      } else {
        // Messages published while no subscription was up are lost: start clean.
        credentialsChanged(state);
        revoked(state);
        state.subscribed = true;
        subscriptions.subscribed(health);
        red.set_timeout(READ_TIMEOUT_MS);
        const upSince = ngx.now();
        const lost = listen(state, red);
        state.subscribed = false;
        subscriptions.lost(health);
        if (lost !== undefined) {
          failure = `invalidation subscriber ${lost}; reconnecting`;
          if (ngx.now() - upSince >= STABLE_AFTER) backoff = BACKOFF_MIN;
        }
      }
      red.close();
    }
    if (failure !== undefined && !shouldStop(state)) {
      logThrottled(LOG_TOPIC, failure);
      pause(state, backoff);
      backoff = math.min(backoff * 2, BACKOFF_MAX);
    }
  }
  subscriptions.forget("redis-jwt", state.name);
}

function subscriber(this: void, premature: boolean, state: PoolState): void {
  if (!premature) {
    const [ok, err] = pcall(subscribeLoop, state);
    if (!ok) logThrottled(LOG_TOPIC, `invalidation subscriber failed: ${tostring(err)}`);
  }
  state.subscribed = false;
  state.running = false;
}

function start(this: void, state: PoolState): void {
  if (state.running || state.stopped) return;
  const phase = ngx.get_phase();
  if (phase === "init" || phase === "header_filter" || phase === "body_filter" || phase === "log") return;
  state.running = true;
  const [ok, err] = ngx.timer.at(0, subscriber, state);
  if (ok === undefined) {
    state.running = false;
    logThrottled(LOG_TOPIC, `could not start the invalidation subscriber: ${err}`);
  }
}

function newState(this: void, name: string, conf: RedisConf): PoolState {
  const [credentials, err] = lrucache.new<CachedCredential>(MAX_CREDENTIALS);
  if (credentials === undefined) return error(`redis-jwt: could not create the worker cache: ${err}`);
  const state: PoolState = { name, conf, credentials, credentialGeneration: 0, revocationGeneration: 0, subscribed: false, running: false, stopped: false };
  pools.set(name, state);
  return state;
}

export function stateFor(this: void, conf: RedisConf): PoolState {
  const name = client.poolName(conf);
  const state = pools.get(name);
  if (state !== undefined) {
    if (!state.running && (!configureSeen || wantedNames.has(name))) start(state);
    return state;
  }
  const created = newState(name, conf);
  if (!configureSeen) start(created);
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
      state.stopped = true;
      pools.delete(name);
    }
  }
  for (const [name, conf] of pairs(wanted)) {
    let state = pools.get(name);
    if (state === undefined) state = newState(name, conf);
    state.conf = conf;
    start(state);
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

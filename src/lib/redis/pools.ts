/**
 * A plugin's per-Redis worker state (caches and their subscriber.ts subscriber), one per
 * connection pool, following Kong's `configure` (redis-key-auth and redis-jwt).
 *
 * Before the first `configure` a state and its subscriber start with the first request
 * that needs them. Once `configure` ran (Kong 3 calls it on every worker after each config
 * change), it decides: one state and subscriber per Redis in use; the states of a Redis no
 * config uses any more are dropped and their subscribers stopped. The states of a Redis
 * still in use are kept (a config change must not drop what it does not concern); the
 * plugin re-resolves what depends on the config through `version`.
 */
import * as client from "./client";
import type { RedisConf } from "./schema";
import * as subscriber from "./subscriber";

export interface PoolState {
  /** client.poolName of the Redis. */
  name: string;
  /** The latest config table for this Redis. */
  conf: RedisConf;
  subscriber: subscriber.Subscriber;
}

export interface Pools<S extends PoolState> {
  readonly states: LuaTable<string, S>;
  /** Makes the state of a Redis not seen yet (its subscriber not started). */
  readonly create: (this: void, name: string, conf: RedisConf) => S;
  /** `configure` ran in this worker: it decides which subscribers exist. */
  configureSeen: boolean;
  /** The pools the last `configure` wants. */
  wanted: LuaTable<string, boolean>;
  /** The Redis of each enabled instance, first come first, one per pool (the Admin API picks from them). */
  configured: RedisConf[];
  /** Bumped by every `configure`: what was resolved against the config before it is stale. */
  version: number;
}

export function newPools<S extends PoolState>(this: void, create: (this: void, name: string, conf: RedisConf) => S): Pools<S> {
  return { states: new LuaTable(), create, configureSeen: false, wanted: new LuaTable(), configured: [], version: 0 };
}

/** The Redis configs of `confs`, one per pool, first come first. */
export function distinct(this: void, confs: RedisConf[]): RedisConf[] {
  const seen = new LuaTable<string, boolean>();
  const ordered: RedisConf[] = [];
  for (const conf of confs) {
    const name = client.poolName(conf);
    if (!seen.has(name)) {
      seen.set(name, true);
      ordered.push(conf);
    }
  }
  return ordered;
}

/**
 * The state of the Redis `conf` points at (hot path: a few table lookups). A subscriber
 * that ended is started again here. A Redis no config uses (a request still running with
 * the previous config) gets a state of its own but no subscriber once `configure` ran.
 */
export function stateFor<S extends PoolState>(this: void, pools: Pools<S>, conf: RedisConf): S {
  const name = client.poolName(conf);
  const state = pools.states.get(name);
  if (state !== undefined) {
    if (!state.subscriber.running && (!pools.configureSeen || pools.wanted.has(name))) subscriber.start(state.subscriber);
    return state;
  }
  const created = pools.create(name, conf);
  pools.states.set(name, created);
  if (!pools.configureSeen) subscriber.start(created.subscriber);
  return created;
}

/** Kong's `configure` with the Redis of every enabled instance (nothing in init: no timers there). */
export function configure<S extends PoolState>(this: void, pools: Pools<S>, redisConfs: RedisConf[]): void {
  if (ngx.get_phase() === "init") return;
  pools.version++;
  pools.configured = distinct(redisConfs);
  pools.configureSeen = true;
  const wanted = new LuaTable<string, RedisConf>();
  for (const conf of pools.configured) wanted.set(client.poolName(conf), conf);
  pools.wanted = new LuaTable();
  for (const [name] of pairs(wanted)) pools.wanted.set(name, true);
  for (const [name, state] of pairs(pools.states)) {
    if (!wanted.has(name)) {
      subscriber.stop(state.subscriber);
      pools.states.delete(name);
    }
  }
  for (const [name, conf] of pairs(wanted)) {
    let state = pools.states.get(name);
    if (state === undefined) {
      state = pools.create(name, conf);
      pools.states.set(name, state);
    }
    state.conf = conf;
    state.subscriber.conf = conf;
    subscriber.start(state.subscriber);
  }
}

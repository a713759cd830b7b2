/**
 * Health of this worker's pub/sub subscribers (redis-key-auth, redis-jwt, redis-ip-access
 * invalidations), for redis-metrics: each subscriber says when its subscription is up and
 * when it is lost; nothing else reads or changes its private state. One record per plugin
 * and pool, kept while the subscriber's loop runs.
 */

export interface Subscription {
  plugin: string;
  /** "host:port/db" of the pool, without the pool name's credentials hash. */
  redis: string;
  /** 1 while subscribed, else 0. */
  up: number;
  /** Subscriptions made since the loop started: more than 1 means it lost and made one again. */
  subscribes: number;
}

import { endpointOfPool } from "./breaker";

const registry = new LuaTable<string, Subscription>();

/** The record of `plugin`'s subscriber on `pool`, down until it subscribes (a loop that raised left it as it was). */
export function track(this: void, plugin: string, pool: string): Subscription {
  const id = plugin + "\0" + pool;
  let s = registry.get(id);
  if (s === undefined) {
    s = { plugin, redis: endpointOfPool(pool), up: 0, subscribes: 0 };
    registry.set(id, s);
  }
  s.up = 0;
  return s;
}

export function subscribed(this: void, s: Subscription): void {
  s.up = 1;
  s.subscribes++;
}

export function lost(this: void, s: Subscription): void {
  s.up = 0;
}

/** The subscriber's loop ended (its Redis is no longer configured). */
export function forget(this: void, plugin: string, pool: string): void {
  registry.delete(plugin + "\0" + pool);
}

/** This worker's subscriptions, read-only copies. */
export function all(this: void): Subscription[] {
  const out: Subscription[] = [];
  for (const [, s] of pairs(registry)) out.push({ plugin: s.plugin, redis: s.redis, up: s.up, subscribes: s.subscribes });
  return out;
}

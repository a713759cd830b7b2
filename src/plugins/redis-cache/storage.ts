/**
 * redis-cache's Redis side: key names, the lookup (with the generation read in the same
 * round trip), stores, lock releases, purges. Functions return `value, err` (err from
 * the Redis client); the phase handler decides what a failure means.
 *
 * Keys (docs/redis-keys.md):
 *   krs:redis-cache:v1:{ns}:generation              purge-all counter, no TTL
 *   krs:redis-cache:v1:{<gen>.<cache key>}:entry    the cached response or Vary marker
 *   krs:redis-cache:v1:{<gen>.<cache key>}:fill     stampede lock (holder token or "!")
 *   krs:redis-cache:v1:{<gen>.<cache key>}:refresh  refresh-ahead lock
 * The three keys of one cache key share a hash tag, so each script call stays in one
 * Redis Cluster slot. The generation read travels in the same pipeline as the lookup
 * script (a separate command: it lives in another slot; on a cluster the client splits
 * the pipeline per node).
 */
import * as client from "../../lib/redis/client";
import { key } from "../../lib/keys";
import type { RedisConf } from "../../lib/redis/schema";
import { PLUGIN_NAME } from "./conf";
import { flushL1, type Prepared } from "./state";

export const GENERATION_KEY = key(PLUGIN_NAME, "ns", "generation");

export function entryKey(this: void, gen: string, cacheKey: string): string {
  return key(PLUGIN_NAME, gen + "." + cacheKey, "entry");
}
export function fillKey(this: void, gen: string, cacheKey: string): string {
  return key(PLUGIN_NAME, gen + "." + cacheKey, "fill");
}
export function refreshKey(this: void, gen: string, cacheKey: string): string {
  return key(PLUGIN_NAME, gen + "." + cacheKey, "refresh");
}

/** The generation last seen per Redis endpoint (pool name), in this worker. */
const generations = new LuaTable<string, string>();

function noteGeneration(this: void, redis: RedisConf, gen: string): boolean {
  const pool = client.poolName(redis);
  if (generations.get(pool) === gen) return false;
  const known = generations.has(pool);
  generations.set(pool, gen);
  // Entries of an older generation were purged: this worker's copies go too.
  if (known) flushL1();
  return true;
}

/** The generation this worker last saw for `redis` ("0" before any lookup). */
export function knownGeneration(this: void, redis: RedisConf): string {
  return generations.get(client.poolName(redis)) ?? "0";
}

export const HIT = 1;
export const FILL = 2;
export const WAIT = 3;
/** An unexpired entry this node cannot read: the caller holds the fill lock, and must leave the entry alone. */
export const FOREIGN = 4;
/** The fill-lock value of a request whose response could not be cached. */
export const UNCACHEABLE = "!";

export interface Lookup {
  /** HIT, FILL (the caller holds the fill lock), WAIT (someone else does) or FOREIGN. */
  kind: number;
  /** HIT, FOREIGN: the stored value. */
  value?: string;
  /** HIT: the caller holds the refresh lock. */
  refresh?: boolean;
  /** WAIT: the holder's token, UNCACHEABLE, or "" (a peek, nobody holds it). */
  holder?: string;
  /** WAIT: the key holds an unexpired entry this node cannot read. */
  foreign?: boolean;
  /** The generation the keys were built with. */
  gen: string;
}

function errorOf(this: void, reply: client.PipelineReply | undefined): string | undefined {
  if (type(reply) === "table" && (reply as [false, string])[0] === false) return (reply as [false, string])[1];
  return undefined;
}

/**
 * One cache read: cache-lookup-3.lua, with the generation read in the same round trip.
 * `peek`: take no lock (a request that may only be answered from the cache).
 */
export function lookup(this: void, redis: RedisConf, p: Prepared, cacheKey: string, token: string, nowMs: number, peek: boolean): LuaMultiReturn<[Lookup | undefined, string | undefined]> {
  let gen = generations.get(client.poolName(redis)) ?? "0";
  for (let attempt = 1; attempt <= 2; attempt++) {
    const [replies, err] = client.pipeline(redis, [
      { command: "get", args: [GENERATION_KEY] },
      {
        script: "cache-lookup",
        keys: [entryKey(gen, cacheKey), fillKey(gen, cacheKey), refreshKey(gen, cacheKey)],
        args: [token, p.lockMs, math.floor(nowMs), p.refreshArg, p.slidingArg, p.readableArg, peek ? "1" : "0"],
      },
    ]);
    if (replies === undefined) return $multi(undefined, err);
    const genErr = errorOf(replies[0]);
    if (genErr !== undefined) return $multi(undefined, "redis GET of the cache generation failed: " + genErr);
    const current = replies[0] === ngx.null ? "0" : tostring(replies[0]);
    if (noteGeneration(redis, current) && current !== gen) {
      // Purged everything since this worker last looked: read again under the new generation.
      gen = current;
      continue;
    }
    const reply = replies[1];
    const scriptErr = errorOf(reply);
    if (scriptErr !== undefined) return $multi(undefined, "redis script 'cache-lookup' failed: " + scriptErr);
    const r = reply as RedisReply[];
    const kind = r[0] as number;
    if (kind === HIT) return $multi({ kind, value: r[1] as string, refresh: r[2] === 1, gen }, undefined);
    if (kind === FOREIGN) return $multi({ kind, value: r[1] as string, gen }, undefined);
    if (kind === WAIT) return $multi({ kind, holder: r[1] as string, foreign: r[2] === 1, gen }, undefined);
    return $multi({ kind, gen }, undefined);
  }
  return $multi(undefined, "the cache generation changed twice during one lookup");
}

/** SET of one entry or marker, for a write pipeline. */
export function setCall(this: void, entry: string, value: string, ttlMs: number): client.Call {
  return { command: "set", args: [entry, value, "PX", math.max(math.floor(ttlMs), 1)] };
}

/** cache-release-1.lua, for a write pipeline: deletes the lock or leaves the marker for `markerMs`. */
export function releaseCall(this: void, lockKey: string, token: string, markerMs: number): client.Call {
  return { script: "cache-release", keys: [lockKey], args: [token, markerMs] };
}

/** The error of a pipelined reply, if it is one. */
export function replyError(this: void, reply: client.PipelineReply | undefined): string | undefined {
  return errorOf(reply);
}

/** Gives a lock back: deleted, or replaced by the "uncacheable" marker for `markerMs`. */
export function release(this: void, redis: RedisConf, lockKey: string, token: string, markerMs: number): LuaMultiReturn<[boolean | undefined, string | undefined]> {
  const [res, err] = client.script(redis, { script: "cache-release", keys: [lockKey], args: [token, markerMs] });
  if (res === undefined) return $multi(undefined, err);
  if (res === false) return $multi(undefined, err);
  return $multi(res === 1, undefined);
}

function currentGeneration(this: void, redis: RedisConf): LuaMultiReturn<[string | undefined, string | undefined]> {
  const [res, err] = client.command(redis, "get", GENERATION_KEY);
  if (res === undefined || res === false) return $multi(undefined, err);
  const gen = res === ngx.null ? "0" : tostring(res);
  noteGeneration(redis, gen);
  return $multi(gen, undefined);
}

/** Removes one entry (current generation). true when it existed. */
export function purge(this: void, redis: RedisConf, cacheKey: string): LuaMultiReturn<[boolean | undefined, string | undefined]> {
  const [gen, genErr] = currentGeneration(redis);
  if (gen === undefined) return $multi(undefined, genErr);
  const [res, err] = client.script(redis, {
    script: "cache-purge",
    keys: [entryKey(gen, cacheKey), fillKey(gen, cacheKey), refreshKey(gen, cacheKey)],
    args: [],
  });
  if (res === undefined || res === false) return $multi(undefined, err);
  return $multi(res === 1, undefined);
}

/** Drops every entry in this Redis by moving to a new generation. Returns it. */
export function flush(this: void, redis: RedisConf): LuaMultiReturn<[string | undefined, string | undefined]> {
  const [res, err] = client.script(redis, { script: "cache-flush", keys: [GENERATION_KEY], args: [] });
  if (res === undefined || res === false) return $multi(undefined, err);
  const gen = tostring(res);
  noteGeneration(redis, gen);
  return $multi(gen, undefined);
}

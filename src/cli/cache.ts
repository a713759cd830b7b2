/**
 * `krs cache purge [KEY] [--redis URL | --redis-cluster … | --redis-sentinel …]`: redis-cache's purge from the command line, with
 * the same scripts the Admin API runs (redis-lua/cache-purge-3.lua, cache-flush-1.lua)
 * and the same key names (src/plugins/redis-cache/storage.ts, docs/redis-keys.md).
 *
 * Without KEY every entry goes, in O(1) (a new generation). Copies the gateways' workers
 * hold in L1 expire within their l1_ttl.
 */
import type { Cluster, Redis } from "ioredis";
import { parseArgs, UsageError } from "./args.js";
import { defineScripts, describeTarget, openRedis, REDIS_FLAGS, REDIS_TARGET_HELP, REDIS_TARGET_USAGE, redisTargetFromFlags, type RedisTarget } from "./redis.js";

const USAGE = `usage: krs cache purge [KEY] ${REDIS_TARGET_USAGE}

${REDIS_TARGET_HELP}`;

export const GENERATION_KEY = "krs:redis-cache:v1:{ns}:generation";

/** The three keys of one cache key in one generation (same hash tag). */
export function cacheKeys(generation: string, cacheKey: string): [string, string, string] {
  const prefix = `krs:redis-cache:v1:{${generation}.${cacheKey}}`;
  return [`${prefix}:entry`, `${prefix}:fill`, `${prefix}:refresh`];
}

interface CacheScripts {
  cachePurge(entry: string, fill: string, refresh: string): Promise<number>;
  cacheFlush(generationKey: string): Promise<number>;
}

/** Connects and defines the purge scripts (same files the gateway embeds). */
async function connect(target: RedisTarget): Promise<(Redis | Cluster) & CacheScripts> {
  return defineScripts<CacheScripts, Redis | Cluster>(await openRedis(target), { cachePurge: "cache-purge", cacheFlush: "cache-flush" });
}

/** Removes one entry; true when it existed. */
export async function purgeKey(redis: Redis | Cluster, cacheKey: string): Promise<boolean> {
  const generation = (await redis.get(GENERATION_KEY)) ?? "0";
  const [entry, fill, refresh] = cacheKeys(generation, cacheKey);
  return (await (redis as (Redis | Cluster) & CacheScripts).cachePurge(entry, fill, refresh)) === 1;
}

/** Moves to a new generation; returns it. */
export async function purgeAll(redis: Redis | Cluster): Promise<number> {
  return (redis as (Redis | Cluster) & CacheScripts).cacheFlush(GENERATION_KEY);
}

/** `krs cache ...`; returns the exit status. */
export async function cacheCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === "help" || sub === "--help") {
    console.log(USAGE);
    return 0;
  }
  if (sub !== "purge") throw new UsageError(`unknown cache command '${sub}'`);
  const args = parseArgs(rest, REDIS_FLAGS);
  if (args.positional.length > 1) throw new UsageError("cache purge takes at most one KEY");
  const key = args.positional[0]?.toLowerCase();
  if (key !== undefined && !/^[0-9a-f]{64}$/.test(key)) {
    throw new UsageError(`KEY must be a cache key (the 64 hex digits of an X-Cache-Key), not '${args.positional[0]}'`);
  }
  const target = redisTargetFromFlags(args.flags);
  const where = describeTarget(target);
  let redis: ((Redis | Cluster) & CacheScripts) | undefined;
  try {
    redis = await connect(target);
    if (key === undefined) {
      const generation = await purgeAll(redis);
      console.log(`purged every redis-cache entry in ${where} (now generation ${generation})`);
      return 0;
    }
    if (await purgeKey(redis, key)) {
      console.log(`purged ${key}`);
      return 0;
    }
    console.error(`krs cache purge: no entry for ${key} in ${where}`);
    return 1;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    console.error(`krs cache purge: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  } finally {
    redis?.disconnect();
  }
}

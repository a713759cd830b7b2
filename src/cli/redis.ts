/**
 * Node-side access to the suite's Redis data, for the CLI and the tests: the same
 * redis-lua/ script files the plugins embed (one source of truth), defined on ioredis
 * connections, and one way to connect from a `--redis` URL.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Cluster, Redis, type RedisOptions } from "ioredis";
import { UsageError } from "./args.js";
import { suiteRoot } from "./paths.js";

export const DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0";
export const REDIS_URL_HELP = `redis://[user:pass@]host:port/db or rediss://… (TLS); default $KRS_REDIS_URL, else ${DEFAULT_REDIS_URL}`;

/** Redis could not be reached; the message never contains the password. */
export class RedisConnectError extends Error {}

export interface ScriptFile {
  /** File name without `-<numKeys>.lua`, as the Lua side names it. */
  name: string;
  numberOfKeys: number;
  lua: string;
}

/** One script of redis-lua/ by name (`key-auth-create` → key-auth-create-3.lua). */
export function loadScript(name: string, root = suiteRoot()): ScriptFile {
  const dir = join(root, "redis-lua");
  for (const file of readdirSync(dir)) {
    const m = /^(.*)-(\d+)\.lua$/.exec(file);
    if (m && m[1] === name) return { name, numberOfKeys: Number(m[2]), lua: readFileSync(join(dir, file), "utf8") };
  }
  throw new Error(`no script redis-lua/${name}-<numKeys>.lua`);
}

/**
 * Defines redis-lua scripts as ioredis commands (EVALSHA, EVAL on NOSCRIPT): for each
 * `[command, script]` pair, `redis[command](...keys, ...args)` runs that script.
 */
export function defineScripts<T extends object>(redis: Redis, scripts: Record<keyof T & string, string>): Redis & T {
  for (const [command, name] of Object.entries(scripts) as [string, string][]) {
    const script = loadScript(name);
    redis.defineCommand(command, { numberOfKeys: script.numberOfKeys, lua: script.lua });
  }
  return redis as Redis & T;
}

/** The URL without its password, for messages. */
export function redactedUrl(url: string): string {
  return url.replace(/^(rediss?:\/\/)([^@/]*)@/, (_, scheme: string, auth: string) => `${scheme}${auth.includes(":") ? auth.split(":")[0] + ":***" : "***"}@`);
}

/** The `--redis` flag, else $KRS_REDIS_URL, else the default. */
export function redisUrlFrom(flag: string | undefined): string {
  return flag ?? process.env.KRS_REDIS_URL ?? DEFAULT_REDIS_URL;
}

/** One connection that fails fast and clearly (no retries, no offline queue) instead of retrying forever. */
export async function connectRedis(url: string): Promise<Redis> {
  if (!/^rediss?:\/\//.test(url)) throw new UsageError(`--redis: expected redis://[user:pass@]host:port/db, got '${url}'`);
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 5000, enableOfflineQueue: false });
  // connect() only says "Connection is closed"; the reason comes as an error event.
  let reason: Error | undefined;
  redis.on("error", (e: Error) => (reason = e));
  try {
    await redis.connect();
  } catch (e) {
    redis.disconnect();
    throw new RedisConnectError(`could not connect to redis at ${redactedUrl(url)}: ${(reason ?? (e as Error)).message}`);
  }
  return redis;
}

/** A plugin's `config.redis` record (Kong's and Kong Enterprise's field names), as the Node side reads it. */
export interface RedisConfig {
  host?: string;
  port?: number;
  username?: string;
  password?: string;
  database?: number;
  timeout?: number;
  cluster_nodes?: { ip: string; port: number }[] | null;
  sentinel_master?: string | null;
  sentinel_role?: "master" | "slave" | "any" | null;
  sentinel_nodes?: { host: string; port: number }[] | null;
  sentinel_username?: string | null;
  sentinel_password?: string | null;
}

/**
 * The ioredis client for the Redis a plugin config points at, as the gateway reaches it:
 * a `Cluster` for `cluster_nodes`, a sentinel-backed `Redis` for `sentinel_*`, else a plain
 * `Redis`. `extra` is passed through (e.g. lazyConnect).
 */
export function redisFor(conf: RedisConfig, extra: RedisOptions = {}): Redis | Cluster {
  const auth: RedisOptions = { username: conf.username || undefined, password: conf.password || undefined, connectTimeout: conf.timeout ?? 2000, ...extra };
  if (conf.cluster_nodes && conf.cluster_nodes.length > 0) {
    return new Cluster(conf.cluster_nodes.map((n) => ({ host: n.ip, port: n.port })), { redisOptions: auth, maxRedirections: 16 });
  }
  if (conf.sentinel_master && conf.sentinel_nodes && conf.sentinel_nodes.length > 0) {
    return new Redis({
      ...auth,
      db: conf.database ?? 0,
      name: conf.sentinel_master,
      role: conf.sentinel_role === "slave" ? "slave" : "master",
      sentinels: conf.sentinel_nodes.map((n) => ({ host: n.host, port: n.port })),
      sentinelUsername: conf.sentinel_username || undefined,
      sentinelPassword: conf.sentinel_password || undefined,
    });
  }
  return new Redis({ ...auth, host: conf.host ?? "127.0.0.1", port: conf.port ?? 6379, db: conf.database ?? 0 });
}

/**
 * Node-side access to the suite's Redis data, for the CLI and the tests: the same
 * redis-lua/ script files the plugins embed (one source of truth), defined on ioredis
 * connections, and one way to connect from a `--redis` URL.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from "ioredis";
import { parseListen, UsageError } from "./args.js";
import { suiteRoot } from "./paths.js";
import { Option, type Command } from "commander";

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
export function defineScripts<T extends object, R extends Redis | Cluster = Redis>(redis: R, scripts: Record<keyof T & string, string>): R & T {
  for (const [command, name] of Object.entries(scripts) as [string, string][]) {
    const script = loadScript(name);
    redis.defineCommand(command, { numberOfKeys: script.numberOfKeys, lua: script.lua });
  }
  return redis as R & T;
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
export function redisFor(conf: RedisConfig, extra: RedisOptions = {}, clusterExtra: ClusterOptions = {}): Redis | Cluster {
  const auth: RedisOptions = { username: conf.username || undefined, password: conf.password || undefined, connectTimeout: conf.timeout ?? 2000, ...extra };
  if (conf.cluster_nodes && conf.cluster_nodes.length > 0) {
    return new Cluster(conf.cluster_nodes.map((n) => ({ host: n.ip, port: n.port })), { redisOptions: auth, maxRedirections: 16, ...clusterExtra });
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

// ---------------------------------------------------------------- --redis-cluster / --redis-sentinel

/** The flags every Redis-talking command takes, as parseArgs names them. */
export const REDIS_FLAGS = ["redis", "redis-cluster", "redis-sentinel", "sentinel-master"];
export const REDIS_TARGET_USAGE = "[--redis URL | --redis-cluster H:P[,H:P...] | --redis-sentinel H:P[,H:P...] --sentinel-master NAME]";
export const REDIS_TARGET_HELP = `--redis: ${REDIS_URL_HELP}. --redis-cluster: seed nodes of a Redis Cluster; --redis-sentinel: sentinels, with --sentinel-master the monitored name; with either, a --redis URL gives only the username, password, db and TLS`;

/** Where a command's Redis is: one server, a cluster, or a sentinel-managed master. */
export interface RedisTarget {
  /** The URL: the server itself, or (with a cluster or sentinels) only its credentials, db and TLS. */
  url: string;
  cluster?: { host: string; port: number }[];
  sentinel?: { nodes: { host: string; port: number }[]; master: string };
}

export interface RedisTargetFlags {
  redis?: string;
  redisCluster?: string;
  redisSentinel?: string;
  sentinelMaster?: string;
}

function hostPorts(flag: string, list: string): { host: string; port: number }[] {
  const parts = list.split(",").map((p) => p.trim()).filter((p) => p !== "");
  if (parts.length === 0) throw new UsageError(`${flag}: expected HOST:PORT[,HOST:PORT...], got '${list}'`);
  return parts.map((p) => parseListen(flag, p));
}

/** The one reading of the Redis flags: one mode at a time, each error one usage line. */
export function redisTargetFrom(flags: RedisTargetFlags): RedisTarget {
  if (flags.redisCluster !== undefined && flags.redisSentinel !== undefined) throw new UsageError("--redis-cluster and --redis-sentinel exclude each other: give one");
  if (flags.sentinelMaster !== undefined && flags.redisSentinel === undefined) throw new UsageError("--sentinel-master goes with --redis-sentinel");
  const url = redisUrlFrom(flags.redis);
  if (!/^rediss?:\/\//.test(url)) throw new UsageError(`--redis: expected redis://[user:pass@]host:port/db, got '${url}'`);
  if (flags.redisCluster !== undefined) {
    if (flags.redis !== undefined && /\/[1-9]\d*$/.test(flags.redis)) throw new UsageError("--redis-cluster: a Redis Cluster has database 0 only; drop the /db from --redis");
    return { url, cluster: hostPorts("--redis-cluster", flags.redisCluster) };
  }
  if (flags.redisSentinel !== undefined) {
    if (flags.sentinelMaster === undefined || flags.sentinelMaster === "") throw new UsageError("--redis-sentinel needs --sentinel-master NAME (the name the sentinels monitor)");
    return { url, sentinel: { nodes: hostPorts("--redis-sentinel", flags.redisSentinel), master: flags.sentinelMaster } };
  }
  return { url };
}

/** The same, from the flags of the commands on util.parseArgs. */
export function redisTargetFromFlags(flags: Map<string, string>): RedisTarget {
  return redisTargetFrom({ redis: flags.get("redis"), redisCluster: flags.get("redis-cluster"), redisSentinel: flags.get("redis-sentinel"), sentinelMaster: flags.get("sentinel-master") });
}

/** The commander options for the same flags (read back with redisTargetFrom). */
export function redisTargetOptions(): Option[] {
  return [
    new Option("--redis <url>", REDIS_URL_HELP),
    new Option("--redis-cluster <nodes>", "a Redis Cluster: seed nodes HOST:PORT[,HOST:PORT...] (credentials and TLS from --redis)"),
    new Option("--redis-sentinel <nodes>", "sentinels HOST:PORT[,HOST:PORT...] of the master named by --sentinel-master (credentials, db and TLS from --redis)"),
    new Option("--sentinel-master <name>", "the master name the sentinels monitor"),
  ];
}

/** Adds them to a commander command, so every Redis-talking command takes the same four. */
export function withRedisTarget<C extends Command>(command: C): C {
  for (const o of redisTargetOptions()) command.addOption(o);
  return command;
}

/** For messages: where the command went, without any password. */
export function describeTarget(t: RedisTarget): string {
  if (t.cluster) return `cluster ${t.cluster.map((n) => `${n.host}:${n.port}`).join(",")}`;
  if (t.sentinel) return `sentinel master ${t.sentinel.master} via ${t.sentinel.nodes.map((n) => `${n.host}:${n.port}`).join(",")}`;
  return redactedUrl(t.url);
}

/** A target as a plugin's config.redis record, so the CLI connects exactly as redisFor does for the tests. */
function targetConfig(t: RedisTarget): { conf: RedisConfig; tls: boolean } {
  const u = new URL(t.url);
  const conf: RedisConfig = {
    host: u.hostname || "127.0.0.1",
    port: Number(u.port || 6379),
    username: u.username ? decodeURIComponent(u.username) : undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    database: Number(u.pathname.replace(/^\//, "") || 0),
    timeout: 5000,
  };
  if (t.cluster) conf.cluster_nodes = t.cluster.map((n) => ({ ip: n.host, port: n.port }));
  if (t.sentinel) {
    conf.sentinel_master = t.sentinel.master;
    conf.sentinel_nodes = t.sentinel.nodes;
  }
  return { conf, tls: u.protocol === "rediss:" };
}

/**
 * The one opener of the CLI: a plain connection for a URL (connectRedis), an ioredis
 * `Cluster` (slot map loaded) or a sentinel-resolved master, each failing fast and
 * clearly rather than retrying forever.
 */
export async function openRedis(t: RedisTarget): Promise<Redis | Cluster> {
  if (!t.cluster && !t.sentinel) return connectRedis(t.url);
  const { conf, tls } = targetConfig(t);
  return connectFor(conf, tls, describeTarget(t));
}

/** A plugin config's cluster or sentinel deployment through redisFor, connected (slot map loaded, master resolved) or a RedisConnectError naming `where`. */
export async function connectFor(conf: RedisConfig, tls: boolean, where: string): Promise<Redis | Cluster> {
  const failFast: RedisOptions = { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, tls: tls ? {} : undefined };
  const redis = conf.cluster_nodes && conf.cluster_nodes.length > 0
    ? redisFor(conf, failFast, { lazyConnect: true, clusterRetryStrategy: () => null, slotsRefreshTimeout: 5000 })
    : redisFor(conf, { ...failFast, enableOfflineQueue: false, sentinelRetryStrategy: () => null });
  let reason: Error | undefined;
  redis.on("error", (e: Error) => (reason = e));
  try {
    await redis.connect();
  } catch (e) {
    redis.disconnect();
    const why = (reason ?? (e as Error)).message;
    const secrets = [conf.password, conf.sentinel_password].filter((s): s is string => typeof s === "string" && s !== "");
    throw new RedisConnectError(`could not connect to redis ${where}: ${secrets.reduce((m, s) => m.split(s).join("***"), why)}`);
  }
  return redis;
}

/** The servers that hold the data: every master of a cluster, else the one connection. */
export function dataNodes(redis: Redis | Cluster): Redis[] {
  return redis instanceof Cluster ? redis.nodes("master") : [redis];
}

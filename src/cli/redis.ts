/**
 * Node-side access to the suite's Redis data, for the CLI and the tests: the same
 * redis-lua/ script files the plugins embed (one source of truth), loaded into ioredis,
 * and `redis://` URLs parsed the way the CLI documents them.
 */
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Redis, type RedisOptions } from "ioredis";
import { UsageError } from "./args.js";
import { suiteRoot } from "./paths.js";

export interface ScriptFile {
  /** File name without `-<numKeys>.lua`, as the Lua side names it. */
  name: string;
  numberOfKeys: number;
  lua: string;
  sha1: string;
}

/** Every redis-lua/<name>-<numKeys>.lua, by name. */
export function loadScripts(root = suiteRoot()): Map<string, ScriptFile> {
  const dir = join(root, "redis-lua");
  const scripts = new Map<string, ScriptFile>();
  for (const file of readdirSync(dir).sort()) {
    const m = /^(.*)-(\d+)\.lua$/.exec(file);
    if (!m) continue;
    const lua = readFileSync(join(dir, file), "utf8");
    scripts.set(m[1], { name: m[1], numberOfKeys: Number(m[2]), lua, sha1: createHash("sha1").update(lua).digest("hex") });
  }
  return scripts;
}

/** One script file by name; throws when there is none. */
export function loadScript(name: string, root = suiteRoot()): ScriptFile {
  const script = loadScripts(root).get(name);
  if (script === undefined) throw new Error(`no script redis-lua/${name}-<n>.lua`);
  return script;
}

/** Runs a redis-lua script through ioredis (EVALSHA with EVAL fallback, as ioredis does). */
export async function runScript(redis: Redis, script: ScriptFile, keys: string[], args: (string | number)[]): Promise<unknown> {
  if (keys.length !== script.numberOfKeys) throw new Error(`${script.name} takes ${script.numberOfKeys} keys, got ${keys.length}`);
  const command = `krs_${script.name.replace(/\W/g, "_")}`;
  const withCommand = redis as Redis & Record<string, unknown>;
  if (typeof withCommand[command] !== "function") redis.defineCommand(command, { numberOfKeys: script.numberOfKeys, lua: script.lua });
  return (withCommand[command] as (...a: (string | number)[]) => Promise<unknown>)(...keys, ...args);
}

/** `redis://[user:pass@]host:port/db` (or `rediss://` for TLS) → ioredis options. */
export function parseRedisUrl(url: string): RedisOptions {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError(`--redis: not a URL: ${url}`);
  }
  if (parsed.protocol !== "redis:" && parsed.protocol !== "rediss:") throw new UsageError(`--redis: expected redis:// or rediss://, got ${parsed.protocol}//`);
  const db = parsed.pathname.replace(/^\//, "");
  if (db !== "" && !/^\d+$/.test(db)) throw new UsageError(`--redis: database must be a number, got '${db}'`);
  return {
    host: parsed.hostname || "127.0.0.1",
    port: parsed.port !== "" ? Number(parsed.port) : 6379,
    username: parsed.username !== "" ? decodeURIComponent(parsed.username) : undefined,
    password: parsed.password !== "" ? decodeURIComponent(parsed.password) : undefined,
    db: db !== "" ? Number(db) : 0,
    tls: parsed.protocol === "rediss:" ? {} : undefined,
    lazyConnect: true,
    maxRetriesPerRequest: 1,
    connectTimeout: 5000,
  };
}

/** A connected client for a `--redis` URL (default redis://127.0.0.1:6379/0). */
export async function connectRedis(url = process.env.KRS_REDIS_URL ?? "redis://127.0.0.1:6379/0"): Promise<Redis> {
  const redis = new Redis(parseRedisUrl(url));
  await redis.connect();
  return redis;
}

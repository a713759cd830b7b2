/**
 * `krs keys`: API keys of the redis-key-auth plugin, managed straight in Redis.
 *
 * Same layout and same scripts as the plugin (src/plugins/redis-key-auth/store.ts,
 * redis-lua/key-auth-*.lua, docs/redis-keys.md): a key is 32 random bytes, base64url;
 * Redis keeps only its SHA-256; revoking publishes the invalidation every gateway worker
 * listens to (from inside the script, as the Admin API does).
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import type { Cluster, Redis } from "ioredis";
import { parseArgs, UsageError } from "./args.js";
import { defineScripts, openRedis, REDIS_FLAGS, REDIS_TARGET_HELP, REDIS_TARGET_USAGE, redisTargetFromFlags } from "./redis.js";

export const CHANNEL = "krs:redis-key-auth:v1:invalidations";
const PREFIX = "krs:redis-key-auth:v1:{k}";
export const INDEX_KEY = `${PREFIX}:ids`;
export const EXPIRING_KEY = `${PREFIX}:expiring`;

export function recordKey(sha: string): string {
  return `${PREFIX}:key:${sha}`;
}

/** Hex SHA-256 of a key: its name in Redis and in invalidation messages. */
export function hashKey(key: string): string {
  return createHash("sha256").update(key, "utf8").digest("hex");
}

/** A new key: 32 bytes from the CSPRNG, base64url without padding (43 characters). */
export function newKey(): string {
  return randomBytes(32).toString("base64url");
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Key ids are uuids; keys (43 base64url characters) never look like one. */
export function isId(value: string): boolean {
  return UUID.test(value);
}

type ScriptReply = [number, string | number];
/** The redis-lua scripts, defined on a connection (EVALSHA, EVAL on NOSCRIPT: ioredis does it). */
export interface KeyScripts {
  keyAuthCreate(...keysAndArgs: (string | number)[]): Promise<ScriptReply>;
  keyAuthRevoke(...keysAndArgs: (string | number)[]): Promise<ScriptReply>;
}
/** A connection with the scripts: a plain `Redis` by default (the tests), or a cluster. */
export type KeysRedis<R extends Redis | Cluster = Redis> = R & KeyScripts;

/** Defines the plugin's scripts on `redis` (same files the build embeds for the gateway). */
export function withScripts<R extends Redis | Cluster>(redis: R): R & KeyScripts {
  return defineScripts<KeyScripts, R>(redis, { keyAuthCreate: "key-auth-create", keyAuthRevoke: "key-auth-revoke" });
}

export interface NewKeyInput {
  consumer: string;
  consumerId?: string;
  customId?: string;
  /** Seconds the key lives; undefined = until revoked. */
  ttl?: number;
}

export interface CreatedKey {
  id: string;
  key: string;
  createdAt: number;
  /** Unix seconds; 0 = never. */
  expiresAt: number;
}

function unixNow(): number {
  return Math.floor(Date.now() / 1000);
}

/**
 * Creates a key; `key` can be given (tests, benchmarks), otherwise a fresh one is drawn.
 * `now` (unix seconds) keeps its fraction: the script rounds the expiry up from it, so a
 * key created with `ttl` lives at least `ttl` seconds.
 */
export async function createKey(redis: KeysRedis<Redis | Cluster>, input: NewKeyInput, opts: { key?: string; now?: number } = {}): Promise<CreatedKey> {
  const key = opts.key ?? newKey();
  const id = randomUUID();
  const now = (opts.now ?? Date.now() / 1000).toFixed(3);
  const sha = hashKey(key);
  const [status, expiresAt] = await redis.keyAuthCreate(
    recordKey(sha), INDEX_KEY, EXPIRING_KEY,
    id, sha, input.consumerId ?? "", input.consumer, input.customId ?? "", now, input.ttl ?? 0, now,
  );
  if (status !== 1) throw new KeysError("a key with this id or hash exists already");
  return { id, key, createdAt: Math.floor(Number(now)), expiresAt: Number(expiresAt) };
}

/** Revokes a key given as the key or its id; the revoked id, or undefined when there is no such key. */
export async function revokeKey(redis: KeysRedis<Redis | Cluster>, keyOrId: string): Promise<string | undefined> {
  let sha: string;
  let wantedId = "";
  if (isId(keyOrId)) {
    const entry = await redis.hget(INDEX_KEY, keyOrId.toLowerCase());
    if (entry === null) return undefined;
    const recorded = (JSON.parse(entry) as { sha256?: unknown }).sha256;
    if (typeof recorded !== "string") return undefined;
    sha = recorded;
    wantedId = keyOrId.toLowerCase();
  } else {
    sha = hashKey(keyOrId);
  }
  const [status, id] = await redis.keyAuthRevoke(recordKey(sha), INDEX_KEY, EXPIRING_KEY, sha, wantedId, CHANNEL, unixNow());
  return status === 1 ? String(id) : undefined;
}

export interface KeySummary {
  id: string;
  consumer: { id: string | null; username: string; custom_id: string | null };
  created_at: number;
  /** Unix seconds, or null: never. */
  expires_at: number | null;
}

interface IndexEntry {
  sha256: string;
  consumer_id: string;
  consumer_username: string;
  consumer_custom_id: string;
  created_at: number;
  expires_at: number;
}

/** Live keys (of one consumer username, when given), oldest first. Never a key, nor its hash. */
export async function listKeys(redis: Redis | Cluster, consumer?: string): Promise<KeySummary[]> {
  const index = await redis.hgetall(INDEX_KEY);
  const now = unixNow();
  const out: KeySummary[] = [];
  for (const [id, json] of Object.entries(index)) {
    let e: IndexEntry;
    try {
      e = JSON.parse(json) as IndexEntry;
    } catch {
      continue;
    }
    if (e.expires_at !== 0 && e.expires_at <= now) continue;
    if (consumer !== undefined && e.consumer_username !== consumer) continue;
    out.push({
      id,
      consumer: { id: e.consumer_id !== "" ? e.consumer_id : null, username: e.consumer_username, custom_id: e.consumer_custom_id !== "" ? e.consumer_custom_id : null },
      created_at: e.created_at,
      expires_at: e.expires_at !== 0 ? e.expires_at : null,
    });
  }
  out.sort((a, b) => a.created_at - b.created_at || a.id.localeCompare(b.id));
  return out;
}

// ---------------------------------------------------------------- command line

export class KeysError extends Error {}

const USAGE = `usage:
  krs keys create --consumer USERNAME [--consumer-id ID] [--custom-id ID] [--ttl SECONDS] [REDIS]
  krs keys revoke KEY_OR_ID [REDIS]
  krs keys list [--consumer USERNAME] [--json] [REDIS]

REDIS: ${REDIS_TARGET_USAGE}
${REDIS_TARGET_HELP}`;

function isoOrNever(seconds: number | null): string {
  return seconds === null || seconds === 0 ? "never" : new Date(seconds * 1000).toISOString().replace(".000Z", "Z");
}

function positiveInt(flag: string, value: string): number {
  if (!/^[0-9]+$/.test(value) || Number(value) < 1 || Number(value) > 2147483647) throw new UsageError(`--${flag}: expected whole seconds between 1 and 2147483647, got '${value}'`);
  return Number(value);
}

function nonEmpty(flag: string, value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (value === "") throw new UsageError(`--${flag}: must not be empty`);
  return value;
}

/** Kong's consumer ids are uuids: a key pinned to anything else could never authenticate. */
function consumerIdFlag(value: string | undefined): string | undefined {
  const id = nonEmpty("consumer-id", value);
  if (id !== undefined && !isId(id)) throw new UsageError(`--consumer-id: expected the consumer's id, a uuid (Kong consumer ids are uuids), got '${id}'`);
  return id;
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd()).join("\n");
}

export async function keysCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === "help" || sub === "--help") {
    console.log(USAGE);
    return sub === undefined ? 2 : 0;
  }
  const valueFlags = [...(sub === "create" ? ["consumer", "consumer-id", "custom-id", "ttl"] : sub === "list" ? ["consumer"] : []), ...REDIS_FLAGS];
  if (sub !== "create" && sub !== "revoke" && sub !== "list") throw new UsageError(`keys: unknown subcommand '${sub}' (create, revoke, list; krs keys --help)`);
  const args = parseArgs(rest, valueFlags, sub === "list" ? ["json"] : []);
  const target = redisTargetFromFlags(args.flags);

  let input: NewKeyInput | undefined;
  if (sub === "create") {
    if (args.positional.length > 0) throw new UsageError(`keys create: unexpected argument '${args.positional[0]}'`);
    const consumer = nonEmpty("consumer", args.flags.get("consumer"));
    if (consumer === undefined) throw new UsageError("keys create: --consumer USERNAME is required");
    const ttl = args.flags.get("ttl");
    input = {
      consumer,
      consumerId: consumerIdFlag(args.flags.get("consumer-id")),
      customId: nonEmpty("custom-id", args.flags.get("custom-id")),
      ttl: ttl !== undefined ? positiveInt("ttl", ttl) : undefined,
    };
  } else if (sub === "revoke") {
    if (args.positional.length !== 1) throw new UsageError("keys revoke: give exactly one KEY_OR_ID");
  } else if (args.positional.length > 0) {
    throw new UsageError(`keys list: unexpected argument '${args.positional[0]}'`);
  }

  // An unreachable Redis is reported in one line by main (RedisConnectError).
  const redis = withScripts(await openRedis(target));
  try {
    if (input !== undefined) {
      const created = await createKey(redis, input);
      const who = [input.consumerId !== undefined ? `id ${input.consumerId}` : "", input.customId !== undefined ? `custom_id ${input.customId}` : ""].filter((s) => s !== "").join(", ");
      console.log(`created key ${created.id} for consumer ${input.consumer}${who !== "" ? ` (${who})` : ""}`);
      console.log(`expires: ${isoOrNever(created.expiresAt)}`);
      console.log("the key is shown this once; Redis keeps only its SHA-256:");
      console.log(created.key);
      return 0;
    }
    if (sub === "revoke") {
      const id = await revokeKey(redis, args.positional[0]);
      if (id === undefined) {
        console.error("krs: no such key (unknown, expired or already revoked)");
        return 1;
      }
      console.log(`revoked key ${id}`);
      return 0;
    }
    const keys = await listKeys(redis, args.flags.get("consumer"));
    if (args.switches.has("json")) {
      console.log(JSON.stringify(keys, null, 2));
      return 0;
    }
    if (keys.length === 0) {
      console.log("no keys");
      return 0;
    }
    const rows = [["ID", "CONSUMER", "CONSUMER ID", "CUSTOM ID", "CREATED", "EXPIRES"]];
    for (const k of keys) {
      rows.push([k.id, k.consumer.username, k.consumer.id ?? "-", k.consumer.custom_id ?? "-", isoOrNever(k.created_at), isoOrNever(k.expires_at)]);
    }
    console.log(table(rows));
    return 0;
  } catch (e) {
    if (e instanceof KeysError) {
      console.error(`krs: ${e.message}`);
      return 1;
    }
    console.error(`krs: redis: ${(e as Error).message}`);
    return 1;
  } finally {
    redis.disconnect();
  }
}

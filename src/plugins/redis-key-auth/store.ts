/**
 * redis-key-auth's Redis layout (docs/redis-keys.md) and the operations on it: the
 * hot-path lookup (one HGETALL), and create / revoke / list for the Admin API. The
 * Node CLI (src/cli/keys.ts) writes the same layout with the same scripts.
 *
 * A key is never stored: Redis holds its SHA-256 (hex) as part of the record's name.
 */
import * as cjson from "cjson.safe";
import * as random from "resty.random";
import * as sha256 from "resty.sha256";
import * as restyString from "resty.string";
import * as client from "../../lib/redis/client";
import type { RedisConf } from "../../lib/redis/schema";
import { key } from "../../lib/keys";
import { isId } from "./util";

const PLUGIN = "redis-key-auth";
/** One hash tag for every key of the plugin: create and revoke touch the index too. */
const TAG = "k";

/** Where revocations are announced; the message is the revoked key's SHA-256 (hex). */
export const CHANNEL = "krs:redis-key-auth:v1:invalidations";
export const INDEX_KEY = key(PLUGIN, TAG, "ids");
export const EXPIRING_KEY = key(PLUGIN, TAG, "expiring");

const byte = string.byte;
const format = string.format;
const gsub = string.gsub;

export function recordKey(this: void, sha: string): string {
  return key(PLUGIN, TAG, "key", sha);
}

/** The plugin's config after schema validation (schema.ts). */
export interface KeyAuthConf {
  key_names: string[];
  key_in_header: boolean;
  key_in_query: boolean;
  key_in_body: boolean;
  hide_credentials: boolean;
  /** A consumer id or username; unset: requests without a valid key are refused. */
  anonymous?: string;
  run_on_preflight: boolean;
  /** Unset: the challenge is a bare `Key`. */
  realm?: string;
  /** Seconds a valid key stays in the worker cache. */
  cache_ttl: number;
  /** Seconds an unknown key stays in the worker cache as unknown. */
  negative_cache_ttl: number;
  fault_tolerant: boolean;
  redis: RedisConf;
}

/** What Redis knows about one key (the hash at recordKey). */
export interface KeyRecord {
  id: string;
  consumer_id: string;
  consumer_username: string;
  consumer_custom_id: string;
  created_at: number;
  /** Unix seconds; 0 = never. */
  expires_at: number;
}

/** The index entry of one key: what `list` shows (never the key). */
export interface KeySummary {
  id: string;
  sha256: string;
  consumer_id: string;
  consumer_username: string;
  consumer_custom_id: string;
  created_at: number;
  expires_at: number;
}

// One hasher per worker: update/final never yield, so requests cannot interleave on it.
const hasher = sha256.new()!;

/** Hex SHA-256 of a key: its name in Redis, in the worker cache and in invalidations. */
export function hashKey(this: void, apiKey: string): string {
  hasher.reset();
  hasher.update(apiKey);
  return restyString.to_hex(hasher.final());
}

function base64url(this: void, bytes: string): string {
  const [encoded] = gsub(ngx.encode_base64(bytes, true), "[+/]", (c: string) => (c === "+" ? "-" : "_"));
  return encoded;
}

/** A new key: 32 bytes from the OpenSSL CSPRNG, base64url. */
export function newKey(this: void): string | undefined {
  const bytes = random.bytes(32, true);
  if (bytes === undefined) return undefined;
  return base64url(bytes);
}

/** A random (version 4) uuid for a key's id. */
export function newId(this: void): string | undefined {
  const bytes = random.bytes(16, true);
  if (bytes === undefined) return undefined;
  const b = [...byte(bytes, 1, 16)];
  b[6] = (b[6] % 16) + 0x40;
  b[8] = (b[8] % 64) + 0x80;
  return format("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
    b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

// ---------------------------------------------------------------- hot path

/**
 * The record of a key by its hash: the record, `false` when Redis has none, or nil plus
 * the reason when Redis could not answer (network failure or an error reply).
 */
export function lookup(this: void, conf: RedisConf, sha: string): LuaMultiReturn<[KeyRecord | false | undefined, string | undefined]> {
  const [reply, err] = client.command(conf, "hgetall", recordKey(sha));
  if (reply === undefined) return $multi(undefined, err);
  if (reply === false) return $multi(undefined, `redis refused HGETALL: ${err}`);
  const flat = reply as string[];
  if (flat.length === 0) return $multi(false, undefined);
  const fields = new LuaTable<string, string>();
  for (let i = 0; i < flat.length; i += 2) fields.set(flat[i], flat[i + 1]);
  const id = fields.get("id");
  if (id === undefined) return $multi(false, undefined);
  return $multi({
    id,
    consumer_id: fields.get("consumer_id") ?? "",
    consumer_username: fields.get("consumer_username") ?? "",
    consumer_custom_id: fields.get("consumer_custom_id") ?? "",
    created_at: tonumber(fields.get("created_at")) ?? 0,
    expires_at: tonumber(fields.get("expires_at")) ?? 0,
  }, undefined);
}

// ---------------------------------------------------------------- management

export interface NewKeyInput {
  consumer_username: string;
  consumer_id?: string;
  consumer_custom_id?: string;
  /** Seconds the key lives; undefined or 0 = until revoked. */
  ttl?: number;
}

export interface CreatedKey {
  id: string;
  key: string;
  created_at: number;
  expires_at: number;
}

/** Creates a key (script key-auth-create). The key is returned once and stored nowhere. */
export function create(this: void, conf: RedisConf, input: NewKeyInput): LuaMultiReturn<[CreatedKey | undefined, string | undefined]> {
  const apiKey = newKey();
  const id = newId();
  if (apiKey === undefined || id === undefined) return $multi(undefined, "no strong random bytes available");
  const sha = hashKey(apiKey);
  // With its milliseconds, not the request's cached second: the script rounds the expiry
  // up from the exact moment, so a key created with `ttl` lives at least `ttl` seconds.
  ngx.update_time();
  const now = ngx.now();
  const [reply, err] = client.script(conf, {
    script: "key-auth-create",
    keys: [recordKey(sha), INDEX_KEY, EXPIRING_KEY],
    args: [id, sha, input.consumer_id ?? "", input.consumer_username, input.consumer_custom_id ?? "", format("%.3f", now), input.ttl ?? 0, format("%.3f", now)],
  });
  if (reply === undefined || reply === false) return $multi(undefined, tostring(err));
  const [status, expiresAt] = [(reply as RedisReply[])[0], (reply as RedisReply[])[1]];
  if (status !== 1) return $multi(undefined, "a key with this id or hash exists already");
  return $multi({ id, key: apiKey, created_at: math.floor(now), expires_at: expiresAt as number }, undefined);
}

/**
 * Revokes a key given as the key itself or as its id (script key-auth-revoke, which
 * also publishes the invalidation). Returns the revoked id, `false` when there is no
 * such key, or nil plus the reason.
 */
export function revoke(this: void, conf: RedisConf, keyOrId: string): LuaMultiReturn<[string | false | undefined, string | undefined]> {
  let sha: string;
  let wantedId = "";
  if (isId(keyOrId)) {
    const id = string.lower(keyOrId);
    const [entry, err] = client.command(conf, "hget", INDEX_KEY, id);
    if (entry === undefined || entry === false) return $multi(undefined, tostring(err));
    if (entry === ngx.null) return $multi(false, undefined);
    const [summary] = cjson.decode(entry as string);
    const recorded = type(summary) === "table" ? (summary as { sha256?: unknown }).sha256 : undefined;
    if (type(recorded) !== "string") return $multi(false, undefined);
    sha = recorded as string;
    wantedId = id;
  } else {
    sha = hashKey(keyOrId);
  }
  const [reply, err] = client.script(conf, {
    script: "key-auth-revoke",
    keys: [recordKey(sha), INDEX_KEY, EXPIRING_KEY],
    args: [sha, wantedId, CHANNEL, ngx.time()],
  });
  if (reply === undefined || reply === false) return $multi(undefined, tostring(err));
  if ((reply as RedisReply[])[0] !== 1) return $multi(false, undefined);
  return $multi((reply as RedisReply[])[1] as string, undefined);
}

/**
 * Every live key (of one consumer username, when given), oldest first. Index entries of
 * keys that expired are skipped (the next create or revoke drops them).
 */
export function list(this: void, conf: RedisConf, consumer: string | undefined): LuaMultiReturn<[KeySummary[] | undefined, string | undefined]> {
  const [reply, err] = client.command(conf, "hgetall", INDEX_KEY);
  if (reply === undefined || reply === false) return $multi(undefined, tostring(err));
  const flat = reply as string[];
  const now = ngx.time();
  const out: KeySummary[] = [];
  for (let i = 0; i < flat.length; i += 2) {
    const [decoded] = cjson.decode(flat[i + 1]);
    if (type(decoded) !== "table") continue;
    const s = decoded as KeySummary;
    s.id = flat[i];
    if (s.expires_at !== 0 && s.expires_at <= now) continue;
    if (consumer !== undefined && s.consumer_username !== consumer) continue;
    out.push(s);
  }
  table.sort(out, (a, b) => (a.created_at !== b.created_at ? a.created_at < b.created_at : a.id < b.id));
  return $multi(out, undefined);
}

/**
 * redis-jwt's Redis layout (docs/redis-keys.md) and the operations on it: the
 * credential lookup (one HMGET on a worker-cache miss), the revocation check (one MGET),
 * and credential changes and revocations for the Admin API. The Node CLI
 * (src/cli/jwt.ts) writes the same layout with the same scripts.
 *
 * HMAC secrets are stored sealed (AES-256-GCM under SHA-256 of the plugin's
 * `credential_encryption_key`, the field name as associated data): Redis never holds one
 * in the clear, and the Admin API never gives one back.
 */
import * as cjson from "cjson.safe";
import * as crypto from "../../lib/crypto";
import * as client from "../../lib/redis/client";
import type { RedisConf } from "../../lib/redis/schema";
import { key, part } from "../../lib/keys";

const PLUGIN = "redis-jwt";
/** Credentials: one hash, one tag. */
const CREDENTIAL_TAG = "c";
/** Revocations: every key of one check (MGET) shares this tag. */
const REVOCATION_TAG = "r";

/** Where changes are announced: "c" (credentials changed), "r" (a revocation). */
export const CHANNEL = "krs:redis-jwt:v1:invalidations";
export const CREDENTIALS_KEY = key(PLUGIN, CREDENTIAL_TAG, "credentials");
/** Associated data of a sealed secret: a sealed value cannot be moved to another credential. */
export const SEAL_AAD_PREFIX = "redis-jwt:secret:";

export function credentialField(this: void, keyValue: string): string {
  return "key:" + keyValue;
}
export function jwksField(this: void, kid: string): string {
  return "kid:" + kid;
}
export function tokenRevocationKey(this: void, jti: string): string {
  return key(PLUGIN, REVOCATION_TAG, "jti", part(jti));
}
export function subjectRevocationKey(this: void, sub: string): string {
  return key(PLUGIN, REVOCATION_TAG, "sub", part(sub));
}
export function consumerRevocationKey(this: void, consumer: string): string {
  return key(PLUGIN, REVOCATION_TAG, "consumer", part(consumer));
}

/** A credential as stored (JSON in the credentials hash). */
export interface CredentialRecord {
  id: string;
  key: string;
  algorithm: string;
  /** HS*: base64 of the sealed secret. */
  secret_sealed?: string;
  rsa_public_key?: string;
  /** The consumer's username or id, as given. */
  consumer: string;
  created_at: number;
  /** Set for keys imported from a JWKS: the set's name (its consumer). */
  jwks?: string;
}

/** AES key of the sealed secrets. */
export function sealKey(this: void, encryptionKey: string): string {
  return crypto.sha256(encryptionKey);
}

export function sealSecret(this: void, encryptionKey: string, field: string, secret: string): LuaMultiReturn<[string | undefined, string | undefined]> {
  const [sealed, err] = crypto.seal(sealKey(encryptionKey), secret, SEAL_AAD_PREFIX + field);
  if (sealed === undefined) return $multi(undefined, err);
  return $multi(ngx.encode_base64(sealed), undefined);
}

export function openSecret(this: void, encryptionKey: string, field: string, sealed: string): string | undefined {
  const bytes = ngx.decode_base64(sealed);
  if (bytes === undefined) return undefined;
  const [secret] = crypto.open(sealKey(encryptionKey), bytes, SEAL_AAD_PREFIX + field);
  return secret;
}

function decodeRecord(this: void, json: unknown): CredentialRecord | undefined {
  if (type(json) !== "string") return undefined;
  const [record] = cjson.decode(json as string);
  if (type(record) !== "table") return undefined;
  const r = record as CredentialRecord;
  if (type(r.key) !== "string" || type(r.algorithm) !== "string" || type(r.consumer) !== "string") return undefined;
  return r;
}

/**
 * The records stored under `fields`, in order (`false` where there is none), or nil and
 * the reason when Redis could not answer.
 */
export function lookup(this: void, conf: RedisConf, fields: string[]): LuaMultiReturn<[(CredentialRecord | false)[] | undefined, string | undefined]> {
  const [reply, err] = client.command(conf, "hmget", CREDENTIALS_KEY, ...fields);
  if (reply === undefined) return $multi(undefined, err);
  if (reply === false) return $multi(undefined, `redis refused HMGET: ${err}`);
  const values = reply as unknown[];
  const out: (CredentialRecord | false)[] = [];
  for (let i = 0; i < fields.length; i++) out.push(decodeRecord(values[i]) ?? false);
  return $multi(out, undefined);
}

/**
 * The revocation state of a token: whether its jti (or hash) is revoked, and the latest
 * "issued before" marker among its subject and consumer (0: none). Nil plus the reason
 * when Redis could not answer.
 */
export function revocationState(this: void, conf: RedisConf, keys: string[]): LuaMultiReturn<[boolean | undefined, number, string | undefined]> {
  const [reply, err] = client.command(conf, "mget", ...keys);
  if (reply === undefined) return $multi(undefined, 0, err);
  if (reply === false) return $multi(undefined, 0, `redis refused MGET: ${err}`);
  const values = reply as unknown[];
  const revoked = type(values[0]) === "string";
  let before = 0;
  for (let i = 1; i < keys.length; i++) {
    const t = type(values[i]) === "string" ? tonumber(values[i] as string) : undefined;
    if (t !== undefined && t > before) before = t;
  }
  return $multi(revoked, before, undefined);
}

// ---------------------------------------------------------------- management

function scriptReply(this: void, conf: RedisConf, args: (string | number)[]): LuaMultiReturn<[RedisReply[] | undefined, string | undefined]> {
  const [reply, err] = client.script(conf, { script: "jwt-credentials", keys: [CREDENTIALS_KEY], args });
  if (reply === undefined || reply === false) return $multi(undefined, tostring(err));
  return $multi(reply as RedisReply[], undefined);
}

/** Stores a new credential; false when one with that key exists already. */
export function put(this: void, conf: RedisConf, record: CredentialRecord): LuaMultiReturn<[boolean | undefined, string | undefined]> {
  const [json] = cjson.encode(record);
  const [reply, err] = scriptReply(conf, ["put", CHANNEL, credentialField(record.key), json!]);
  if (reply === undefined) return $multi(undefined, err);
  return $multi(reply[0] === 1, undefined);
}

/** Deletes a credential by key or id; false when there is none. */
export function remove(this: void, conf: RedisConf, keyOrId: string): LuaMultiReturn<[boolean | undefined, string | undefined]> {
  let [reply, err] = scriptReply(conf, ["delete", CHANNEL, credentialField(keyOrId)]);
  if (reply !== undefined && reply[0] !== 1) [reply, err] = scriptReply(conf, ["delete", CHANNEL, keyOrId]);
  if (reply === undefined) return $multi(undefined, err);
  return $multi(reply[0] === 1, undefined);
}

/** Every credential (never a secret), oldest first. */
export function list(this: void, conf: RedisConf): LuaMultiReturn<[CredentialRecord[] | undefined, string | undefined]> {
  const [reply, err] = client.command(conf, "hgetall", CREDENTIALS_KEY);
  if (reply === undefined || reply === false) return $multi(undefined, tostring(err));
  const flat = reply as string[];
  const out: CredentialRecord[] = [];
  for (let i = 0; i < flat.length; i += 2) {
    const record = decodeRecord(flat[i + 1]);
    if (record !== undefined) out.push(record);
  }
  table.sort(out, (a, b) => (a.created_at !== b.created_at ? a.created_at < b.created_at : a.key < b.key));
  return $multi(out, undefined);
}

/**
 * Records one revocation (script jwt-revoke, which publishes it). `until` is when it
 * stops mattering. Returns the expiry set (0 when there was nothing to store).
 */
export function revoke(this: void, conf: RedisConf, revocationKey: string, kind: "token" | "before", before: number, untilTime: number): LuaMultiReturn<[number | undefined, string | undefined]> {
  const [reply, err] = client.script(conf, {
    script: "jwt-revoke",
    keys: [revocationKey],
    args: [kind, before, untilTime, ngx.time(), CHANNEL],
  });
  if (reply === undefined || reply === false) return $multi(undefined, tostring(err));
  return $multi((reply as number[])[1], undefined);
}

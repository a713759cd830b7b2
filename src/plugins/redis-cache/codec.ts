/**
 * The value redis-cache keeps in Redis for one key, and its decoded form (what L1 holds).
 *
 *   value   = "1|" ttl_ms "|" stored_at_ms "|" kind "|" rest
 *   kind E  rest = payload                       (plain entry)
 *   kind K  rest = key id "|" AES-256-GCM(payload) (encrypted entry: nonce || ciphertext || tag;
 *                                                 AAD = the "1|…|K|<key id>|" prefix followed
 *                                                 by the Redis key the value is stored under;
 *                                                 key id: 8 hex digits naming the key, see
 *                                                 state.keyId)
 *   kind C  rest = AES-256-GCM(payload)           (read only: written before key ids existed;
 *                                                 AAD = the "1|…|C|" prefix and the Redis key)
 *   kind V  rest = "name,name"                    (Vary marker: the lower-case request header
 *                                                 names the entries under this key vary on)
 *   payload = status "\n" *(name ":" value "\n") "\n" body
 *
 * The prefix stays readable so that the lookup script can apply sliding TTL and
 * refresh-ahead without decoding; it is authenticated, so it cannot be altered either.
 * Binding the Redis key (cache key and generation) into the AAD means an encrypted value
 * copied onto another key, or into another generation, fails authentication.
 * With an encryption key configured only encrypted entries are accepted: a plain entry
 * written by anyone else is a miss.
 *
 * A value this node cannot read is either foreign (sealed under a key it does not have,
 * or plain where it encrypts, or the reverse: written by a node configured otherwise, as
 * during a key rotation) or corrupt (malformed, or failing authentication under a key it
 * has). decode tells them apart so that the handler leaves foreign entries alone while
 * they are fresh (expiresAt, readable without a key) and replaces corrupt ones.
 * Pure Lua apart from krs.crypto; unit-tested.
 */
import * as crypto from "../../lib/crypto";

const byte = string.byte;
const concat = table.concat;
const find = string.find;
const match = string.match;
const sub = string.sub;

const FORMAT = "1";
const LF = 10;

export interface Entry {
  kind: "E";
  status: number;
  /** Stored response headers: name (as sent) → value, or the values of a repeated header. */
  headers: HeaderTable;
  body: string;
  /** Epoch milliseconds (gateway clock). */
  storedAt: number;
  /** Milliseconds. */
  ttl: number;
}

export interface Marker {
  kind: "V";
  /** Lower-case request header names, sorted. */
  vary: string[];
  storedAt: number;
  ttl: number;
}

export type Cached = Entry | Marker;

/** The AES keys (32 bytes each) of one configuration. */
export interface Keyring {
  /** The key new entries are sealed with, and its id; undefined: entries are stored plain. */
  sealId?: string;
  sealKey?: string;
  /** Every key entries are opened with, by id (the seal key too). */
  keys: LuaTable<string, string>;
}

function prefix(this: void, ttl: number, storedAt: number, kind: string): string {
  return `${FORMAT}|${math.floor(ttl)}|${math.floor(storedAt)}|${kind}|`;
}

function payloadOf(this: void, entry: Entry): string {
  const parts: string[] = [tostring(entry.status) + "\n"];
  for (const [name, value] of pairs(entry.headers)) {
    // nginx never hands out such headers; skip them rather than corrupt the entry.
    if (find(name, "[:\r\n]")[0] !== undefined) continue;
    if (type(value) === "table") {
      for (const v of value as string[]) {
        if (find(v, "[\r\n]")[0] === undefined) parts.push(name + ":" + v + "\n");
      }
    } else if (find(value as string, "[\r\n]")[0] === undefined) {
      parts.push(name + ":" + (value as string) + "\n");
    }
  }
  parts.push("\n");
  parts.push(entry.body);
  return concat(parts);
}

/**
 * The Redis value of an entry; encrypted when the keyring has a seal key, and then bound
 * to `redisKey`, the key it is stored under.
 */
export function encodeEntry(this: void, entry: Entry, keyring: Keyring | undefined, redisKey: string): LuaMultiReturn<[string | undefined, string | undefined]> {
  const payload = payloadOf(entry);
  const sealKey = keyring?.sealKey;
  if (keyring === undefined || sealKey === undefined) return $multi(prefix(entry.ttl, entry.storedAt, "E") + payload, undefined);
  const head = prefix(entry.ttl, entry.storedAt, "K") + keyring.sealId! + "|";
  // The prefix has a fixed shape ending in "|K|<8 hex>|": prefix + key cannot be read two ways.
  const [sealed, err] = crypto.seal(sealKey, payload, head + redisKey);
  if (sealed === undefined) return $multi(undefined, err);
  return $multi(head + sealed, undefined);
}

/** The Redis value of a Vary marker. */
export function encodeMarker(this: void, vary: string[], storedAt: number, ttl: number): string {
  return prefix(ttl, storedAt, "V") + concat(vary, ",");
}

function decodePayload(this: void, payload: string, storedAt: number, ttl: number): LuaMultiReturn<[Entry | undefined, string | undefined]> {
  const [, statusEnd, statusText] = find(payload, "^(%d%d%d)\n");
  if (statusEnd === undefined) return $multi(undefined, "malformed entry: no status line");
  const headers: HeaderTable = new LuaTable();
  let pos = statusEnd + 1;
  const size = payload.length;
  while (true) {
    if (pos > size) return $multi(undefined, "malformed entry: headers not terminated");
    if (byte(payload, pos) === LF) break;
    const [lineEnd] = find(payload, "\n", pos, true);
    if (lineEnd === undefined) return $multi(undefined, "malformed entry: header line not terminated");
    const [colon] = find(payload, ":", pos, true);
    if (colon === undefined || colon > lineEnd) return $multi(undefined, "malformed entry: header without a colon");
    const name = sub(payload, pos, colon - 1);
    const value = sub(payload, colon + 1, lineEnd - 1);
    const existing = headers.get(name);
    if (existing === undefined) headers.set(name, value);
    else if (type(existing) === "table") (existing as string[]).push(value);
    else headers.set(name, [existing as string, value]);
    pos = lineEnd + 1;
  }
  return $multi({ kind: "E", status: tonumber(statusText)!, headers, body: sub(payload, pos + 1), storedAt, ttl }, undefined);
}

/**
 * When a value stops being fresh (stored at + ttl, epoch ms), read from its prefix
 * without any key: sliding TTL extends the Redis key, never this. undefined: no prefix.
 */
export function expiresAt(this: void, value: string): number | undefined {
  const [ttlText, storedText] = match(value, "^1|(%d+)|(%d+)|");
  if (storedText === undefined) return undefined;
  return tonumber(storedText)! + tonumber(ttlText)!;
}

/**
 * Decodes a Redis value read from `redisKey`. With a seal key in `keyring`, entries must
 * be encrypted, under one of its keys, and authenticate under it and that Redis key.
 * Returns nil plus the reason for anything else, and `true` as third value when the
 * value is foreign (see above) rather than corrupt.
 */
export function decode(this: void, value: string, keyring: Keyring | undefined, redisKey: string): LuaMultiReturn<[Cached | undefined, string | undefined, boolean]> {
  const [ttlText, storedText, kind, restAt] = match(value, "^1|(%d+)|(%d+)|(%a)|()");
  if (restAt === undefined) return $multi(undefined, "malformed entry: bad prefix", false);
  const ttl = tonumber(ttlText)!;
  const storedAt = tonumber(storedText)!;
  const rest = sub(value, restAt as unknown as number);
  if (kind === "V") {
    const vary: string[] = [];
    for (const [name] of string.gmatch(rest, "[^,]+")) vary.push(name as string);
    if (vary.length === 0) return $multi(undefined, "malformed entry: empty Vary marker", false);
    return $multi({ kind: "V", vary, storedAt, ttl }, undefined, false);
  }
  if (kind === "E") {
    if (keyring?.sealKey !== undefined) return $multi(undefined, "unencrypted entry while encryption_key is set", true);
    const [entry, err] = decodePayload(rest, storedAt, ttl);
    return $multi(entry, err, false);
  }
  if (kind === "K") {
    const [id, sealedAt] = match(rest, "^(%x%x%x%x%x%x%x%x)|()");
    if (sealedAt === undefined) return $multi(undefined, "malformed entry: bad key id", false);
    if (keyring === undefined) return $multi(undefined, "encrypted entry while no encryption_key is set", true);
    const key = keyring.keys.get(id as string);
    if (key === undefined) return $multi(undefined, `entry sealed under a key this node does not have (key id ${id as string})`, true);
    const head = sub(value, 1, (restAt as unknown as number) + 8);
    const [payload, err] = crypto.open(key, sub(rest, sealedAt as unknown as number), head + redisKey);
    if (payload === undefined) return $multi(undefined, "entry failed authentication: " + tostring(err), false);
    const [entry, payloadErr] = decodePayload(payload, storedAt, ttl);
    return $multi(entry, payloadErr, false);
  }
  if (kind === "C") {
    if (keyring === undefined) return $multi(undefined, "encrypted entry while no encryption_key is set", true);
    const aad = sub(value, 1, (restAt as unknown as number) - 1) + redisKey;
    for (const [, key] of pairs(keyring.keys)) {
      const [payload] = crypto.open(key, rest, aad);
      if (payload !== undefined) {
        const [entry, payloadErr] = decodePayload(payload, storedAt, ttl);
        return $multi(entry, payloadErr, false);
      }
    }
    // Without a key id, another key and an altered value look the same.
    return $multi(undefined, "entry without a key id opens under none of this node's keys", true);
  }
  return $multi(undefined, "malformed entry: unknown kind " + tostring(kind), false);
}

/**
 * The value redis-cache keeps in Redis for one key, and its decoded form (what L1 holds).
 *
 *   value   = "1|" ttl_ms "|" stored_at_ms "|" kind "|" rest
 *   kind E  rest = payload                       (plain entry)
 *   kind C  rest = AES-256-GCM(payload)           (encrypted entry: nonce || ciphertext || tag;
 *                                                 AAD = the "1|…|C|" prefix followed by the
 *                                                 Redis key the value is stored under)
 *   kind V  rest = "name,name"                    (Vary marker: the lower-case request header
 *                                                 names the entries under this key vary on)
 *   payload = status "\n" *(name ":" value "\n") "\n" body
 *
 * The prefix stays readable so that the lookup script can apply sliding TTL and
 * refresh-ahead without decoding; it is authenticated, so it cannot be altered either.
 * Binding the Redis key (cache key and generation) into the AAD means an encrypted value
 * copied onto another key, or into another generation, fails authentication.
 * With an encryption key configured only kind C entries are accepted: a plain entry
 * written by anyone else is a miss. Pure Lua apart from krs.crypto; unit-tested.
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
 * The Redis value of an entry; encrypted when `key` (32 bytes) is given, and then bound
 * to `redisKey`, the key it is stored under.
 */
export function encodeEntry(this: void, entry: Entry, key: string | undefined, redisKey: string): LuaMultiReturn<[string | undefined, string | undefined]> {
  const payload = payloadOf(entry);
  if (key === undefined) return $multi(prefix(entry.ttl, entry.storedAt, "E") + payload, undefined);
  const head = prefix(entry.ttl, entry.storedAt, "C");
  // The prefix has a fixed shape ending in "|C|": prefix + key cannot be read two ways.
  const [sealed, err] = crypto.seal(key, payload, head + redisKey);
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
 * Decodes a Redis value read from `redisKey`. With `key` (32 bytes), entries must be
 * encrypted, and authenticate under it and that Redis key. Returns nil plus the reason
 * for anything else.
 */
export function decode(this: void, value: string, key: string | undefined, redisKey: string): LuaMultiReturn<[Cached | undefined, string | undefined]> {
  const [ttlText, storedText, kind, restAt] = match(value, "^1|(%d+)|(%d+)|(%a)|()");
  if (restAt === undefined) return $multi(undefined, "malformed entry: bad prefix");
  const ttl = tonumber(ttlText)!;
  const storedAt = tonumber(storedText)!;
  const rest = sub(value, restAt as unknown as number);
  if (kind === "V") {
    const vary: string[] = [];
    for (const [name] of string.gmatch(rest, "[^,]+")) vary.push(name as string);
    if (vary.length === 0) return $multi(undefined, "malformed entry: empty Vary marker");
    return $multi({ kind: "V", vary, storedAt, ttl }, undefined);
  }
  if (kind === "E") {
    if (key !== undefined) return $multi(undefined, "unencrypted entry while encryption_key is set");
    return decodePayload(rest, storedAt, ttl);
  }
  if (kind === "C") {
    if (key === undefined) return $multi(undefined, "encrypted entry while no encryption_key is set");
    const [payload, err] = crypto.open(key, rest, sub(value, 1, (restAt as unknown as number) - 1) + redisKey);
    if (payload === undefined) return $multi(undefined, "entry failed authentication: " + tostring(err));
    return decodePayload(payload, storedAt, ttl);
  }
  return $multi(undefined, "malformed entry: unknown kind " + tostring(kind));
}

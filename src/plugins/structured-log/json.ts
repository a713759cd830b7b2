/**
 * The line's JSON encoder: one pass into a LuaJIT string buffer, compiled by the JIT.
 * lua-cjson formats every number with snprintf("%.14g") (about 2k instructions each on
 * Debian's build) and the line then needed a second pass for UTF-8; here integers go
 * through LuaJIT's own formatter and a string's bytes are checked once, while escaping:
 * a byte sequence that is not UTF-8 becomes U+FFFD (escaped), so every line is valid
 * JSON whatever the client sent. Object keys (the same few dozen on every line) are
 * encoded once and kept, in a bounded table. What JSON cannot hold (a function, a
 * table nested past MAX_DEPTH, a cycle) fails the line: the caller writes its fallback.
 */
import * as cjson from "cjson.safe";
import * as stringBuffer from "string.buffer";

const byte = string.byte;
const sub = string.sub;
const format = string.format;
const floor = math.floor;
const HUGE = math.huge;

/** Deeper than Kong's serialize() ever nests: only a cycle or a pathological value gets there. */
const MAX_DEPTH = 32;
/** Keys kept encoded; client-chosen names (query arguments) could otherwise grow it without bound. */
const MAX_KEYS = 2048;
/** Longer keys are encoded every time: a client's header of nginx's buffer size must not be kept 2048 times. */
const MAX_KEY_LEN = 256;

const NULL = cjson.null as unknown;
const EMPTY_ARRAY = cjson.empty_array;
const ARRAY_MT = cjson.array_mt;
const EMPTY_ARRAY_MT = cjson.empty_array_mt;

/** The escape of each byte below 0x20, of `"` and of `\`. */
const ESCAPES = new LuaTable<number, string>();
for (let c = 0; c < 32; c++) ESCAPES.set(c, format("\\u%04x", c));
ESCAPES.set(8, "\\b");
ESCAPES.set(9, "\\t");
ESCAPES.set(10, "\\n");
ESCAPES.set(12, "\\f");
ESCAPES.set(13, "\\r");
ESCAPES.set(34, '\\"');
ESCAPES.set(92, "\\\\");

const REPLACEMENT = "\\ufffd";

/** Why the current line cannot be encoded; undefined while it can. */
let failure: string | undefined;

/** Length of the valid UTF-8 sequence at i (lead byte c >= 0x80), 0 when it is not one. */
function utf8Length(this: void, s: string, i: number, c: number, n: number): number {
  let len = 0;
  if (c >= 0xc2 && c <= 0xdf) len = 2;
  else if (c >= 0xe0 && c <= 0xef) len = 3;
  else if (c >= 0xf0 && c <= 0xf4) len = 4;
  else return 0;
  if (i + len - 1 > n) return 0;
  for (let j = 1; j < len; j++) {
    const cc = byte(s, i + j);
    if (cc < 0x80 || cc > 0xbf) return 0;
  }
  const c2 = byte(s, i + 1);
  // Overlong forms, UTF-16 surrogates and code points past U+10FFFF.
  if ((c === 0xe0 && c2 < 0xa0) || (c === 0xed && c2 > 0x9f) || (c === 0xf0 && c2 < 0x90) || (c === 0xf4 && c2 > 0x8f)) return 0;
  return len;
}

/** The slow path of putString, from the first byte that needs a look (at `from`). */
function putEscaped(this: void, buf: LuaStringBuffer, s: string, from: number, n: number): void {
  buf.put('"');
  let run = 1;
  let i = from;
  while (i <= n) {
    const c = byte(s, i);
    if (c >= 32 && c !== 34 && c !== 92 && c < 128) {
      i++;
    } else if (c < 128) {
      if (i > run) buf.put(sub(s, run, i - 1));
      buf.put(ESCAPES.get(c));
      i++;
      run = i;
    } else {
      const len = utf8Length(s, i, c, n);
      if (len > 0) {
        i += len;
      } else {
        if (i > run) buf.put(sub(s, run, i - 1));
        buf.put(REPLACEMENT);
        i++;
        run = i;
      }
    }
  }
  if (n >= run) buf.put(sub(s, run, n));
  buf.put('"');
}

/**
 * Short strings seen to need no escape: most values repeat from line to line (header
 * values, hosts, ids of a route), and a lookup costs less than a look at every byte.
 * Bounded: emptied when full. Long values are checked every time (and not kept alive).
 */
let plain = new LuaTable<string, boolean>();
let plainCount = 0;
const MAX_PLAIN = 4096;
const MAX_PLAIN_LEN = 256;

/** A JSON string: quotes, backslashes and control bytes escaped, invalid UTF-8 replaced. */
export function putString(this: void, buf: LuaStringBuffer, s: string): void {
  if (plain.get(s) === true) {
    buf.put('"', s, '"');
    return;
  }
  const n = s.length;
  for (let i = 1; i <= n; i++) {
    const c = byte(s, i);
    if (c < 32 || c === 34 || c === 92 || c >= 128) return putEscaped(buf, s, i, n);
  }
  if (n <= MAX_PLAIN_LEN) {
    if (plainCount >= MAX_PLAIN) {
      plain = new LuaTable();
      plainCount = 0;
    }
    plain.set(s, true);
    plainCount++;
  }
  buf.put('"', s, '"');
}

/** A JSON number: integers in full, others as lua-cjson writes them (%.14g); NaN and infinities as null. */
function putNumber(this: void, buf: LuaStringBuffer, x: number): void {
  if (x !== x || x === HUGE || x === -HUGE) buf.put("null");
  else if (x === floor(x) && x > -1e15 && x < 1e15) buf.putf("%d", x);
  else buf.putf("%.14g", x);
}

let keys = new LuaTable<string, string>();
let keyCount = 0;
const keyBuf = stringBuffer.new(64);

/** How many encoded keys are kept (for the unit spec). */
export function keysKept(this: void): number {
  return keyCount;
}

/** `"key":`, encoded once per name. */
function putKey(this: void, buf: LuaStringBuffer, k: unknown): void {
  const kind = type(k);
  if (kind === "string") {
    if ((k as string).length > MAX_KEY_LEN) {
      putString(buf, k as string);
      buf.put(":");
      return;
    }
    let encoded = keys.get(k as string);
    if (encoded === undefined) {
      keyBuf.reset();
      putString(keyBuf, k as string);
      keyBuf.put(":");
      encoded = keyBuf.tostring();
      if (keyCount >= MAX_KEYS) {
        keys = new LuaTable();
        keyCount = 0;
      }
      keys.set(k as string, encoded);
      keyCount++;
    }
    buf.put(encoded);
  } else if (kind === "number") {
    buf.put('"');
    putNumber(buf, k as number);
    buf.put('":');
  } else if (kind === "boolean") {
    buf.put(k === true ? '"true":' : '"false":');
  } else {
    failure = `cannot encode a ${kind} key`;
    buf.put('"":');
  }
}

/** The length of t when its keys are exactly 1..n (n > 0), else 0: then it is an object. */
function arrayLength(this: void, t: LuaTable<AnyNotNil, unknown>): number {
  const n = (t as unknown as unknown[]).length;
  if (n === 0) return 0;
  let count = 0;
  for (const [k] of pairs(t)) {
    if (type(k) !== "number" || (k as number) < 1 || (k as number) > n || (k as number) !== floor(k as number)) return 0;
    count++;
  }
  return count === n ? n : 0;
}

function putTable(this: void, buf: LuaStringBuffer, t: LuaTable<AnyNotNil, unknown>, depth: number): void {
  if (depth > MAX_DEPTH) {
    failure = `nested deeper than ${MAX_DEPTH} (a cycle?)`;
    buf.put("null");
    return;
  }
  const mt = getmetatable(t);
  // OpenResty's cjson marks arrays (empty ones too) with a metatable; Debian's has none.
  const marked = mt !== undefined && (mt === ARRAY_MT || mt === EMPTY_ARRAY_MT);
  const n = marked ? (t as unknown as unknown[]).length : arrayLength(t);
  if (n > 0 || marked) {
    buf.put("[");
    for (let i = 1; i <= n; i++) {
      if (i > 1) buf.put(",");
      putValue(buf, t.get(i), depth + 1);
    }
    buf.put("]");
    return;
  }
  buf.put("{");
  let first = true;
  for (const [k, v] of pairs(t)) {
    if (!first) buf.put(",");
    first = false;
    putKey(buf, k);
    putValue(buf, v, depth + 1);
  }
  buf.put("}");
}

/** Any value of a serialized entry. */
export function putValue(this: void, buf: LuaStringBuffer, v: unknown, depth: number): void {
  const kind = type(v);
  if (kind === "string") putString(buf, v as string);
  else if (kind === "number") putNumber(buf, v as number);
  else if (kind === "table") putTable(buf, v as LuaTable<AnyNotNil, unknown>, depth);
  else if (kind === "boolean") buf.put(v === true ? "true" : "false");
  else if (v === undefined || v === NULL) buf.put("null");
  else if (EMPTY_ARRAY !== undefined && v === EMPTY_ARRAY) buf.put("[]");
  else {
    failure = `cannot encode a ${kind}`;
    buf.put("null");
  }
}

const lineBuf = stringBuffer.new(4096);

/** The JSON text of `value` (one line: every control byte is escaped), or undefined and why not. */
export function encode(this: void, value: unknown): LuaMultiReturn<[string | undefined, string | undefined]> {
  failure = undefined;
  lineBuf.reset();
  putValue(lineBuf, value, 0);
  if (failure !== undefined) return $multi(undefined, failure);
  return $multi(lineBuf.tostring(), undefined);
}

/**
 * An object whose `head` keys come first, in that order (a reader sees the time and level
 * of a line before anything else), then the others, then `last`. The text stays in the
 * returned buffer, valid until the next call: a file sink copies it into its own buffer
 * without making a Lua string of it. Undefined and why when it cannot be encoded.
 *
 * `last` is for a value that differs on every line (the request id): LuaJIT 2.1 as
 * Debian ships it hashes a long string from a few sampled bytes, its last ones among
 * them, so lines that differ only in their middle would all collide in its string table
 * when a sink makes a Lua string of each (OpenResty's LuaJIT hashes every byte).
 */
export function encodeObject(this: void, entry: LuaTable<string, unknown>, head: string[], isHead: LuaTable<string, boolean>, last?: string): LuaMultiReturn<[LuaStringBuffer | undefined, string | undefined]> {
  failure = undefined;
  lineBuf.reset();
  lineBuf.put("{");
  let first = true;
  for (const k of head) {
    const v = entry.get(k);
    if (v === undefined) continue;
    if (!first) lineBuf.put(",");
    first = false;
    putKey(lineBuf, k);
    putValue(lineBuf, v, 1);
  }
  for (const [k, v] of pairs(entry)) {
    if (isHead.get(k) === true || k === last) continue;
    if (!first) lineBuf.put(",");
    first = false;
    putKey(lineBuf, k);
    putValue(lineBuf, v, 1);
  }
  const tail = last !== undefined ? entry.get(last) : undefined;
  if (tail !== undefined) {
    if (!first) lineBuf.put(",");
    putKey(lineBuf, last);
    putValue(lineBuf, tail, 1);
  }
  lineBuf.put("}");
  if (failure !== undefined) return $multi(undefined, failure);
  return $multi(lineBuf, undefined);
}

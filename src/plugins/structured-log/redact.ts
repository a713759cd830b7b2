/**
 * Redaction of a serialized request before anything is written: header and query values
 * are replaced by REDACTED, never hashed (a hash of a short API key is brute-forced in
 * seconds). Names compare case-insensitively: over-redacting costs nothing, missing a
 * spelling leaks a secret.
 */

export const REDACTED = "[REDACTED]";

export type NameSet = LuaTable<string, boolean>;

export function nameSet(this: void, ...lists: (string[] | undefined)[]): NameSet {
  const set = new LuaTable<string, boolean>();
  for (const list of lists) {
    if (type(list) !== "table") continue;
    for (const name of list!) if (type(name) === "string") set.set(string.lower(name), true);
  }
  return set;
}

const lower = string.lower;
const find = string.find;
const sub = string.sub;

/** Names seen, lowercased once: the same few header names come with every request. Bounded. */
let lowered = new LuaTable<string, string>();
let loweredCount = 0;
const MAX_LOWERED = 4096;
/** Longer names (the client's) are lowercased every time, not kept: 4096 of them could be tens of MB. */
const MAX_LOWERED_LEN = 256;

/** How many lowercased names are kept (for the unit spec). */
export function loweredKept(this: void): number {
  return loweredCount;
}

/** `string.lower(name)`, remembered. */
export function lowerName(this: void, name: string): string {
  let l = lowered.get(name);
  if (l === undefined) {
    l = lower(name);
    if (name.length > MAX_LOWERED_LEN) return l;
    if (loweredCount >= MAX_LOWERED) {
      lowered = new LuaTable();
      loweredCount = 0;
    }
    lowered.set(name, l);
    loweredCount++;
  }
  return l;
}

/** Replaces, in place, the value of every entry of `values` whose name is in `names`; returns how many. */
export function redactTable(this: void, values: unknown, names: NameSet): number {
  if (type(values) !== "table") return 0;
  const t = values as LuaTable<string, unknown>;
  let hits: string[] | undefined;
  for (const [k] of pairs(t)) {
    if (type(k) === "string" && names.has(lowerName(k))) {
      hits = hits ?? [];
      hits.push(k);
    }
  }
  if (hits === undefined) return 0;
  for (const k of hits) t.set(k, REDACTED);
  return hits.length;
}

function unescape(this: void, text: string): string {
  const [plus] = string.gsub(text, "+", " ");
  return ngx.unescape_uri(plus);
}

/** A query string with the values of the named arguments redacted, every other byte as it was. */
function redactQueryString(this: void, query: string, names: NameSet): string {
  const n = query.length;
  let parts: string[] | undefined;
  let kept = 1;
  let pos = 1;
  while (pos <= n) {
    const [amp] = find(query, "&", pos, true);
    const stop = amp ?? n + 1;
    if (stop > pos) {
      const [eq] = find(query, "=", pos, true);
      const nameEnd = eq !== undefined && eq < stop ? eq - 1 : stop - 1;
      const raw = sub(query, pos, nameEnd);
      const decoded = find(raw, "[%%+]")[0] !== undefined ? unescape(raw) : raw;
      if (names.has(lowerName(decoded))) {
        parts = parts ?? [];
        parts.push(sub(query, kept, pos - 1), raw, "=", REDACTED);
        kept = stop;
      }
    }
    pos = stop + 1;
  }
  if (parts === undefined) return query;
  parts.push(sub(query, kept));
  return table.concat(parts);
}

/** The last query redacted: a request's uri, url and upstream_uri usually carry the same one. */
let lastQuery: string | undefined;
let lastNames: NameSet | undefined;
let lastRedacted = "";

/**
 * A request URI (or URL) with the values of the named query arguments redacted; the
 * path and the other arguments as they were. Argument names are compared decoded.
 */
export function redactUri(this: void, uri: string | undefined, names: NameSet): string | undefined {
  if (type(uri) !== "string") return uri;
  const [at] = find(uri!, "?", 1, true);
  if (at === undefined) return uri;
  const query = sub(uri!, at + 1);
  if (query !== lastQuery || names !== lastNames) {
    lastRedacted = redactQueryString(query, names);
    lastQuery = query;
    lastNames = names;
  }
  return lastRedacted === query ? uri : sub(uri!, 1, at) + lastRedacted;
}

/** A query table (kong.request.get_query's shape) with the named arguments redacted, names decoded. */
export function redactQuery(this: void, query: unknown, names: NameSet): void {
  redactTable(query, names);
}

/** Any byte past ASCII (built with string.char: a TS escape would become UTF-16). */
const NON_ASCII = "[" + string.char(128) + "-" + string.char(255) + "]";

/** PCRE (JIT, compiled once) in nginx: a Lua pattern walks every byte of every line in Lua. */
function hasNonAscii(this: void, text: string): boolean {
  const re = (ngx as unknown as { re?: { find?: unknown } }).re;
  if (re !== undefined && re.find !== undefined) return ngx.re.find(text, "[\\x80-\\xff]", "jo")[0] !== undefined;
  return string.find(text, NON_ASCII)[0] !== undefined;
}

/** The same line with every byte sequence that is not UTF-8 replaced by U+FFFD. */
export function toUtf8(this: void, text: string): string {
  if (!hasNonAscii(text)) return text;
  const out: string[] = [];
  const n = text.length;
  let i = 1;
  let runStart = 1;
  while (i <= n) {
    const c = string.byte(text, i);
    let len = 0;
    if (c < 0x80) len = 1;
    else if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) len = 3;
    else if (c >= 0xf0 && c <= 0xf4) len = 4;
    let valid = len > 0 && i + len - 1 <= n;
    if (valid && len > 1) {
      for (let j = 1; j < len; j++) {
        const cc = string.byte(text, i + j);
        if (cc < 0x80 || cc > 0xbf) valid = false;
      }
      if (valid) {
        const c2 = string.byte(text, i + 1);
        // Overlong forms, UTF-16 surrogates and code points past U+10FFFF.
        if ((c === 0xe0 && c2 < 0xa0) || (c === 0xed && c2 > 0x9f) || (c === 0xf0 && c2 < 0x90) || (c === 0xf4 && c2 > 0x8f)) valid = false;
      }
    }
    if (valid) {
      i += len;
    } else {
      out.push(string.sub(text, runStart, i - 1));
      out.push("\\ufffd");
      i++;
      runStart = i;
    }
  }
  out.push(string.sub(text, runStart));
  return table.concat(out);
}

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

/** Replaces, in place, the value of every entry of `values` whose name is in `names`; returns how many. */
export function redactTable(this: void, values: unknown, names: NameSet): number {
  if (type(values) !== "table") return 0;
  const t = values as LuaTable<string, unknown>;
  let hits: string[] | undefined;
  for (const [k] of pairs(t)) {
    if (type(k) === "string" && names.has(string.lower(k))) {
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

/**
 * A request URI (or URL) with the values of the named query arguments redacted; the
 * path and the other arguments as they were. Argument names are compared decoded.
 */
export function redactUri(this: void, uri: string | undefined, names: NameSet): string | undefined {
  if (type(uri) !== "string") return uri;
  const [at] = string.find(uri!, "?", 1, true);
  if (at === undefined) return uri;
  const query = string.sub(uri!, at + 1);
  const parts: string[] = [];
  let changed = false;
  for (const [arg] of string.gmatch(query, "[^&]*")) {
    const text = arg as string;
    const [eq] = string.find(text, "=", 1, true);
    const name = eq !== undefined ? string.sub(text, 1, eq - 1) : text;
    if (text !== "" && names.has(string.lower(unescape(name)))) {
      parts.push(`${name}=${REDACTED}`);
      changed = true;
    } else {
      parts.push(text);
    }
  }
  if (!changed) return uri;
  // gmatch yields an empty match after each non-empty one on LuaJIT: drop those.
  const kept: string[] = [];
  for (const p of parts) if (p !== "") kept.push(p);
  return string.sub(uri!, 1, at) + table.concat(kept, "&");
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

/**
 * What may be cached, and for how long: Cache-Control and Vary parsing, content-type
 * matching, the response TTL. Pure functions (no ngx, no Redis), unit-tested under busted.
 */

const find = string.find;
const gmatch = string.gmatch;
const lower = string.lower;
const match = string.match;
const sub = string.sub;

/** Cache-Control directives: lower-case name → its argument, or true for a bare directive. */
export type Directives = LuaTable<string, string | true>;

function joined(this: void, value: string | string[] | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (type(value) === "table") return table.concat(value as string[], ",");
  return value as string;
}

/** Parses Cache-Control header value(s); undefined when there is none. */
export function parseCacheControl(this: void, header: string | string[] | undefined): Directives | undefined {
  const text = joined(header);
  if (text === undefined) return undefined;
  const out: Directives = new LuaTable();
  for (const [item] of gmatch(text, "[^,]+")) {
    const [name, arg] = match(item as string, "^%s*([^=%s]+)%s*=?%s*(.-)%s*$");
    if (name === undefined) continue;
    let value: string | true = true;
    if (arg !== undefined && arg !== "") value = (match(arg, '^"(.*)"$')[0] as string | undefined) ?? arg;
    out.set(lower(name), value);
  }
  return out;
}

/** A directive's delta-seconds argument (max-age=N), or undefined when absent or malformed. */
export function seconds(this: void, directives: Directives | undefined, name: string): number | undefined {
  if (directives === undefined) return undefined;
  const value = directives.get(name);
  if (type(value) !== "string" || find(value as string, "^%d+$")[0] === undefined) return undefined;
  return tonumber(value);
}

/**
 * Seconds a response may be kept according to its Cache-Control (s-maxage, then max-age,
 * then Expires relative to Date/now), or `fallback` when it says nothing; 0 = not at all
 * (no-store, no-cache, private, or an expiry in the past).
 */
export function responseTtl(this: void, cc: Directives | undefined, expiresAt: number | undefined, nowS: number, fallback: number): number {
  if (cc !== undefined && (cc.has("no-store") || cc.has("no-cache") || cc.has("private"))) return 0;
  const ttl = seconds(cc, "s-maxage") ?? seconds(cc, "max-age");
  if (ttl !== undefined) return ttl;
  if (expiresAt !== undefined) return math.max(expiresAt - nowS, 0);
  return fallback;
}

// ---------------------------------------------------------------- content types

/** An RFC 9110 token, as a Lua pattern. */
const TOKEN = "[%w!#$%%&'*+%-.^_`|~]+";
const TYPE_SUBTYPE = "^%s*(" + TOKEN + ")/(" + TOKEN + ")%s*";
const ANY_TYPE = "^%s*%*%s*";
const PARAM_NAME = "^;%s*(" + TOKEN + ")=";
const PARAM_TOKEN = "^(" + TOKEN + ")";

/** A quoted-string from `pos` (its opening quote): its value and the position after it. */
function quotedString(this: void, text: string, pos: number): LuaMultiReturn<[string | undefined, number]> {
  const parts: string[] = [];
  let i = pos + 1;
  while (true) {
    const [at, , ch] = find(text, '(["\\%c])', i);
    if (at === undefined || ch === undefined) return $multi(undefined, 0);
    parts.push(sub(text, i, at - 1));
    if (ch === '"') return $multi(table.concat(parts), at + 1);
    if (ch !== "\\") return $multi(undefined, 0);
    const escaped = sub(text, at + 1, at + 1);
    if (escaped === "" || find(escaped, "%c")[0] !== undefined) return $multi(undefined, 0);
    parts.push(escaped);
    i = at + 2;
  }
}

/**
 * A media type (RFC 9110 8.3.1) as type, subtype (lower-case; "*" alone reads as type "*",
 * subtype "*") and its parameters in one canonical string: "name=value" (name lower-case, value
 * unquoted and as sent) sorted and joined by "\n", "" when there are none. undefined
 * when the text is not a media type.
 */
export function parseMediaType(this: void, text: string): LuaMultiReturn<[string | undefined, string | undefined, string | undefined]> {
  const [, typeEnd, typeText, subtypeText] = find(text, TYPE_SUBTYPE);
  let stop = typeEnd;
  let major = typeText as string | undefined;
  let minor = subtypeText as string | undefined;
  if (stop === undefined) {
    const [, anyEnd] = find(text, ANY_TYPE);
    if (anyEnd === undefined) return $multi(undefined, undefined, undefined);
    stop = anyEnd;
    major = "*";
    minor = "*";
  }
  const params: string[] = [];
  let pos = stop + 1;
  const size = text.length;
  while (pos <= size) {
    const [, nameEnd, nameText] = find(text, PARAM_NAME, pos);
    const name = nameText as string | undefined;
    if (nameEnd === undefined || name === undefined) return $multi(undefined, undefined, undefined);
    pos = nameEnd + 1;
    let value: string | undefined;
    const [, tokenEnd, token] = find(text, PARAM_TOKEN, pos);
    if (tokenEnd !== undefined) {
      value = token as string;
      pos = tokenEnd + 1;
    } else if (sub(text, pos, pos) === '"') {
      [value, pos] = quotedString(text, pos);
    }
    if (value === undefined) return $multi(undefined, undefined, undefined);
    const [, spaceEnd] = find(text, "^%s*", pos);
    pos = spaceEnd! + 1;
    params.push(lower(name) + "=" + value);
  }
  table.sort(params);
  return $multi(lower(major!), lower(minor!), table.concat(params, "\n"));
}

export interface TypeMatcher {
  any: boolean;
  /** "type/subtype" → true */
  exact: LuaTable<string, boolean>;
  /** "type" → true, from "type/*" */
  major: LuaTable<string, boolean>;
  /**
   * Entries with parameters: "type/subtype", "type/*" or "*" + "/*" → the canonical
   * parameter strings (parseMediaType) a response must carry exactly. undefined when no
   * entry has parameters.
   */
  withParams: LuaTable<string, LuaTable<string, boolean>> | undefined;
}

export function typeMatcher(this: void, list: string[]): TypeMatcher {
  const m: TypeMatcher = { any: false, exact: new LuaTable(), major: new LuaTable(), withParams: undefined };
  for (const raw of list) {
    const [major, minor, params] = parseMediaType(raw);
    if (major === undefined || minor === undefined || params === undefined) continue;
    if (params !== "") {
      if (m.withParams === undefined) m.withParams = new LuaTable();
      const name = major + "/" + minor;
      let set = m.withParams.get(name);
      if (set === undefined) {
        set = new LuaTable();
        m.withParams.set(name, set);
      }
      set.set(params, true);
    } else if (major === "*") m.any = true;
    else if (minor === "*") m.major.set(major, true);
    else m.exact.set(major + "/" + minor, true);
  }
  return m;
}

/**
 * Matches a Content-Type value. Entries without parameters match on type/subtype alone
 * (whatever parameters the response has); entries with parameters, as in Kong
 * proxy-cache, only a response with exactly those parameters (same names, same values,
 * any order). Types and parameter names are case-insensitive, parameter values are not.
 */
export function matchesType(this: void, m: TypeMatcher, contentType: string): boolean {
  const [major, minor] = match(contentType, "^%s*([^/;%s]+)/([^;%s]+)");
  if (major === undefined || minor === undefined) return m.any && find(contentType, "%S")[0] !== undefined;
  if (m.any) return true;
  const majorL = lower(major);
  if (m.exact.has(majorL + "/" + lower(minor)) || m.major.has(majorL)) return true;
  const withParams = m.withParams;
  if (withParams === undefined) return false;
  const [t, st, params] = parseMediaType(contentType);
  if (t === undefined || params === undefined || params === "") return false;
  for (const name of [t + "/" + st!, t + "/*", "*/*"]) {
    if (withParams.get(name)?.has(params) === true) return true;
  }
  return false;
}

// ---------------------------------------------------------------- Vary

/**
 * The header names of a Vary value: lower-case, sorted, each once; "*" when the response
 * varies on everything (never cacheable); an empty list when there is none.
 */
export function parseVary(this: void, header: string | string[] | undefined): string[] | "*" {
  const text = joined(header);
  const names: string[] = [];
  if (text === undefined) return names;
  const seen = new LuaTable<string, boolean>();
  for (const [item] of gmatch(text, "[^,%s]+")) {
    const name = lower(item as string);
    if (name === "*") return "*";
    if (!seen.has(name)) {
      seen.set(name, true);
      names.push(name);
    }
  }
  table.sort(names);
  return names;
}

/** "a,b" for a sorted name list, the form a Vary marker stores. */
export function varyList(this: void, names: string[]): string {
  return table.concat(names, ",");
}

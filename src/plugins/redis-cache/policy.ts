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

export interface TypeMatcher {
  any: boolean;
  /** "type/subtype" → true */
  exact: LuaTable<string, boolean>;
  /** "type" → true, from "type/*" */
  major: LuaTable<string, boolean>;
}

export function typeMatcher(this: void, list: string[]): TypeMatcher {
  const m: TypeMatcher = { any: false, exact: new LuaTable(), major: new LuaTable() };
  for (const raw of list) {
    const t = lower(raw);
    if (t === "*" || t === "*/*") m.any = true;
    else if (sub(t, -2) === "/*") m.major.set(sub(t, 1, -3), true);
    else m.exact.set(t, true);
  }
  return m;
}

/** Matches a Content-Type value on type/subtype, ignoring parameters and case. */
export function matchesType(this: void, m: TypeMatcher, contentType: string): boolean {
  const [major, minor] = match(contentType, "^%s*([^/;%s]+)/([^;%s]+)");
  if (major === undefined || minor === undefined) return m.any && find(contentType, "%S")[0] !== undefined;
  if (m.any) return true;
  const majorL = lower(major);
  return m.exact.has(majorL + "/" + lower(minor)) || m.major.has(majorL);
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

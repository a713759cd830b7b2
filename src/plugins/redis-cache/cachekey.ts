/**
 * Cache keys: SHA-256 (hex) over the request's identity, in the spirit of Kong
 * proxy-cache's key (consumer and route, method, path, query, chosen headers), plus the
 * host. Every variable part is length-prefixed and query arguments are re-escaped, so no
 * request can be made to produce another request's key (e.g. `?a=1%26b%3D2` vs `?a=1&b=2`).
 *
 *   base    = sha256(consumer | route | method | host | path | query | vary_headers)
 *   variant = sha256(base | response-Vary header values)   (when the response has Vary)
 */
import * as crypto from "../../lib/crypto";
import type { Prepared } from "./state";

const concat = table.concat;
const escape = ngx.escape_uri;
const format = string.format;
const lower = string.lower;
const sort = table.sort;

/**
 * Query arguments and request headers read for the key. A request with more is not
 * cached: the ones past the limit would reach the upstream without being in the key.
 */
const MAX_ITEMS = 100;

/**
 * The hex SHA-256 of recent key materials, so that a hot key is not hashed (and hex-encoded)
 * on every request: the digest depends on the material alone. Bounded: emptied when it
 * holds DIGEST_MEMO_MAX digests; materials longer than DIGEST_MEMO_TEXT_MAX are hashed
 * every time. Worker memory only (the materials never leave the process).
 */
const DIGEST_MEMO_MAX = 1024;
const DIGEST_MEMO_TEXT_MAX = 2048;
let digests = new LuaTable<string, string>();
let digestCount = 0;

function digestHex(this: void, material: string): string {
  const known = digests.get(material);
  if (known !== undefined) return known;
  const hex = crypto.toHex(crypto.sha256(material));
  if (material.length <= DIGEST_MEMO_TEXT_MAX) {
    if (digestCount >= DIGEST_MEMO_MAX) {
      digests = new LuaTable();
      digestCount = 0;
    }
    digests.set(material, hex);
    digestCount++;
  }
  return hex;
}

/** `<length>:<text>`: unambiguous whatever the text holds. */
function field(this: void, text: string): string {
  return `${text.length}:${text}`;
}

function argPairs(this: void, out: string[], name: string, value: string | boolean | (string | boolean)[] | undefined): void {
  if (value === undefined) return;
  const ename = escape(name);
  if (type(value) === "table") {
    const values: string[] = [];
    for (const v of value as (string | boolean)[]) values.push(v === true ? "" : "=" + escape(v as string));
    sort(values);
    for (const v of values) out.push(ename + v);
  } else {
    out.push(value === true ? ename : ename + "=" + escape(value as string));
  }
}

/**
 * The query part: every argument (sorted by name), or only the configured ones;
 * undefined when the request has more than MAX_ITEMS arguments.
 */
function queryPart(this: void, p: Prepared): string | undefined {
  const [args, err] = ngx.req.get_uri_args(MAX_ITEMS);
  if (err === "truncated") return undefined;
  // No arguments (the common case): no tables to fill and join.
  if (next(args)[0] === undefined) return "";
  const out: string[] = [];
  if (p.varyQuery !== undefined) {
    for (const name of p.varyQuery) argPairs(out, name, args.get(name));
  } else {
    const names: string[] = [];
    for (const [name] of pairs(args)) names.push(name as string);
    sort(names);
    for (const name of names) argPairs(out, name, args.get(name));
  }
  return concat(out, "&");
}

function headerValue(this: void, headers: HeaderTable, name: string): string {
  const value = headers.get(name);
  if (value === undefined) return "";
  if (type(value) === "table") return concat(value as string[], ",");
  return value as string;
}

/**
 * `name:value` lines for the given lower-case header names, from the request; undefined
 * when the request has more than MAX_ITEMS headers.
 */
export function headersPart(this: void, names: string[]): string | undefined {
  if (names.length === 0) return "";
  const [headers, err] = ngx.req.get_headers(MAX_ITEMS);
  if (err === "truncated") return undefined;
  const out: string[] = [];
  for (const name of names) out.push(field(name) + field(headerValue(headers, name)));
  return concat(out);
}

/**
 * The base key of the current request. `consumerId` is set when entries are kept per
 * consumer; `scope` names the route (or service) so two routes never share entries.
 * undefined when the request has more query arguments or headers than the key can take
 * (MAX_ITEMS): such a request is not cached.
 */
export function baseKey(this: void, p: Prepared, ignoreCase: boolean, consumerId: string | undefined, scope: string): string | undefined {
  const query = queryPart(p);
  if (query === undefined) return undefined;
  const headers = headersPart(p.varyHeaders);
  if (headers === undefined) return undefined;
  const path = kong.request.get_path();
  const consumer = consumerId ?? "";
  const method = kong.request.get_method();
  const host = kong.request.get_host();
  const keyedPath = ignoreCase ? lower(path) : path;
  // field() of each part, joined by "|", in one string: no intermediate strings or table.
  const material = format(
    "%d:%s|%d:%s|%d:%s|%d:%s|%d:%s|%d:%s|%s",
    consumer.length, consumer, scope.length, scope, method.length, method, host.length, host,
    keyedPath.length, keyedPath, query.length, query, headers,
  );
  return digestHex(material);
}

/**
 * The key of one variant of a response that has `Vary: names`; undefined when the
 * request has more headers than the key can take.
 */
export function variantKey(this: void, base: string, names: string[]): string | undefined {
  const headers = headersPart(names);
  if (headers === undefined) return undefined;
  return digestHex(base + "|" + headers);
}

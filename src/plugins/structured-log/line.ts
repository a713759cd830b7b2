/**
 * One request's line: Kong's kong.log.serialize() entry, redacted, plus request_id,
 * correlation_id, what the suite's plugins did (krs) and the custom fields. Pure apart
 * from the tables it is given, so the unit spec builds lines without nginx.
 */
import type { RequestFacts, RedisFacts } from "../../lib/facts";
import { REDACTED, redactTable, redactUri } from "./redact";
import type { RouteRedaction } from "./credentials";

export interface CustomField {
  name: string;
  value?: string;
  request_header?: string;
  response_header?: string;
}

function roundMs(this: void, ms: number): number {
  return math.floor(ms * 1000 + 0.5) / 1000;
}

function redisOf(this: void, r: RedisFacts): RedisFacts {
  return { round_trips: r.round_trips, time_ms: roundMs(r.time_ms), errors: r.errors };
}

/** The krs object: what the suite's plugins recorded, as facts.ts defines it. */
export function krsOf(this: void, f: RequestFacts | undefined, openBreakers: string[], dropped: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (f === undefined) {
    out.redis = { round_trips: 0, time_ms: 0, errors: 0 };
  } else {
    out.redis = redisOf(f.redis);
    let byPlugin: Record<string, RedisFacts> | undefined;
    for (const [plugin, r] of pairs(f.redis_by_plugin)) {
      byPlugin = byPlugin ?? {};
      byPlugin[plugin as string] = redisOf(r as RedisFacts);
    }
    if (byPlugin !== undefined) out.redis_by_plugin = byPlugin;
    if (f.cache !== undefined) out.cache = f.cache;
    if (f.limits !== undefined) out.limits = f.limits;
    if (f.auth !== undefined) out.auth = f.auth;
    if (f.access !== undefined) out.access = f.access;
    if (f.errors !== undefined) out.errors = f.errors;
  }
  if (openBreakers.length > 0) out.breaker_open = openBreakers;
  if (dropped > 0) out.log_dropped = dropped;
  return out;
}

/** Redacts a serialized entry in place: headers, query tables, URIs. */
export function redactEntry(this: void, entry: KongSerializedLog, names: RouteRedaction): void {
  const request = entry.request;
  if (type(request) === "table") {
    redactTable(request.headers, names.headers);
    redactTable(request.querystring, names.query);
    // Always scanned, not only when the querystring had a hit: the querystring stops at
    // get_uri_args' 100 arguments, the URI does not, so a key sent as the 101st argument
    // would be written in the clear.
    request.uri = redactUri(request.uri, names.query)!;
    request.url = redactUri(request.url, names.query)!;
  }
  if (type(entry.response) === "table") redactTable(entry.response.headers, names.headers);
  entry.upstream_uri = redactUri(entry.upstream_uri, names.query);
}

function firstOf(this: void, value: unknown): string | undefined {
  if (type(value) === "table") return (value as string[])[0];
  return value as string | undefined;
}

/** Sets each custom field on the entry; header values of redacted headers stay redacted. */
export function applyCustomFields(this: void, entry: Record<string, unknown>, fields: CustomField[] | undefined, names: RouteRedaction, requestHeader: (this: void, name: string) => unknown, responseHeader: (this: void, name: string) => unknown): void {
  if (type(fields) !== "table") return;
  for (const field of fields!) {
    let value: unknown;
    if (type(field.value) === "string") value = field.value;
    else if (type(field.request_header) === "string") value = names.headers.has(string.lower(field.request_header!)) ? REDACTED : firstOf(requestHeader(field.request_header!));
    else if (type(field.response_header) === "string") value = names.headers.has(string.lower(field.response_header!)) ? REDACTED : firstOf(responseHeader(field.response_header!));
    if (value !== undefined) entry[field.name] = value;
  }
}

/** "error" for a 5xx or a plugin error, "warn" for a 4xx, else "info". */
export function levelOf(this: void, status: number, f: RequestFacts | undefined): string {
  if (status >= 500 || (f !== undefined && f.errors !== undefined && f.errors.length > 0)) return "error";
  if (status >= 400) return "warn";
  return "info";
}

let formattedSecond = -1;
let formattedPrefix = "";

/** RFC 3339 UTC with milliseconds (the date formatted once per second). */
export function timestamp(this: void, seconds: number): string {
  const whole = math.floor(seconds);
  const ms = math.floor((seconds - whole) * 1000 + 0.5);
  if (whole !== formattedSecond) {
    formattedSecond = whole;
    formattedPrefix = os.date("!%Y-%m-%dT%H:%M:%S", whole);
  }
  return formattedPrefix + string.format(".%03dZ", math.min(ms, 999));
}

/** A RFC 4122 version 4 UUID from 32 random hex digits (Kong's $kong_request_id). */
export function uuidFromHex(this: void, hex: string): string {
  const variant = string.format("%x", (tonumber(string.sub(hex, 17, 17), 16) ?? 0) % 4 + 8);
  return `${string.sub(hex, 1, 8)}-${string.sub(hex, 9, 12)}-4${string.sub(hex, 14, 16)}-${variant}${string.sub(hex, 18, 20)}-${string.sub(hex, 21, 32)}`;
}

/**
 * redis-usage's Admin API, in Kong's api.lua shape:
 *
 *   GET    /redis-usage/consumers/:consumer?period=day|month&from=&to=   the consumer's buckets
 *   GET    /redis-usage/routes/:route?...  and  /redis-usage/services/:service?...
 *   GET    /redis-usage/quotas/:consumer    its overrides (null: the config's default applies)
 *   PUT    /redis-usage/quotas/:consumer    day, month (whole numbers; null clears one)
 *   DELETE /redis-usage/quotas/:consumer    204
 *
 * A consumer is named by id or username (as Kong's endpoints); one the gateway does not
 * know is taken as the metered name itself. Usage comes back one row per bucket that has
 * counts, oldest first; a subject with no counts gives an empty list, not an error.
 * Which Redis: the first enabled redis-usage instance's; `redis=HOST:PORT[/DB]` picks
 * another configured one.
 */
import * as cjson from "cjson.safe";
import * as consumers from "../../lib/consumers";
import * as client from "../../lib/redis/client";
import { key, part } from "../../lib/keys";
import type { RedisConf } from "../../lib/redis/schema";
import { type Bucket, nextBucket, parseBucket, dayOf, monthOf } from "./buckets";
import { TALLY_FIELDS } from "./meter";
import { configuredRedis } from "./registry";

const PLUGIN = "redis-usage";
const JSON_TYPE = "application/json; charset=utf-8";
/** Buckets one read may span: a bit over a year of days, ten years of months. */
const MAX_BUCKETS = 400;
const MAX_QUOTA = 1000000000000;
/** A counter hash's fields: what the meter counts, then the quota amounts. */
const FIELDS: string[] = [...TALLY_FIELDS, "quota_requests", "quota_cost"];

type Params = LuaTable<string, unknown>;
interface Self {
  params: Params;
}
type Endpoint = (this: void, self: Self, db: unknown, helpers: unknown) => void;

function fail(this: void, status: number, message: string): never {
  return kong.response.exit(status, { message });
}

function redisFor(this: void, params: Params): RedisConf {
  const confs = configuredRedis();
  if (confs.length === 0) return fail(409, "no enabled redis-usage plugin: usage lives in the Redis of one");
  const wanted = params.get("redis");
  if (wanted === undefined) return confs[0];
  if (type(wanted) !== "string") return fail(400, "redis: expected HOST:PORT or HOST:PORT/DB");
  for (const conf of confs) {
    if (wanted === `${conf.host}:${conf.port}` || wanted === `${conf.host}:${conf.port}/${conf.database}`) return conf;
  }
  return fail(400, `redis: no enabled redis-usage plugin uses ${wanted as string}`);
}

function textParam(this: void, params: Params, name: string): string | undefined {
  const value = params.get(name);
  if (value === undefined || value === cjson.null || value === "") return undefined;
  if (type(value) !== "string") return fail(400, `${name}: expected a string`);
  return value as string;
}

/** The name a consumer is metered under (its username, else custom_id, else id), from an id or username. */
function consumerName(this: void, given: string): string {
  // A consumer Kong does not know (or cannot look up now) is metered under the name given.
  const [consumer] = consumers.byIdOrUsername(given);
  if (consumer !== undefined) return consumer.username ?? consumer.custom_id ?? consumer.id;
  return given;
}

function bucketLabel(this: void, period: "day" | "month", id: string): string {
  return period === "day" ? `${string.sub(id, 1, 4)}-${string.sub(id, 5, 6)}-${string.sub(id, 7, 8)}` : `${string.sub(id, 1, 4)}-${string.sub(id, 5, 6)}`;
}

interface Range {
  period: "day" | "month";
  buckets: Bucket[];
}

function rangeOf(this: void, params: Params): Range {
  const period = textParam(params, "period") ?? "month";
  if (period !== "day" && period !== "month") return fail(400, "period: expected day or month");
  const format = period === "day" ? "YYYY-MM-DD" : "YYYY-MM";
  const now = ngx.now() * 1000;
  const fromText = textParam(params, "from");
  const toText = textParam(params, "to");
  const from = fromText !== undefined ? parseBucket(period, fromText) : undefined;
  if (fromText !== undefined && from === undefined) return fail(400, `from: expected a ${period} as ${format}`);
  const to = toText !== undefined ? parseBucket(period, toText) : undefined;
  if (toText !== undefined && to === undefined) return fail(400, `to: expected a ${period} as ${format}`);
  const current = period === "day" ? dayOf(now) : monthOf(now);
  const first = from ?? to ?? current;
  const last = to ?? (from !== undefined ? current : first);
  if (last.start < first.start) return fail(400, "to: before from");
  const buckets: Bucket[] = [];
  let b = first;
  while (b.start <= last.start) {
    if (buckets.length >= MAX_BUCKETS) return fail(400, `to: at most ${MAX_BUCKETS} ${period}s from from`);
    buckets.push(b);
    b = nextBucket(period, b);
  }
  return { period, buckets };
}

function usageOf(this: void, params: Params, kind: string, name: string): never {
  const range = rangeOf(params);
  const conf = redisFor(params);
  const tag = `${kind}:${part(name)}`;
  const letter = range.period === "day" ? "d" : "m";
  const calls: client.Call[] = [];
  for (const b of range.buckets) calls.push({ command: "hmget", args: [key(PLUGIN, tag, letter, b.id), ...FIELDS] });
  const [replies, err] = client.pipeline(conf, calls);
  if (replies === undefined) {
    kong.log.err("could not read usage: ", err);
    return fail(503, "could not read usage from Redis");
  }
  const rows: string[] = [];
  for (let i = 0; i < range.buckets.length; i++) {
    const values = replies[i] as unknown[];
    if (type(values) !== "table" || (values as unknown[])[0] === false) continue;
    const row = new LuaTable<string, unknown>();
    let any = false;
    for (let f = 0; f < FIELDS.length; f++) {
      const n = tonumber(values[f]);
      if (n !== undefined) any = true;
      row.set(FIELDS[f], n ?? 0);
    }
    if (!any) continue;
    row.set(range.period, bucketLabel(range.period, range.buckets[i].id));
    rows.push(cjson.encode(row)[0] ?? "null");
  }
  const head = cjson.encode({ kind, name, period: range.period })[0]!;
  // Written by hand: Debian's cjson would encode an empty list as {}.
  return kong.response.exit(200, `${string.sub(head, 1, -2)},"data":[${table.concat(rows, ",")}]}`, { "Content-Type": JSON_TYPE });
}

function nameParam(this: void, self: Self, name: string): string {
  const value = self.params.get(name);
  if (type(value) !== "string" || value === "") return fail(404, "Not found");
  return value as string;
}

const consumerUsage: Endpoint = (self) => usageOf(self.params, "consumer", consumerName(nameParam(self, "consumer")));
const routeUsage: Endpoint = (self) => usageOf(self.params, "route", nameParam(self, "route"));
const serviceUsage: Endpoint = (self) => usageOf(self.params, "service", nameParam(self, "service"));

function quotaKeyOf(this: void, self: Self): LuaMultiReturn<[string, string]> {
  const name = consumerName(nameParam(self, "consumer"));
  return $multi(key(PLUGIN, `consumer:${part(name)}`, "quota"), name);
}

function quotaValue(this: void, params: Params, name: string): number | false | undefined {
  const raw = params.get(name);
  if (raw === undefined) return undefined;
  if (raw === cjson.null || raw === "" || raw === "null") return false;
  const n = type(raw) === "number" || type(raw) === "string" ? tonumber(raw) : undefined;
  if (n === undefined || n < 0 || n > MAX_QUOTA || n !== math.floor(n)) return fail(400, `${name}: expected a whole number from 0 to ${MAX_QUOTA}, or null`);
  return n;
}

function showQuota(this: void, status: number, name: string, values: unknown[]): never {
  const day = tonumber(values[0]);
  const month = tonumber(values[1]);
  return kong.response.exit(status, { consumer: name, day: day ?? cjson.null, month: month ?? cjson.null });
}

const getQuota: Endpoint = (self) => {
  const [quotaKey, name] = quotaKeyOf(self);
  const [values, err] = client.command(redisFor(self.params), "hmget", quotaKey, "day", "month");
  if (type(values) !== "table") {
    kong.log.err("could not read a quota: ", err);
    return fail(503, "could not read the quota from Redis");
  }
  return showQuota(200, name, values as unknown[]);
};

const putQuota: Endpoint = (self) => {
  const [quotaKey, name] = quotaKeyOf(self);
  const day = quotaValue(self.params, "day");
  const month = quotaValue(self.params, "month");
  if (day === undefined && month === undefined) return fail(400, "day, month: give at least one (a whole number, or null to clear)");
  const conf = redisFor(self.params);
  const calls: client.Call[] = [];
  for (const [field, value] of [["day", day], ["month", month]] as [string, number | false | undefined][]) {
    if (value === false) calls.push({ command: "hdel", args: [quotaKey, field] });
    else if (value !== undefined) calls.push({ command: "hset", args: [quotaKey, field, value] });
  }
  calls.push({ command: "hmget", args: [quotaKey, "day", "month"] });
  const [replies, err] = client.pipeline(conf, calls);
  const values = replies !== undefined ? replies[calls.length - 1] : undefined;
  if (type(values) !== "table" || (values as unknown[])[0] === false) {
    kong.log.err("could not store a quota: ", err);
    return fail(503, "could not store the quota in Redis");
  }
  return showQuota(200, name, values as unknown[]);
};

const deleteQuota: Endpoint = (self) => {
  const [quotaKey] = quotaKeyOf(self);
  const [res, err] = client.command(redisFor(self.params), "del", quotaKey);
  if (res === undefined || res === false) {
    kong.log.err("could not delete a quota: ", err);
    return fail(503, "could not delete the quota in Redis");
  }
  return kong.response.exit(204);
};

const api = {
  "/redis-usage/consumers/:consumer": { GET: consumerUsage },
  "/redis-usage/routes/:route": { GET: routeUsage },
  "/redis-usage/services/:service": { GET: serviceUsage },
  "/redis-usage/quotas/:consumer": { GET: getQuota, PUT: putQuota, DELETE: deleteQuota },
};

export = api;

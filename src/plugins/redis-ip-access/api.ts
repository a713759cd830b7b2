/**
 * redis-ip-access's Admin API, in Kong's api.lua shape:
 *
 *   POST   /redis-ip-access/lists/:list          cidr, ttl (seconds), reason → 201 new, 200 replaced
 *   GET    /redis-ip-access/lists/:list          the live entries, with expiry and reason
 *   DELETE /redis-ip-access/lists/:list/:cidr    204, or 404 (a CIDR's "/" is sent as %2F)
 *
 * Which Redis: the one of the first enabled redis-ip-access instance; `redis=HOST:PORT`
 * or `redis=HOST:PORT/DB` picks another configured instance's Redis (only those: the
 * Admin API never connects anywhere the configuration does not name).
 */
import * as cjson from "cjson.safe";
import type { RedisConf } from "../../lib/redis/schema";
import { parseEntry } from "./ip";
import { configuredRedis } from "./lists";
import { validListName } from "./names";
import * as store from "./store";

type Params = LuaTable<string, unknown>;
interface Self {
  params: Params;
}
type Endpoint = (this: void, self: Self, db: unknown, helpers: unknown) => void;

const JSON_TYPE = "application/json; charset=utf-8";
const MAX_TTL = 2147483;
const MAX_REASON = 1024;

function fail(this: void, status: number, message: string): never {
  return kong.response.exit(status, { message });
}

function redisFor(this: void, params: Params): RedisConf {
  const confs = configuredRedis();
  if (confs.length === 0) return fail(409, "no enabled redis-ip-access plugin: lists live in the Redis of one");
  const wanted = params.get("redis");
  if (wanted === undefined) return confs[0];
  if (type(wanted) !== "string") return fail(400, "redis: expected HOST:PORT or HOST:PORT/DB");
  for (const conf of confs) {
    if (wanted === `${conf.host}:${conf.port}` || wanted === `${conf.host}:${conf.port}/${conf.database}`) return conf;
  }
  return fail(400, `redis: no enabled redis-ip-access plugin uses ${wanted as string}`);
}

/** Where the Admin API failed to reach: host and port only, never the password. */
function unreachable(this: void, what: string, conf: RedisConf): never {
  return fail(503, `${what} (Redis at ${conf.host}:${conf.port})`);
}

function listName(this: void, params: Params): string {
  const list = params.get("list");
  if (!validListName(list)) return fail(400, `invalid list name: '${tostring(list)}'`);
  return list as string;
}

function entryOf(this: void, value: unknown): string {
  const [first, , err] = parseEntry(value);
  if (first === undefined) return fail(400, `cidr: ${err}`);
  return value as string;
}

function ttlOf(this: void, raw: unknown): number {
  if (raw === undefined || raw === cjson.null || raw === "") return 0;
  const ttl = type(raw) === "number" || type(raw) === "string" ? tonumber(raw) : undefined;
  if (ttl === undefined || ttl < 1 || ttl > MAX_TTL || ttl !== math.floor(ttl)) return fail(400, `ttl: expected whole seconds between 1 and ${MAX_TTL}`);
  return ttl;
}

function reasonOf(this: void, raw: unknown): string {
  if (raw === undefined || raw === cjson.null) return "";
  if (type(raw) !== "string" || (raw as string).length > MAX_REASON) return fail(400, `reason: expected a string of at most ${MAX_REASON} bytes`);
  return raw as string;
}

const addEntry: Endpoint = (self) => {
  const params = self.params;
  const list = listName(params);
  const cidr = entryOf(params.get("cidr"));
  const ttl = ttlOf(params.get("ttl"));
  const reason = reasonOf(params.get("reason"));
  const conf = redisFor(params);
  const [added, err] = store.add(conf, list, cidr, ttl, reason);
  if (added === undefined) {
    kong.log.err("could not add a list entry: ", err);
    return unreachable("could not store the entry in Redis", conf);
  }
  const expiresAt = ttl > 0 ? math.floor(ngx.now()) + ttl : cjson.null;
  return kong.response.exit(added ? 201 : 200, { list, cidr, expires_at: expiresAt, reason: reason !== "" ? reason : cjson.null });
};

const listEntries: Endpoint = (self) => {
  const list = listName(self.params);
  const conf = redisFor(self.params);
  const [snapshot, err] = store.load(conf, list, true);
  if (snapshot === undefined) {
    kong.log.err("could not read a list: ", err);
    return unreachable("could not read the list from Redis", conf);
  }
  // Written by hand: Debian's cjson would encode an empty list as {}.
  const parts: string[] = [];
  for (let i = 0; i < snapshot.entries.length; i++) {
    const expires = snapshot.expires[i];
    const reason = snapshot.reasons[i] ?? "";
    parts.push(cjson.encode({ cidr: snapshot.entries[i], expires_at: expires !== 0 ? expires / 1000 : cjson.null, reason: reason !== "" ? reason : cjson.null })[0] ?? "null");
  }
  return kong.response.exit(200, `{"data":[${table.concat(parts, ",")}],"next":null}`, { "Content-Type": JSON_TYPE });
};

const removeEntry: Endpoint = (self) => {
  const list = listName(self.params);
  const cidr = entryOf(self.params.get("cidr"));
  const conf = redisFor(self.params);
  const [removed, err] = store.remove(conf, list, cidr);
  if (removed === undefined) {
    kong.log.err("could not remove a list entry: ", err);
    return unreachable("could not remove the entry in Redis", conf);
  }
  if (!removed) return fail(404, "Not found");
  return kong.response.exit(204);
};

const api = {
  "/redis-ip-access/lists/:list": { GET: listEntries, POST: addEntry },
  "/redis-ip-access/lists/:list/:cidr": { DELETE: removeEntry },
};

export = api;

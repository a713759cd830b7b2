/**
 * redis-key-auth's Admin API, in Kong's api.lua shape:
 *
 *   POST   /redis-key-auth/keys                 consumer, consumer_id, custom_id, ttl → 201, the key once
 *   GET    /redis-key-auth/keys[?consumer=]     the live keys (ids, consumers, times), never a key
 *   DELETE /redis-key-auth/keys/:key_or_id      204, or 404 when there is no such key
 *
 * Which Redis: the one of the first enabled redis-key-auth instance; `redis=HOST:PORT`
 * or `redis=HOST:PORT/DB` picks another configured instance's Redis (only those: the
 * Admin API never connects anywhere the configuration does not name).
 */
import * as cjson from "cjson.safe";
import * as consumers from "../../lib/consumers";
import type { RedisConf } from "../../lib/redis/schema";
import { configuredRedis } from "./cache";
import * as store from "./store";
import type { KeySummary } from "./store";

type Params = LuaTable<string, unknown>;
interface Self {
  params: Params;
}
type Endpoint = (this: void, self: Self, db: unknown, helpers: unknown) => void;

const JSON_TYPE = "application/json; charset=utf-8";
/** EXPIRE accepts more, but a key meant to outlive 68 years should have no TTL. */
const MAX_TTL = 2147483647;
const MAX_NAME = 1024;

function fail(this: void, status: number, message: string): never {
  return kong.response.exit(status, { message });
}

function redisFor(this: void, params: Params): RedisConf {
  const confs = configuredRedis();
  if (confs.length === 0) return fail(409, "no enabled redis-key-auth plugin: keys live in the Redis of one");
  const wanted = params.get("redis");
  if (wanted === undefined) return confs[0];
  if (type(wanted) !== "string") return fail(400, "redis: expected HOST:PORT or HOST:PORT/DB");
  for (const conf of confs) {
    if (wanted === `${conf.host}:${conf.port}` || wanted === `${conf.host}:${conf.port}/${conf.database}`) return conf;
  }
  return fail(400, `redis: no enabled redis-key-auth plugin uses ${wanted as string}`);
}

function optionalString(this: void, params: Params, name: string): string | undefined {
  const value = params.get(name);
  if (value === undefined || value === cjson.null || value === "") return undefined;
  if (type(value) !== "string" || (value as string).length > MAX_NAME) return fail(400, `${name}: expected a string of at most ${MAX_NAME} bytes`);
  return value as string;
}

function optionalTtl(this: void, params: Params): number | undefined {
  const raw = params.get("ttl");
  if (raw === undefined || raw === cjson.null || raw === "") return undefined;
  const ttl = type(raw) === "number" || type(raw) === "string" ? tonumber(raw) : undefined;
  if (ttl === undefined || ttl < 1 || ttl > MAX_TTL || ttl !== math.floor(ttl)) return fail(400, `ttl: expected whole seconds between 1 and ${MAX_TTL}`);
  return ttl;
}

/** Refuses a consumer Kong does not know: by consumer_id when given, else by username. */
function checkConsumer(this: void, id: string | undefined, username: string): void {
  const [consumer, err] = id !== undefined ? consumers.byId(id) : consumers.byUsername(username);
  if (err !== undefined) {
    kong.log.err("could not look the consumer up: ", err);
    return fail(500, "could not look the consumer up in Kong");
  }
  if (consumer === undefined) {
    return fail(400, id !== undefined ? `consumer_id: no consumer with id '${id}'` : `consumer: no consumer named '${username}'`);
  }
}

function jsonOrNull(this: void, value: string): unknown {
  return value !== "" ? value : cjson.null;
}

function shown(this: void, s: KeySummary): unknown {
  return {
    id: s.id,
    consumer: { id: jsonOrNull(s.consumer_id), username: s.consumer_username, custom_id: jsonOrNull(s.consumer_custom_id) },
    created_at: s.created_at,
    expires_at: s.expires_at !== 0 ? s.expires_at : cjson.null,
  };
}

const createKey: Endpoint = (self) => {
  const params = self.params;
  const username = optionalString(params, "consumer");
  if (username === undefined) return fail(400, "consumer: required (the consumer's username)");
  const consumerId = optionalString(params, "consumer_id");
  // Kong's consumer ids are uuids.
  if (consumerId !== undefined && !consumers.isUuid(consumerId)) return fail(400, "consumer_id: expected a valid UUID");
  const customId = optionalString(params, "custom_id");
  const ttl = optionalTtl(params);
  const conf = redisFor(params);
  checkConsumer(consumerId, username);
  const [created, err] = store.create(conf, { consumer_username: username, consumer_id: consumerId, consumer_custom_id: customId, ttl });
  if (created === undefined) {
    kong.log.err("could not create a key: ", err);
    return fail(503, "could not store the key in Redis");
  }
  return kong.response.exit(201, {
    id: created.id,
    key: created.key,
    consumer: { id: consumerId ?? cjson.null, username, custom_id: customId ?? cjson.null },
    created_at: created.created_at,
    expires_at: created.expires_at !== 0 ? created.expires_at : cjson.null,
  });
};

const listKeys: Endpoint = (self) => {
  const consumer = optionalString(self.params, "consumer");
  const conf = redisFor(self.params);
  const [keys, err] = store.list(conf, consumer);
  if (keys === undefined) {
    kong.log.err("could not list keys: ", err);
    return fail(503, "could not read the keys from Redis");
  }
  // Written by hand: Debian's cjson would encode an empty list as {}.
  const parts: string[] = [];
  for (const s of keys) parts.push(cjson.encode(shown(s))[0] ?? "null");
  // A new headers table per call: Kong's PDK may write into the one it is given.
  return kong.response.exit(200, `{"data":[${table.concat(parts, ",")}],"next":null}`, { "Content-Type": JSON_TYPE });
};

const revokeKey: Endpoint = (self) => {
  const keyOrId = self.params.get("key_or_id");
  if (type(keyOrId) !== "string" || keyOrId === "") return fail(404, "Not found");
  const conf = redisFor(self.params);
  const [revoked, err] = store.revoke(conf, keyOrId as string);
  if (revoked === undefined) {
    kong.log.err("could not revoke a key: ", err);
    return fail(503, "could not revoke the key in Redis");
  }
  if (revoked === false) return fail(404, "Not found");
  return kong.response.exit(204);
};

const api = {
  "/redis-key-auth/keys": { GET: listKeys, POST: createKey },
  "/redis-key-auth/keys/:key_or_id": { DELETE: revokeKey },
};

export = api;

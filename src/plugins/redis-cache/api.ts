/**
 * Admin API of redis-cache (Kong's api.lua shape), after Kong proxy-cache's
 * `/proxy-cache` endpoints:
 *
 *   DELETE /redis-cache              drop every entry, in O(1) (a new generation per Redis)
 *   DELETE /redis-cache/:cache_key   drop one entry (the X-Cache-Key of a response)
 *
 * Each acts on every Redis that an enabled redis-cache plugin uses; when one of them
 * fails, the others are still purged and the answer is 500 naming the failure. Entries copied into
 * a worker's L1 are dropped at once in the worker that serves the Admin API request and
 * within l1_ttl in the others (and on other nodes).
 */
import * as client from "../../lib/redis/client";
import type { RedisConf } from "../../lib/redis/schema";
import { PLUGIN_NAME, type Conf } from "./conf";
import { configs, deleteL1, flushL1 } from "./state";
import * as storage from "./storage";

interface ApiSelf {
  params: LuaTable<string, unknown>;
}

/** Kong's DAO iterator, when the Admin API runs in real Kong with a database. */
interface PluginsDao {
  each(this: PluginsDao): LuaIterable<LuaMultiReturn<[{ name: string; enabled?: boolean; config: Conf } | undefined, string | undefined]>>;
}

/** Every enabled configuration: from `configure`, else (Kong with a database) from the DAO. */
function enabledConfigs(this: void): Conf[] {
  const known = configs();
  if (known.length > 0) return known;
  const out: Conf[] = [];
  const db = (kong as unknown as { db?: { plugins?: PluginsDao } }).db;
  if (db?.plugins === undefined) return out;
  for (const [plugin] of db.plugins.each()) {
    if (plugin !== undefined && plugin.name === PLUGIN_NAME && plugin.enabled !== false) out.push(plugin.config);
  }
  return out;
}

/** The distinct Redis endpoints (pool names) of the enabled configurations. */
function redisTargets(this: void): RedisConf[] {
  const seen = new LuaTable<string, boolean>();
  const out: RedisConf[] = [];
  for (const conf of enabledConfigs()) {
    const name = client.poolName(conf.redis);
    if (!seen.has(name)) {
      seen.set(name, true);
      out.push(conf.redis);
    }
  }
  return out;
}

const NOT_CONFIGURED = { message: `no ${PLUGIN_NAME} plugin is enabled` };

/** Every Redis is tried; a failure is reported after the others were done. */
function failed(this: void, errors: string[]): never {
  return kong.response.exit(500, { message: `could not purge the cache: ${table.concat(errors, "; ")}` });
}

function purgeAll(this: void): never {
  const targets = redisTargets();
  if (targets.length === 0) return kong.response.exit(404, NOT_CONFIGURED);
  const errors: string[] = [];
  for (const redis of targets) {
    const [, err] = storage.flush(redis);
    if (err !== undefined) errors.push(err);
  }
  flushL1();
  if (errors.length > 0) return failed(errors);
  return kong.response.exit(204);
}

function purgeOne(this: void, self: ApiSelf): never {
  const cacheKey = self.params.get("cache_key");
  // Keys are 64 lower-case hex digits; anything else cannot be in the cache.
  if (type(cacheKey) !== "string" || string.find(cacheKey as string, "^%x+$")[0] === undefined || (cacheKey as string).length !== 64) {
    return kong.response.exit(404, { message: "Not found" });
  }
  const targets = redisTargets();
  if (targets.length === 0) return kong.response.exit(404, NOT_CONFIGURED);
  const key = string.lower(cacheKey as string);
  let found = false;
  const errors: string[] = [];
  for (const redis of targets) {
    const [existed, err] = storage.purge(redis, key);
    if (err !== undefined) errors.push(err);
    if (existed === true) found = true;
  }
  deleteL1(key);
  if (errors.length > 0) return failed(errors);
  if (!found) return kong.response.exit(404, { message: "Not found" });
  return kong.response.exit(204);
}

const api = {
  "/redis-cache": {
    DELETE: (self: ApiSelf) => purgeAll(),
  },
  "/redis-cache/:cache_key": {
    DELETE: (self: ApiSelf) => purgeOne(self),
  },
};

export = api;

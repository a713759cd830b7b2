/**
 * The Redis of each enabled redis-usage instance, as Kong's `configure` reports them: the
 * Admin API reads and writes only there (it never connects anywhere the configuration
 * does not name).
 */
import { poolName } from "../../lib/redis/client";
import type { RedisConf } from "../../lib/redis/schema";
import type { Conf } from "./conf";

let configured: RedisConf[] = [];

export function configure(this: void, confs: Conf[]): void {
  const seen = new LuaTable<string, boolean>();
  const ordered: RedisConf[] = [];
  for (const conf of confs) {
    const name = poolName(conf.redis);
    if (!seen.has(name)) {
      seen.set(name, true);
      ordered.push(conf.redis);
    }
  }
  configured = ordered;
}

export function configuredRedis(this: void): RedisConf[] {
  return configured;
}

export function poolOf(this: void, conf: Conf): string {
  return poolName(conf.redis);
}

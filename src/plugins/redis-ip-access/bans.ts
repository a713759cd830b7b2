/**
 * Automatic bans: the log phase counts, per worker, the responses with `ban.statuses`
 * each client got, and a timer sends them in batches (one script call per client, in one
 * pipeline per Redis and list) to the shared counter. The call that crosses the
 * threshold adds the client to `ban.list` for `ban.duration` seconds and publishes the
 * change, so every node denies it; that node alone logs the ban, once.
 */
import * as client from "../../lib/redis/client";
import { logThrottled } from "../../lib/redis/fault";
import type { RedisConf } from "../../lib/redis/schema";
import { key, part } from "../../lib/keys";
import { CHANNEL } from "./store";

const PLUGIN = "redis-ip-access";
const LOG_TOPIC = "redis-ip-access:bans";
/** Seconds a worker gathers counts before sending them. */
const FLUSH_DELAY = 0.1;
/** Clients per batch and worker; more wait for the next one (bounded memory under a flood). */
const MAX_PENDING = 10000;

export interface BanConf {
  statuses: number[];
  threshold: number;
  window: number;
  duration: number;
  list: string;
}

interface Batch {
  redis: RedisConf;
  ban: BanConf;
  counts: LuaTable<string, number>;
  size: number;
}

let batches = new LuaTable<string, Batch>();
let pending = 0;
let scheduled = false;

function flush(this: void, premature: boolean): void {
  scheduled = false;
  if (premature) return;
  const current = batches;
  batches = new LuaTable();
  pending = 0;
  for (const [, batch] of pairs(current)) {
    const ban = batch.ban;
    const tag = part(ban.list);
    const calls: client.Call[] = [];
    const addresses: string[] = [];
    const now = math.floor(ngx.now() * 1000);
    const reason = `${ban.threshold} responses with status ${table.concat(ban.statuses, "/")} within ${ban.window} s`;
    for (const [address, count] of pairs(batch.counts)) {
      addresses.push(address);
      calls.push({
        script: "ip-access-hit",
        keys: [key(PLUGIN, tag, "hits", part(address)), key(PLUGIN, tag, "entries"), key(PLUGIN, tag, "reasons"), key(PLUGIN, tag, "version")],
        args: [count, ban.window * 1000, ban.threshold, now + ban.duration * 1000, `auto-ban: ${reason}`, now, CHANNEL, ban.list, address],
      });
    }
    const [replies, err] = client.pipeline(batch.redis, calls);
    if (replies === undefined) {
      logThrottled(LOG_TOPIC, `could not count responses for bans (${addresses.length} clients dropped): ${err}`);
      continue;
    }
    for (let i = 0; i < replies.length; i++) {
      const reply = replies[i] as unknown as [number | false, unknown];
      if (reply[0] === false) logThrottled(LOG_TOPIC, `ban script failed: ${tostring(reply[1])}`);
      else if (reply[0] === 1) ngx.log(ngx.WARN, `[kong] [${PLUGIN}] banned ${addresses[i]} for ${ban.duration} s in list '${ban.list}': ${reason}`);
    }
  }
}

/** Log phase: counts this response when its status is one of ban.statuses. */
export function count(this: void, redis: RedisConf, ban: BanConf, statuses: LuaTable<number, boolean>, status: number, address: string): void {
  if (statuses.get(status) !== true) return;
  const id = `${client.poolName(redis)}\0${ban.list}\0${ban.threshold}\0${ban.window}\0${ban.duration}`;
  let batch = batches.get(id);
  if (batch === undefined) {
    batch = { redis, ban, counts: new LuaTable(), size: 0 };
    batches.set(id, batch);
  }
  const before = batch.counts.get(address);
  if (before === undefined) {
    if (pending >= MAX_PENDING) return;
    pending++;
  }
  batch.counts.set(address, (before ?? 0) + 1);
  if (!scheduled) {
    const [ok, err] = ngx.timer.at(FLUSH_DELAY, flush);
    if (ok !== undefined) scheduled = true;
    else logThrottled(LOG_TOPIC, `could not schedule the ban counter: ${err}`);
  }
}

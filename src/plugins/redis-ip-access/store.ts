/**
 * redis-ip-access's shared lists in Redis (docs/redis-keys.md): per list, a zset of
 * entries scored by expiry, a hash of reasons and a version, under the list's own hash
 * tag; every change goes through one script that bumps the version and publishes the
 * list's name on CHANNEL. The Node CLI (src/cli/ip.ts) uses the same layout and scripts.
 */
import * as client from "../../lib/redis/client";
import type { RedisConf } from "../../lib/redis/schema";
import { key, part } from "../../lib/keys";

const PLUGIN = "redis-ip-access";

/** Where list changes are announced; the message is the list's name. */
export const CHANNEL = "krs:redis-ip-access:v1:changes";

function listKeys(this: void, list: string): string[] {
  const tag = part(list);
  return [key(PLUGIN, tag, "entries"), key(PLUGIN, tag, "reasons"), key(PLUGIN, tag, "version")];
}

export function versionKey(this: void, list: string): string {
  return key(PLUGIN, part(list), "version");
}

/** One list as of one version: entries with their expiry (unix ms, 0 = never) and, when asked, reasons. */
export interface Snapshot {
  version: string;
  entries: string[];
  expires: number[];
  reasons: string[];
}

function nowMs(this: void): number {
  return math.floor(ngx.now() * 1000);
}

export function load(this: void, conf: RedisConf, list: string, withReasons: boolean): LuaMultiReturn<[Snapshot | undefined, string | undefined]> {
  const [reply, err] = client.script(conf, { script: "ip-access-load", keys: listKeys(list), args: [nowMs(), withReasons ? "1" : "0"] });
  if (reply === undefined || reply === false) return $multi(undefined, err ?? "redis error");
  const r = reply as unknown as [string, string[], string[]];
  const flat = r[1];
  const entries: string[] = [];
  const expires: number[] = [];
  for (let i = 0; i < flat.length; i += 2) {
    entries.push(flat[i]);
    expires.push(tonumber(flat[i + 1]) ?? 0);
  }
  return $multi({ version: r[0], entries, expires, reasons: r[2] }, undefined);
}

/** The list's current version ("" when it has none): the periodic check. */
export function version(this: void, conf: RedisConf, list: string): LuaMultiReturn<[string | undefined, string | undefined]> {
  const [reply, err] = client.command(conf, "get", versionKey(list));
  if (reply === undefined || reply === false) return $multi(undefined, err ?? "redis error");
  return $multi(type(reply) === "string" ? (reply as unknown as string) : "", undefined);
}

/** Adds or replaces an entry (validated by the caller); ttl in seconds, 0 = never. Returns whether it is new. */
export function add(this: void, conf: RedisConf, list: string, entry: string, ttl: number, reason: string): LuaMultiReturn<[boolean | undefined, string | undefined]> {
  const now = nowMs();
  const expiresAt = ttl > 0 ? now + ttl * 1000 : 0;
  const [reply, err] = client.script(conf, { script: "ip-access-add", keys: listKeys(list), args: [entry, expiresAt, reason, now, CHANNEL, list] });
  if (reply === undefined || reply === false) return $multi(undefined, err ?? "redis error");
  return $multi((reply as unknown as [number, string])[0] === 1, undefined);
}

/** Removes an entry; false when the list had no such live entry. */
export function remove(this: void, conf: RedisConf, list: string, entry: string): LuaMultiReturn<[boolean | undefined, string | undefined]> {
  const [reply, err] = client.script(conf, { script: "ip-access-remove", keys: listKeys(list), args: [entry, nowMs(), CHANNEL, list] });
  if (reply === undefined || reply === false) return $multi(undefined, err ?? "redis error");
  return $multi((reply as unknown as [number, string])[0] === 1, undefined);
}

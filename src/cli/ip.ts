/**
 * `krs ip`: the shared lists of the redis-ip-access plugin, managed straight in Redis.
 *
 * Same layout and scripts as the plugin (src/plugins/redis-ip-access/store.ts,
 * redis-lua/ip-access-*.lua, docs/redis-keys.md): every change bumps the list's version
 * and publishes its name from inside the script, so every gateway worker reloads it.
 * `deny` and `allow` say what the list is for; whether a list allows or denies is decided
 * by the plugin config that names it (redis_allow_lists / redis_deny_lists).
 */
import { isIP } from "node:net";
import type { Cluster, Redis } from "ioredis";
import { parseArgs, UsageError } from "./args.js";
import { defineScripts, openRedis, REDIS_FLAGS, REDIS_TARGET_HELP, REDIS_TARGET_USAGE, redisTargetFromFlags } from "./redis.js";

export const CHANNEL = "krs:redis-ip-access:v1:changes";
const LIST_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const MAX_TTL = 2147483;

/** The list's keys; a valid list name is its own key part (keys.part keeps it as-is). */
export function listKeys(list: string): [string, string, string] {
  const prefix = `krs:redis-ip-access:v1:{${list}}`;
  return [`${prefix}:entries`, `${prefix}:reasons`, `${prefix}:version`];
}

export class IpListError extends Error {}

/** An address or CIDR as the plugin accepts it; throws naming the value otherwise. */
export function checkEntry(entry: string): string {
  const slash = entry.indexOf("/");
  const addr = slash >= 0 ? entry.slice(0, slash) : entry;
  if (addr.includes("%")) throw new IpListError(`invalid ip or cidr range: '${entry}' (zone ids are not allowed)`);
  const family = isIP(addr);
  if (family === 0) throw new IpListError(`invalid ip or cidr range: '${entry}'`);
  if (slash >= 0) {
    const max = family === 4 ? 32 : 128;
    const prefix = entry.slice(slash + 1);
    // No leading zero, as the gateway (and Kong) refuse one.
    if (!/^(0|[1-9]\d{0,2})$/.test(prefix) || Number(prefix) > max) throw new IpListError(`invalid ip or cidr range: '${entry}' (the prefix length must be 0-${max})`);
  }
  return entry;
}

export function checkListName(list: string): string {
  if (!LIST_NAME.test(list)) throw new IpListError(`invalid list name: '${list}' (letters, digits, '.', '_' and '-', at most 64)`);
  return list;
}

/** "3600", "90s", "15m", "1h", "2d" → seconds. */
export function parseTtl(value: string): number {
  const m = /^(\d+)([smhd]?)$/.exec(value);
  const seconds = m ? Number(m[1]) * { "": 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2] as "" | "s" | "m" | "h" | "d"] : NaN;
  if (!(seconds >= 1 && seconds <= MAX_TTL)) throw new UsageError(`--ttl: expected a duration like 3600, 90s, 15m, 1h or 2d (at most ${MAX_TTL} s), got '${value}'`);
  return seconds;
}

type Reply = [number, string];
interface IpScripts {
  ipAccessAdd(...keysAndArgs: (string | number)[]): Promise<Reply>;
  ipAccessRemove(...keysAndArgs: (string | number)[]): Promise<Reply>;
  ipAccessLoad(...keysAndArgs: (string | number)[]): Promise<[string, string[], string[]]>;
}
export type IpRedis = (Redis | Cluster) & IpScripts;

export function withScripts<R extends Redis | Cluster>(redis: R): R & IpScripts {
  return defineScripts<IpScripts, R>(redis, { ipAccessAdd: "ip-access-add", ipAccessRemove: "ip-access-remove", ipAccessLoad: "ip-access-load" });
}

/** Adds or replaces an entry; ttl in seconds (0 = never). True when it is new. */
export async function addEntry(redis: IpRedis, list: string, entry: string, ttl = 0, reason = ""): Promise<boolean> {
  const now = Date.now();
  const [added] = await redis.ipAccessAdd(...listKeys(checkListName(list)), checkEntry(entry), ttl > 0 ? now + ttl * 1000 : 0, reason, now, CHANNEL, list);
  return added === 1;
}

export async function removeEntry(redis: IpRedis, list: string, entry: string): Promise<boolean> {
  const [removed] = await redis.ipAccessRemove(...listKeys(checkListName(list)), checkEntry(entry), Date.now(), CHANNEL, list);
  return removed === 1;
}

export interface ListEntry {
  cidr: string;
  /** Unix seconds (fraction kept), or null: never. */
  expires_at: number | null;
  reason: string | null;
}

export async function listEntries(redis: IpRedis, list: string): Promise<ListEntry[]> {
  const [, flat, reasons] = await redis.ipAccessLoad(...listKeys(checkListName(list)), Date.now(), "1");
  const out: ListEntry[] = [];
  for (let i = 0; i < flat.length; i += 2) {
    const expires = Number(flat[i + 1]);
    const reason = reasons[i / 2] ?? "";
    out.push({ cidr: flat[i], expires_at: expires !== 0 ? expires / 1000 : null, reason: reason !== "" ? reason : null });
  }
  return out;
}

const USAGE = `usage:
  krs ip deny|allow add LIST CIDR [--ttl 1h] [--reason TEXT] [REDIS]
  krs ip deny|allow remove LIST CIDR [REDIS]
  krs ip deny|allow list LIST [--json] [REDIS]

CIDR: an IPv4/IPv6 address or CIDR. --ttl: 3600, 90s, 15m, 1h or 2d (default: no expiry).
REDIS: ${REDIS_TARGET_USAGE}
${REDIS_TARGET_HELP}`;

export async function ipCommand(argv: string[]): Promise<number> {
  const [kind, sub, ...rest] = argv;
  if (kind === undefined || kind === "help" || kind === "--help") {
    console.log(USAGE);
    return kind === undefined ? 2 : 0;
  }
  if (kind !== "deny" && kind !== "allow") throw new UsageError(`ip: expected deny or allow, got '${kind}'\n${USAGE}`);
  if (sub !== "add" && sub !== "remove" && sub !== "list") throw new UsageError(`ip ${kind}: unknown subcommand '${sub ?? ""}'\n${USAGE}`);
  const args = parseArgs(rest, [...(sub === "add" ? ["ttl", "reason"] : []), ...REDIS_FLAGS], sub === "list" ? ["json"] : []);
  const wanted = sub === "list" ? 1 : 2;
  if (args.positional.length !== wanted) throw new UsageError(`ip ${kind} ${sub}: give ${sub === "list" ? "LIST" : "LIST CIDR"}`);
  const [list, cidr] = args.positional;
  try {
    checkListName(list);
    if (cidr !== undefined) checkEntry(cidr);
  } catch (e) {
    if (e instanceof IpListError) throw new UsageError(e.message);
    throw e;
  }
  const ttlFlag = args.flags.get("ttl");
  const ttl = ttlFlag !== undefined ? parseTtl(ttlFlag) : 0;

  // An unreachable Redis is reported in one line by main (RedisConnectError).
  const redis: IpRedis = withScripts(await openRedis(redisTargetFromFlags(args.flags)));
  try {
    if (sub === "add") {
      const added = await addEntry(redis, list, cidr, ttl, args.flags.get("reason") ?? "");
      console.log(`${added ? "added" : "updated"} ${cidr} in ${kind} list ${list}${ttl > 0 ? ` for ${ttl} s` : ""}`);
      return 0;
    }
    if (sub === "remove") {
      if (!(await removeEntry(redis, list, cidr))) {
        console.error(`krs: ${cidr} is not in list ${list}`);
        return 1;
      }
      console.log(`removed ${cidr} from ${kind} list ${list}`);
      return 0;
    }
    const entries = await listEntries(redis, list);
    if (args.switches.has("json")) {
      console.log(JSON.stringify(entries, null, 2));
    } else if (entries.length === 0) {
      console.log(`list ${list} is empty`);
    } else {
      for (const e of entries) console.log(`${e.cidr}\t${e.expires_at !== null ? new Date(e.expires_at * 1000).toISOString() : "never"}\t${e.reason ?? ""}`);
    }
    return 0;
  } finally {
    redis.disconnect();
  }
}

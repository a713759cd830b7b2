/**
 * redis-ip-access: Kong ip-restriction's behaviour (allow, deny, status, message, deny
 * before allow, priority 990) on the client address Kong's PDK reports
 * (kong.client.get_forwarded_ip: the socket peer, or what a trusted_ips proxy forwarded).
 *
 * Hot path: one cached address parse and one lookup per list, against matchers compiled once
 * per config table; no Redis.
 */
import * as facts from "../../lib/facts";
import * as fault from "../../lib/redis/fault";
import type { RedisConf } from "../../lib/redis/schema";
import { SUITE_VERSION } from "../../lib/version";
import { compileList, contains, parseAddress } from "./ip";
import type { Matcher } from "./ip";
import * as lrucache from "resty.lrucache";
import * as bans from "./bans";
import type { BanConf } from "./bans";
import { configure, matcherOf, stateFor } from "./lists";
import type { ListState } from "./lists";

const PLUGIN = "redis-ip-access";

const ERR_NO_ADDRESS = "Cannot identify the client IP address, unix domain sockets are not supported.";
const DEFAULT_STATUS = 403;

interface IpAccessConf {
  allow?: string[];
  deny?: string[];
  status?: number;
  message?: string;
  redis_allow_lists?: string[];
  redis_deny_lists?: string[];
  sync_interval: number;
  ban: BanConf;
  fault_tolerant: boolean;
  redis: RedisConf;
  __plugin_id?: string;
  plugin_instance_name?: string;
}

/** What each config table needs on every request, compiled once per table. */
interface Prepared {
  allow?: Matcher;
  deny?: Matcher;
  allowLists?: ListState[];
  denyLists?: ListState[];
  status: number;
  message?: string;
  /** ban.statuses as a set; undefined when bans are off. */
  banStatuses?: LuaTable<number, boolean>;
}
const prepared = setmetatable(new LuaTable<IpAccessConf, Prepared>(), { __mode: "k" });

/** A list as Kong hands it over: undefined when unset (nil or ngx.null) or empty. */
function nonEmpty(this: void, list: string[] | undefined): string[] | undefined {
  return type(list) === "table" && list!.length > 0 ? list : undefined;
}

function states(this: void, conf: IpAccessConf, names: string[] | undefined): ListState[] | undefined {
  const lists = nonEmpty(names);
  if (lists === undefined) return undefined;
  const out: ListState[] = [];
  for (const name of lists) out.push(stateFor(conf.redis, name, conf.sync_interval));
  return out;
}

/** The deny lists, with the ban list when bans are on (what bans add must deny). */
function withBanList(this: void, conf: IpAccessConf): string[] | undefined {
  const names = nonEmpty(conf.redis_deny_lists);
  const ban = conf.ban;
  if (type(ban) !== "table" || ban.threshold <= 0) return names;
  const out: string[] = [];
  if (names !== undefined) for (const name of names) if (name !== ban.list) out.push(name);
  out.push(ban.list);
  return out;
}

function banStatuses(this: void, ban: BanConf | undefined): LuaTable<number, boolean> | undefined {
  if (ban === undefined || type(ban) !== "table" || ban.threshold <= 0) return undefined;
  const set = new LuaTable<number, boolean>();
  for (const status of ban.statuses) set.set(status, true);
  return set;
}

/** Parsed client addresses: most requests come from addresses seen a moment ago. */
const [addresses] = lrucache.new<string>(10000);

function binaryAddress(this: void, text: string): string | undefined {
  let bin = addresses!.get(text)[0];
  if (bin === undefined) {
    bin = parseAddress(text);
    if (bin !== undefined) addresses!.set(text, bin);
  }
  return bin;
}

function prepare(this: void, conf: IpAccessConf): Prepared {
  let p = prepared.get(conf);
  if (p === undefined) {
    const allow = nonEmpty(conf.allow);
    const deny = nonEmpty(conf.deny);
    p = {
      allow: allow !== undefined ? compileList(allow) : undefined,
      deny: deny !== undefined ? compileList(deny) : undefined,
      allowLists: states(conf, conf.redis_allow_lists),
      denyLists: states(conf, withBanList(conf)),
      banStatuses: banStatuses(conf.ban),
      status: type(conf.status) === "number" ? conf.status! : DEFAULT_STATUS,
      message: type(conf.message) === "string" ? conf.message : undefined,
    };
    prepared.set(conf, p);
  }
  return p;
}

function usesRedis(this: void, conf: IpAccessConf): boolean {
  return nonEmpty(conf.redis_allow_lists) !== undefined || nonEmpty(conf.redis_deny_lists) !== undefined || (conf.ban !== undefined && conf.ban.threshold > 0);
}

/** `reason`: which rule refused ("deny", "deny_list: <name>", "not_allowed"), for the request facts. */
function refuse(this: void, p: Prepared, address: string, reason: string): never {
  facts.access(PLUGIN, false, reason);
  // A refusal of ours is not the client's misbehaviour: it must not count towards (or
  // renew) a ban.
  ngx.ctx.krs_ip_access_refused = true;
  const message = p.message ?? `IP address not allowed: ${address}`;
  kong.log.warn(message);
  return kong.response.error(p.status, message);
}

/** Whether deny list `state` holds `bin`; a list this worker never loaded is a Redis failure. */
function inDenyList(this: void, conf: IpAccessConf, state: ListState, bin: string): boolean {
  const [m, err] = matcherOf(state);
  if (m === undefined) {
    fault.onRedisFailure(PLUGIN, conf, `deny list '${state.list}' never loaded: ${err}`);
    return false;
  }
  return contains(m, bin);
}

const handler: KongPluginHandler<IpAccessConf> = {
  PRIORITY: 990,
  VERSION: SUITE_VERSION,

  configure(configs) {
    const redisConfs: RedisConf[] = [];
    // Only instances that keep something in Redis: a static-only one (default Redis
    // 127.0.0.1:6379) would otherwise make the Admin API talk to a Redis no list uses.
    if (configs !== undefined) for (const conf of configs) if (usesRedis(conf)) redisConfs.push(conf.redis);
    configure(redisConfs);
  },

  access(conf) {
    facts.enter(PLUGIN);
    const address = kong.client.get_forwarded_ip();
    const bin = binaryAddress(address);
    if (bin === undefined) return kong.response.error(DEFAULT_STATUS, ERR_NO_ADDRESS);
    const p = prepare(conf);
    if (p.deny !== undefined && contains(p.deny, bin)) return refuse(p, address, "deny");
    const denyLists = p.denyLists;
    if (denyLists !== undefined) {
      // The first list outside the loop: with one list, the usual case, no loop runs, and a
      // loop run once per request would keep LuaJIT from compiling the access phase whole.
      if (inDenyList(conf, denyLists[0], bin)) return refuse(p, address, `deny_list: ${denyLists[0].list}`);
      for (let i = 1; i < denyLists.length; i++) {
        if (inDenyList(conf, denyLists[i], bin)) return refuse(p, address, `deny_list: ${denyLists[i].list}`);
      }
    }
    if (p.allow === undefined && p.allowLists === undefined) return;
    if (p.allow !== undefined && contains(p.allow, bin)) return;
    // A list this worker never loaded is as if absent: it must not switch off the static
    // allow or a loaded list by letting everyone through.
    let consulted = p.allow !== undefined;
    let unloaded: string | undefined;
    if (p.allowLists !== undefined) {
      for (const state of p.allowLists) {
        const [m, err] = matcherOf(state);
        if (m === undefined) unloaded = unloaded ?? `allow list '${state.list}' never loaded: ${err}`;
        else {
          consulted = true;
          if (contains(m, bin)) return;
        }
      }
    }
    // fault_tolerant false: an unloaded list might have held this client, so the answer is
    // an outage (500), never a refusal that looks final. fault_tolerant true: refuse if any
    // allow source could be consulted; let through only when none could.
    if (unloaded !== undefined) {
      fault.onRedisFailure(PLUGIN, conf, unloaded);
      if (!consulted) return;
    }
    return refuse(p, address, "not_allowed");
  },

  log(conf) {
    const p = prepared.get(conf);
    const statuses = p !== undefined ? p.banStatuses : banStatuses(conf.ban);
    if (statuses === undefined || ngx.ctx.krs_ip_access_refused === true) return;
    const forwarded = kong.client.get_forwarded_ip();
    const bin = binaryAddress(forwarded);
    if (bin === undefined) return;
    // One client, one count and one ban: a mapped ::ffff:a.b.c.d is counted as a.b.c.d.
    const address = bin.length === 4 ? `${string.byte(bin, 1)}.${string.byte(bin, 2)}.${string.byte(bin, 3)}.${string.byte(bin, 4)}` : forwarded;
    bans.count(conf.redis, conf.ban, statuses, kong.response.get_status(), address);
  },
};

export = handler;

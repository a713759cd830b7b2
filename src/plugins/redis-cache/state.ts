/**
 * Per-worker state of redis-cache: what each configuration needs on every request,
 * worked out once per config table (lookup sets, the content-type matcher, the
 * encryption key, the L1 cache), and the list of enabled configurations the Admin API
 * uses (from the handler's `configure`).
 */
import * as lrucache from "resty.lrucache";
import * as crypto from "../../lib/crypto";
import type { Cached } from "./codec";
import type { Conf } from "./conf";
import { typeMatcher, type TypeMatcher } from "./policy";

export interface Prepared {
  methods: LuaTable<string, boolean>;
  codes: LuaTable<number, boolean>;
  types: TypeMatcher;
  /** Lower-case, sorted. */
  varyHeaders: string[];
  /** Sorted; undefined: every query argument. */
  varyQuery: string[] | undefined;
  /** undefined when l1_ttl is 0. */
  l1: LruCache<Cached> | undefined;
  l1Ttl: number;
  /** 32-byte AES key (SHA-256 of encryption_key), or undefined. */
  aesKey: string | undefined;
  ttlMs: number;
  lockMs: number;
  /** refresh_ahead as the string the lookup script reads. */
  refreshArg: string;
  refreshFraction: number;
  slidingArg: string;
}

/** Weak keys: a replaced configuration's state (and its L1) goes with its table. */
const prepared = setmetatable(new LuaTable<Conf, Prepared>(), { __mode: "k" });

/** Kong hands unset fields over as ngx.null, the local gateway as nil. */
export function isSet<T>(this: void, value: T | NgxNull | undefined): value is T {
  return value !== undefined && value !== ngx.null;
}

function sortedLower(this: void, list: string[] | undefined): string[] {
  const out: string[] = [];
  if (list === undefined) return out;
  const seen = new LuaTable<string, boolean>();
  for (const item of list) {
    const name = string.lower(item);
    if (!seen.has(name)) {
      seen.set(name, true);
      out.push(name);
    }
  }
  table.sort(out);
  return out;
}

function sortedUnique(this: void, list: string[]): string[] {
  const out: string[] = [];
  const seen = new LuaTable<string, boolean>();
  for (const item of list) {
    if (!seen.has(item)) {
      seen.set(item, true);
      out.push(item);
    }
  }
  table.sort(out);
  return out;
}

export function prepare(this: void, conf: Conf): Prepared {
  const cached = prepared.get(conf);
  if (cached !== undefined) return cached;
  const methods = new LuaTable<string, boolean>();
  for (const m of conf.request_method) methods.set(m, true);
  const codes = new LuaTable<number, boolean>();
  for (const c of conf.response_code) codes.set(c, true);
  let l1: LruCache<Cached> | undefined;
  if (conf.l1_ttl > 0) {
    const [lru, err] = lrucache.new<Cached>(conf.l1_size);
    if (lru === undefined) error("could not create the L1 cache: " + tostring(err));
    l1 = lru;
  }
  const key = conf.encryption_key;
  const state: Prepared = {
    methods,
    codes,
    types: typeMatcher(conf.content_type),
    varyHeaders: sortedLower(isSet(conf.vary_headers) ? conf.vary_headers : undefined),
    varyQuery: isSet(conf.vary_query_params) && conf.vary_query_params.length > 0 ? sortedUnique(conf.vary_query_params) : undefined,
    l1,
    l1Ttl: conf.l1_ttl,
    aesKey: isSet(key) ? crypto.sha256(key) : undefined,
    ttlMs: conf.cache_ttl * 1000,
    lockMs: conf.lock_timeout,
    refreshArg: string.format("%.6f", conf.refresh_ahead),
    refreshFraction: conf.refresh_ahead,
    slidingArg: conf.sliding_ttl ? "1" : "0",
  };
  prepared.set(conf, state);
  return state;
}

/** Drops every L1 entry of this worker (all configurations). */
export function flushL1(this: void): void {
  for (const [, state] of pairs(prepared)) state.l1?.flush_all();
}

/** Drops one key from every L1 of this worker. */
export function deleteL1(this: void, key: string): void {
  for (const [, state] of pairs(prepared)) state.l1?.delete(key);
}

let enabled: Conf[] = [];

/** Called from the handler's `configure`: every enabled redis-cache configuration. */
export function setConfigs(this: void, configs: Conf[] | undefined): void {
  enabled = configs ?? [];
}

export function configs(this: void): Conf[] {
  return enabled;
}

/**
 * Per-worker state of redis-cache: what each configuration needs on every request,
 * worked out once per configuration (lookup sets, the content-type matcher, the
 * encryption keys, the L1 cache), and the list of enabled configurations the Admin API
 * uses (from the handler's `configure`).
 *
 * Kong hands over new config tables whenever any entity changes (another route, another
 * plugin), so state is kept by a fingerprint of the configuration's values, not by its
 * table: an instance whose configuration did not change keeps its L1 entries.
 */
import * as crypto from "../../lib/crypto";
import type { Cached, Keyring } from "./codec";
import type { Conf } from "./conf";
import * as l1cache from "./l1";
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
  l1: l1cache.L1<Cached> | undefined;
  l1Ttl: number;
  /** encryption_key and decryption_keys as AES keys, or undefined without encryption_key. */
  keyring: Keyring | undefined;
  ttlMs: number;
  lockMs: number;
  /** refresh_ahead as the string the lookup script reads. */
  refreshArg: string;
  refreshFraction: number;
  slidingArg: string;
  /** The entry kinds this configuration reads, as the lookup script takes them (ARGV[6]). */
  readableArg: string;
}

/** Weak keys: the fast path from a config table to its state. */
let prepared = setmetatable(new LuaTable<Conf, Prepared>(), { __mode: "k" });
/** Every state by its configuration's fingerprint; pruned to the enabled ones by setConfigs. */
let byFingerprint = new LuaTable<string, Prepared>();

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

/** Deterministic text of a config value; fields Kong adds ("__key__", "__seq__") and "$refs" left out. */
function serialize(this: void, value: unknown, out: string[]): void {
  const t = type(value);
  if (t === "table") {
    const record = value as LuaTable<AnyNotNil, unknown>;
    const names: string[] = [];
    const byName = new LuaTable<string, unknown>();
    for (const [k, v] of pairs(record)) {
      const name = `${type(k)}:${tostring(k)}`;
      const first = type(k) === "string" ? string.sub(k as string, 1, 1) : "";
      if (first === "_" || first === "$") continue;
      names.push(name);
      byName.set(name, v);
    }
    table.sort(names);
    out.push("{");
    for (const name of names) {
      out.push(`${name.length}:${name}=`);
      serialize(byName.get(name), out);
      out.push(",");
    }
    out.push("}");
  } else if (t === "string") {
    out.push(`s${(value as string).length}:${value as string}`);
  } else {
    out.push(`${t}:${tostring(value)}`);
  }
}

/** SHA-256 of the configuration's values: equal for equal configurations, whatever their tables. */
export function fingerprint(this: void, conf: Conf): string {
  const out: string[] = [];
  serialize(conf, out);
  return crypto.toHex(crypto.sha256(table.concat(out)));
}

/**
 * The AES keys of a configuration: SHA-256 of each secret, sealing with encryption_key.
 * decryption_keys without encryption_key (the first step of turning encryption on):
 * entries are written plain, and sealed ones are read.
 */
function keyringOf(this: void, conf: Conf): Keyring | undefined {
  const secret = conf.encryption_key;
  const extra = conf.decryption_keys;
  const hasExtra = isSet(extra) && extra.length > 0;
  if (!isSet(secret) && !hasExtra) return undefined;
  const keys = new LuaTable<string, string>();
  let sealKey: string | undefined;
  let sealId: string | undefined;
  if (isSet(secret)) {
    sealKey = crypto.sha256(secret);
    sealId = keyId(sealKey);
    keys.set(sealId, sealKey);
  }
  if (hasExtra) {
    for (const other of extra) {
      const aes = crypto.sha256(other);
      keys.set(keyId(aes), aes);
    }
  }
  return { sealId, sealKey, keys };
}

/**
 * What the lookup script may treat as readable: plain entries without encryption_key;
 * encrypted entries without key id (tried under every key) and those sealed under one of
 * its keys when it has any. The script extends and refreshes only these, so an entry this
 * node cannot read expires on its own schedule whatever this node's traffic.
 */
function readableOf(this: void, keyring: Keyring | undefined): string {
  if (keyring === undefined) return "E";
  const kinds = keyring.sealKey === undefined ? ["E", "C"] : ["C"];
  for (const [id] of pairs(keyring.keys)) kinds.push("K" + id);
  return table.concat(kinds, " ");
}

/**
 * The id an entry carries to name the key it is sealed with: 4 bytes of SHA-256 over the
 * AES key (itself SHA-256 of the secret). Anyone holding the ciphertext can already test
 * a guessed secret against it, so the id gives nothing more away.
 */
export function keyId(this: void, aesKey: string): string {
  return crypto.toHex(string.sub(crypto.sha256(aesKey + "\0redis-cache key id"), 1, 4));
}

export function prepare(this: void, conf: Conf): Prepared {
  const cached = prepared.get(conf);
  if (cached !== undefined) return cached;
  const print = fingerprint(conf);
  const same = byFingerprint.get(print);
  if (same !== undefined) {
    prepared.set(conf, same);
    return same;
  }
  if (conf.l1_ttl > 0 && conf.l1_max_bytes < l1cache.maxBytes()) l1cache.setMaxBytes(conf.l1_max_bytes);
  const methods = new LuaTable<string, boolean>();
  for (const m of conf.request_method) methods.set(m, true);
  const codes = new LuaTable<number, boolean>();
  for (const c of conf.response_code) codes.set(c, true);
  const l1 = conf.l1_ttl > 0 ? l1cache.newL1<Cached>(conf.l1_size) : undefined;
  const keyring = keyringOf(conf);
  const state: Prepared = {
    methods,
    codes,
    types: typeMatcher(conf.content_type),
    varyHeaders: sortedLower(isSet(conf.vary_headers) ? conf.vary_headers : undefined),
    varyQuery: isSet(conf.vary_query_params) && conf.vary_query_params.length > 0 ? sortedUnique(conf.vary_query_params) : undefined,
    l1,
    l1Ttl: conf.l1_ttl,
    keyring,
    ttlMs: conf.cache_ttl * 1000,
    lockMs: conf.lock_timeout,
    refreshArg: string.format("%.6f", conf.refresh_ahead),
    refreshFraction: conf.refresh_ahead,
    slidingArg: conf.sliding_ttl ? "1" : "0",
    readableArg: readableOf(keyring),
  };
  prepared.set(conf, state);
  byFingerprint.set(print, state);
  return state;
}

/** Drops every L1 entry of this worker (all configurations). */
export function flushL1(this: void): void {
  for (const [, state] of pairs(byFingerprint)) if (state.l1 !== undefined) l1cache.flush(state.l1);
}

/** Drops one key from every L1 of this worker. */
export function deleteL1(this: void, key: string): void {
  for (const [, state] of pairs(byFingerprint)) if (state.l1 !== undefined) l1cache.del(state.l1, key);
}

let enabled: Conf[] = [];

/**
 * Called from the handler's `configure`: every enabled redis-cache configuration. States
 * of configurations no longer enabled are dropped with their L1 entries (and forgotten by
 * every config table, so that purges reach every L1 still in use); the worker's L1 budget
 * is the smallest l1_max_bytes among the enabled ones that use L1.
 */
export function setConfigs(this: void, configs: Conf[] | undefined): void {
  enabled = configs ?? [];
  const kept = new LuaTable<string, Prepared>();
  prepared = setmetatable(new LuaTable<Conf, Prepared>(), { __mode: "k" });
  let budget: number | undefined;
  for (const conf of enabled) {
    const print = fingerprint(conf);
    const state = byFingerprint.get(print);
    if (state !== undefined) {
      kept.set(print, state);
      prepared.set(conf, state);
    }
    if (conf.l1_ttl > 0 && (budget === undefined || conf.l1_max_bytes < budget)) budget = conf.l1_max_bytes;
  }
  for (const [print, state] of pairs(byFingerprint)) {
    if (!kept.has(print) && state.l1 !== undefined) l1cache.flush(state.l1);
  }
  byFingerprint = kept;
  l1cache.setMaxBytes(budget ?? l1cache.DEFAULT_MAX_BYTES);
}

export function configs(this: void): Conf[] {
  return enabled;
}

/**
 * The shared lists as each worker holds them: one compiled matcher per (Redis, list),
 * so a request costs no Redis round trip.
 *
 * A list is loaded (one script call) the first time a request needs it, then kept fresh
 * by a per-worker timer: it reloads a list at once when the list's subscriber heard of a
 * change (pub/sub, per Redis), and compares the list's version every sync_interval
 * otherwise, so a lost message delays a change by at most sync_interval. Entries with a
 * TTL leave the matcher when they expire, by the worker's own clock (no Redis needed),
 * within one timer tick. While Redis is unreachable the last compiled matcher keeps
 * applying, whatever its age (a blocklist must not lapse with Redis).
 */
import * as client from "../../lib/redis/client";
import { logThrottled } from "../../lib/redis/fault";
import type { RedisConf } from "../../lib/redis/schema";
import { distinct } from "../../lib/redis/pools";
import * as subscriber from "../../lib/redis/subscriber";
import { compile, parseEntry } from "./ip";
import type { Matcher } from "./ip";
import * as store from "./store";

const LOG_TOPIC = "redis-ip-access:lists";
/** Seconds between timer ticks: the lateness of a TTL expiry or a published change. */
const TICK = 0.1;
/** Seconds before a list that failed to load is tried again from the request path. */
const RETRY_AFTER = 1;

export interface ListState {
  list: string;
  pool: string;
  conf: RedisConf;
  /** The change subscriber of the list's Redis. */
  poolState: subscriber.Subscriber;
  /** The shortest sync_interval of the configs that use the list. */
  syncInterval: number;
  /** Undefined until the first successful load. */
  matcher?: Matcher;
  version: string;
  /** The loaded entries, parsed, to recompile without Redis when one expires. */
  firsts: string[];
  lasts: string[];
  expires: number[];
  /** Unix ms of the next expiry among the loaded entries; huge when none. */
  nextExpiry: number;
  /** ngx.now() of the next version check. */
  checkAt: number;
  /** A change was announced: reload on the next tick. */
  dirty: boolean;
  loading: boolean;
  failedAt: number;
  loadedAt: number;
}

const states = new LuaTable<string, ListState>();
const pools = new LuaTable<string, subscriber.Subscriber>();
let ticking = false;
let tickerStarted = false;

function nowMs(this: void): number {
  return math.floor(ngx.now() * 1000);
}

/** Compiles the entries still live at `now`; notes when the next one expires. */
function recompile(this: void, state: ListState, now: number): void {
  const firsts: string[] = [];
  const lasts: string[] = [];
  let next = math.huge;
  for (let i = 0; i < state.firsts.length; i++) {
    const expires = state.expires[i];
    if (expires === 0 || expires > now) {
      firsts.push(state.firsts[i]);
      lasts.push(state.lasts[i]);
      if (expires !== 0 && expires < next) next = expires;
    }
  }
  state.matcher = compile(firsts, lasts);
  state.nextExpiry = next;
}

/** Loads the list from Redis and compiles it; returns the error when Redis failed. */
export function reload(this: void, state: ListState): string | undefined {
  state.loading = true;
  const [snapshot, err] = store.load(state.conf, state.list, false);
  state.loading = false;
  if (snapshot === undefined) {
    state.failedAt = ngx.now();
    return err;
  }
  const firsts: string[] = [];
  const lasts: string[] = [];
  const expires: number[] = [];
  for (let i = 0; i < snapshot.entries.length; i++) {
    const [first, last, parseErr] = parseEntry(snapshot.entries[i]);
    if (first === undefined) {
      logThrottled(LOG_TOPIC, `list '${state.list}': skipping an entry no gateway should have written: ${parseErr}`);
    } else {
      firsts.push(first);
      lasts.push(last!);
      expires.push(snapshot.expires[i]);
    }
  }
  state.firsts = firsts;
  state.lasts = lasts;
  state.expires = expires;
  state.version = snapshot.version;
  state.dirty = false;
  state.loadedAt = ngx.now();
  state.checkAt = ngx.now() + state.syncInterval;
  recompile(state, nowMs());
  return undefined;
}

function checkVersion(this: void, state: ListState): void {
  state.checkAt = ngx.now() + state.syncInterval;
  const [current, err] = store.version(state.conf, state.list);
  if (current === undefined) {
    logThrottled(LOG_TOPIC, `list '${state.list}': version check failed, keeping the lists compiled ${math.floor(ngx.now() - state.loadedAt)} s ago: ${err}`);
    return;
  }
  if (current !== state.version) state.dirty = true;
}

function tick(this: void, premature: boolean): void {
  if (premature || ticking) return;
  ticking = true;
  const [ok, err] = pcall(() => {
    const now = ngx.now();
    for (const [, state] of pairs(states)) {
      if (state.matcher === undefined) continue;
      if (!state.dirty && now >= state.checkAt) checkVersion(state);
      if (state.dirty) {
        const loadErr = reload(state);
        if (loadErr !== undefined) logThrottled(LOG_TOPIC, `list '${state.list}': reload failed, keeping the last compiled one: ${loadErr}`);
      }
      // Independent of the reload: a failed one keeps the list dirty for the whole outage,
      // and its TTL entries must still go on time (from the last snapshot).
      if (nowMs() >= state.nextExpiry) recompile(state, nowMs());
    }
  });
  ticking = false;
  if (!ok) logThrottled(LOG_TOPIC, `list refresh failed: ${tostring(err)}`);
}

function markPool(this: void, pool: string, list: string | undefined): void {
  for (const [, state] of pairs(states)) {
    if (state.pool === pool && (list === undefined || state.list === list)) state.dirty = true;
  }
}

function ensureTimers(this: void, pool: string, conf: RedisConf): subscriber.Subscriber {
  if (!tickerStarted) {
    const [ok, err] = ngx.timer.every(TICK, tick);
    if (ok !== undefined) tickerStarted = true;
    else logThrottled(LOG_TOPIC, `could not start the list refresh timer: ${err}`);
  }
  let changes = pools.get(pool);
  if (changes === undefined) {
    changes = subscriber.create(conf, {
      plugin: "redis-ip-access",
      logTopic: LOG_TOPIC,
      what: "change subscriber",
      channels: [store.CHANNEL],
      // Changes announced while no subscription was up are lost: reload every list.
      onConnected: () => markPool(pool, undefined),
      onMessage: (_channel, list) => markPool(pool, list),
    });
    pools.set(pool, changes);
  }
  subscriber.start(changes);
  return changes;
}

/** The worker's state of a list (created on first use); the handler keeps it per config table. */
export function stateFor(this: void, conf: RedisConf, list: string, syncInterval: number): ListState {
  const pool = client.poolName(conf);
  const id = pool + "\0" + list;
  let state = states.get(id);
  if (state === undefined) {
    const poolState = ensureTimers(pool, conf);
    state = { list, pool, conf, poolState, syncInterval, version: "", firsts: [], lasts: [], expires: [], nextExpiry: math.huge, checkAt: 0, dirty: false, loading: false, failedAt: -math.huge, loadedAt: 0 };
    states.set(id, state);
  } else if (syncInterval < state.syncInterval) {
    state.syncInterval = syncInterval;
  }
  return state;
}

/**
 * The compiled list for a request (access phase), loading it on first use. Returns the
 * matcher, or undefined and the Redis error when this worker never loaded the list.
 * Hot path: two field reads once the list is loaded and its timers run.
 */
export function matcherOf(this: void, state: ListState): LuaMultiReturn<[Matcher | undefined, string | undefined]> {
  const matcher = state.matcher;
  if (matcher !== undefined && tickerStarted && state.poolState.running) return $multi(matcher, undefined);
  state.poolState = ensureTimers(state.pool, state.conf);
  if (state.matcher !== undefined) return $multi(state.matcher, undefined);
  // Another request of this worker is loading it: wait for that load, within the Redis timeout.
  for (let waited = 0; state.loading && waited < state.conf.timeout; waited += 10) ngx.sleep(0.01);
  if (state.matcher !== undefined) return $multi(state.matcher, undefined);
  if (ngx.now() - state.failedAt < RETRY_AFTER) return $multi(undefined, "the list could not be loaded yet");
  const err = reload(state);
  if (err !== undefined) return $multi(undefined, err);
  return $multi(state.matcher, undefined);
}

let configured: RedisConf[] = [];

/** Kong's `configure`: the Redis of each enabled instance, first come first, one per pool (the Admin API picks from them). */
export function configure(this: void, redisConfs: RedisConf[]): void {
  configured = distinct(redisConfs);
}

export function configuredRedis(this: void): RedisConf[] {
  return configured;
}

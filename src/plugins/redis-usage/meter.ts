/**
 * redis-usage's worker buffer: the log phase adds a request's increments here (no Redis,
 * no I/O), to one tally per subject, route and service and bucket (not to each of their six
 * counter sets: a tally is expanded into them when the buffer is sealed), and a timer
 * flushes them, one pipelined round trip per Redis per flush_interval (sooner when
 * flush_batch counter sets are pending), one usage-flush-2.lua call per
 * counter set (one subject's one bucket; every key of a call shares the subject's tag).
 *
 * Nothing is lost on purpose:
 * - a flush that fails (network, timeout, Redis restarting) keeps its batch, numbered,
 *   and sends it again first with the next flush; the script applies a worker's batch
 *   number once per counter set, so a batch whose reply was lost is not counted twice;
 * - a counter set the script refuses (an error reply: a key of the wrong type) would be
 *   refused forever: its counts are dropped, counted and logged;
 * - past `max_pending` counter sets (Redis unreachable for long), increments for new ones
 *   are dropped, counted and logged, never silently;
 * - on a graceful stop or reload (SIGQUIT, SIGHUP: `nginx -s reload`, `kong reload`,
 *   `krs gateway stop`) nginx runs the flush timer once more, early ("premature"), and it
 *   flushes what is pending; a request finishing after that flushes from its own timer.
 *   A config change (`POST /config`) does not touch the buffer: it is per worker and per
 *   Redis, not per config.
 * A worker that crashes (SIGKILL, segfault) loses what it had not flushed: at most
 * flush_interval of its counts (more only while Redis was unreachable before the crash).
 */
import * as client from "../../lib/redis/client";
import type { Call, PipelineReply } from "../../lib/redis/client";
import { logThrottled } from "../../lib/redis/fault";
import type { Conf } from "./conf";
import * as quota from "./quota";

const PLUGIN = "redis-usage";
const SCRIPT = "usage-flush";
/** Seconds between two checks for a due flush. */
const TICK = 0.05;
/** Counter sets one pipeline carries at most; the rest go with the next round trip. */
const MAX_CALLS = 5000;
/** Tries, and the pause between them, of the last flush of an exiting worker. */
const EXIT_TRIES = 10;
const EXIT_PAUSE = 0.2;

/** One counter set's pending increments. */
export interface Entry {
  key: string;
  /** The subject's quota override hash (read back with the flush). */
  quotaKey: string;
  expireAt: number;
  /** The subject's name when its key part is a hash ("" otherwise). */
  subject: string;
  fields: LuaTable<string, number>;
  /** Admitted requests' quota amounts in it, for the subject's quota view. */
  view?: quota.View;
  period?: "day" | "month";
  bucket?: string;
}

/** What a tally counts to: a subject's day and month counter sets (its keys when the tally was made). */
export interface Target {
  tag: string;
  /** The subject's name when its key part is a hash ("" otherwise). */
  label: string;
  quotaKey: string;
  dayKey: string;
  monthKey: string;
}

/** No subject, route or service: a tally's place for it, with no counter set. */
export const NOBODY: Target = { tag: "", label: "", quotaKey: "", dayKey: "", monthKey: "" };

/** One counter set a tally adds to. */
interface Slot {
  key: string;
  quotaKey: string;
  expireAt: number;
  label: string;
  /** The subject's own counter sets get the quota amounts (never its route's or service's). */
  quota: boolean;
  period: "day" | "month";
  bucket: string;
}

/**
 * The requests of one subject, route and service in one day (and month) bucket, summed:
 * a request adds to its numbers only, the six counter sets are built from it at seal time.
 */
export interface Tally {
  day: string;
  month: string;
  slots: Slot[];
  /** Counter sets of this tally max_pending left out: each request counts them dropped. */
  missing: number;
  view: quota.View | undefined;
  requests: number;
  bytes_in: number;
  bytes_out: number;
  cost: number;
  ["2xx"]: number;
  ["3xx"]: number;
  ["4xx"]: number;
  ["5xx"]: number;
  quota_requests: number;
  quota_cost: number;
}

/** The tally fields, in the order they are sent (the counter hash's field names, the quota ones aside). */
export const TALLY_FIELDS = ["requests", "bytes_in", "bytes_out", "cost", "2xx", "3xx", "4xx", "5xx"] as const;

interface Batch {
  seq: number;
  entries: Entry[];
}

export interface PoolState {
  name: string;
  /** The latest config seen for this Redis: the flush connects with its `redis`. */
  conf: Conf;
  /** Open tallies by subject, route and service (NOBODY for none). */
  tallies: LuaTable<Target, LuaTable<Target, LuaTable<Target, Tally>>>;
  /** Open tallies replaced before the seal (a new day, room again after a drop): sealed with the others. */
  retired: Tally[];
  /** The counter sets the open tallies add to: their number is openCount. */
  openKeys: LuaTable<string, boolean>;
  openCount: number;
  /** ngx.now() by which the open entries must be flushed (0 when none). */
  dueAt: number;
  sealed: Batch[];
  sealedCount: number;
  nextSeq: number;
  flushing: boolean;
  again: boolean;
  /** Request counts dropped (max_pending, refused counter sets) since the last report. */
  dropped: number;
}

const pools = new LuaTable<string, PoolState>();
/** Counter-set updates this worker dropped (max_pending, counter sets Redis refused for good), for redis-metrics. */
let droppedTotal = 0;
let timerStarted = false;
let writerId: string | undefined;

/** This worker's name in the scripts' flush bookkeeping: unique per node, pid and start. */
function writer(this: void): string {
  if (writerId === undefined) {
    const [ok, id] = pcall(() => kong.node.get_id());
    ngx.update_time();
    writerId = `${ok && type(id) === "string" ? id : "node"}:${ngx.worker.pid()}:${math.floor(ngx.now() * 1000)}`;
  }
  return writerId;
}

/** The buffer of the Redis `conf` points at (one per pool name, whatever the config). */
export function stateFor(this: void, conf: Conf): PoolState {
  const name = client.poolName(conf.redis);
  let state = pools.get(name);
  if (state === undefined) {
    state = { name, conf, tallies: new LuaTable(), retired: [], openKeys: new LuaTable(), openCount: 0, dueAt: 0, sealed: [], sealedCount: 0, nextSeq: 1, flushing: false, again: false, dropped: 0 };
    pools.set(name, state);
  }
  state.conf = conf;
  return state;
}

/** This worker's flush backlog (counter sets waiting for Redis) and the counter-set updates it dropped since it started. */
export function health(this: void): LuaMultiReturn<[number, number]> {
  let pending = 0;
  for (const [, state] of pairs(pools)) pending += state.openCount + state.sealedCount;
  return $multi(pending, droppedTotal);
}

/** A request is about to add counts: the buffer is due within `conf`'s flush_interval (once per request, not per counter set). */
export function due(this: void, state: PoolState, conf: Conf): void {
  // Configs sharing this Redis may flush at different intervals: the soonest pending deadline wins.
  const at = ngx.now() + conf.flush_interval / 1000;
  if (state.dueAt === 0 || at < state.dueAt) state.dueAt = at;
}

function addSlot(this: void, state: PoolState, conf: Conf, t: Tally, slot: Slot): void {
  if (!state.openKeys.has(slot.key)) {
    if (state.openCount + state.sealedCount >= conf.max_pending) {
      t.missing++;
      return;
    }
    state.openKeys.set(slot.key, true);
    state.openCount++;
    if (state.openCount >= conf.flush_batch) flushSoon();
  }
  t.slots.push(slot);
}

function addSlots(this: void, state: PoolState, conf: Conf, t: Tally, target: Target, quotaOn: boolean, dayAt: number, monthAt: number): void {
  if (target === NOBODY) return;
  addSlot(state, conf, t, { key: target.dayKey, quotaKey: target.quotaKey, expireAt: dayAt, label: target.label, quota: quotaOn, period: "day", bucket: t.day });
  addSlot(state, conf, t, { key: target.monthKey, quotaKey: target.quotaKey, expireAt: monthAt, label: target.label, quota: quotaOn, period: "month", bucket: t.month });
}

function newTally(this: void, state: PoolState, conf: Conf, subject: Target, route: Target, service: Target, day: string, month: string, dayAt: number, monthAt: number): Tally {
  const t: Tally = {
    day, month, slots: [], missing: 0, view: undefined,
    requests: 0, bytes_in: 0, bytes_out: 0, cost: 0, ["2xx"]: 0, ["3xx"]: 0, ["4xx"]: 0, ["5xx"]: 0, quota_requests: 0, quota_cost: 0,
  };
  addSlots(state, conf, t, subject, true, dayAt, monthAt);
  addSlots(state, conf, t, route, false, dayAt, monthAt);
  addSlots(state, conf, t, service, false, dayAt, monthAt);
  return t;
}

/**
 * The open tally of `subject`, `route` and `service` (their keys current for buckets `day`
 * and `month`) a request adds its counts to. Counter sets past max_pending are left out of
 * a new tally, counted dropped for each request, and tried again while there is room.
 */
export function tally(this: void, state: PoolState, conf: Conf, subject: Target, route: Target, service: Target, day: string, month: string, dayAt: number, monthAt: number): Tally {
  let bySubject = state.tallies.get(subject);
  let byRoute = bySubject?.get(route);
  let t = byRoute?.get(service);
  if (t !== undefined && t.day === day && t.month === month && (t.missing === 0 || state.openCount + state.sealedCount >= conf.max_pending)) {
    if (t.missing > 0) {
      state.dropped += t.missing;
      droppedTotal += t.missing;
    }
    return t;
  }
  // A new day or month, or room again for what was dropped: the old tally is sealed as it is.
  if (t !== undefined) {
    state.retired.push(t);
    byRoute!.delete(service);
  }
  t = newTally(state, conf, subject, route, service, day, month, dayAt, monthAt);
  if (t.missing > 0) {
    state.dropped += t.missing;
    droppedTotal += t.missing;
  }
  // A tally max_pending left with no counter set is not kept: new subjects by the thousand
  // while Redis is away would otherwise each hold one until the next seal, which there is
  // none of while nothing is open.
  if (t.slots.length === 0) return t;
  if (bySubject === undefined) {
    bySubject = new LuaTable();
    state.tallies.set(subject, bySubject);
  }
  if (byRoute === undefined) {
    byRoute = new LuaTable();
    bySubject.set(route, byRoute);
  }
  byRoute.set(service, t);
  return t;
}

function addTo(this: void, fields: LuaTable<string, number>, name: string, n: number): void {
  if (n !== 0) fields.set(name, (fields.get(name) ?? 0) + n);
}

/** A tally's counts into the counter set of `slot`, in `entries` (one entry per counter set). */
function expand(this: void, t: Tally, entries: LuaTable<string, Entry>, list: Entry[]): void {
  if (t.requests === 0) return;
  for (const slot of t.slots) {
    let e = entries.get(slot.key);
    if (e === undefined) {
      e = { key: slot.key, quotaKey: slot.quotaKey, expireAt: slot.expireAt, subject: slot.label, fields: new LuaTable() };
      entries.set(slot.key, e);
      list.push(e);
    }
    const fields = e.fields;
    for (const name of TALLY_FIELDS) addTo(fields, name, t[name]);
    if (!slot.quota) continue;
    addTo(fields, "quota_requests", t.quota_requests);
    addTo(fields, "quota_cost", t.quota_cost);
    if (t.view !== undefined) {
      e.view = t.view;
      e.period = slot.period;
      e.bucket = slot.bucket;
    }
  }
}

/** Every open tally, the retired ones included. */
function eachTally(this: void, state: PoolState, fn: (this: void, t: Tally) => void): void {
  for (const t of state.retired) fn(t);
  for (const [, byRoute] of pairs(state.tallies)) {
    for (const [, byService] of pairs(byRoute)) {
      for (const [, t] of pairs(byService)) fn(t);
    }
  }
}

function seal(this: void, state: PoolState): void {
  if (state.openCount === 0) return;
  const byKey = new LuaTable<string, Entry>();
  const entries: Entry[] = [];
  eachTally(state, (t) => expand(t, byKey, entries));
  state.sealed.push({ seq: state.nextSeq, entries });
  state.nextSeq++;
  state.sealedCount += entries.length;
  state.tallies = new LuaTable();
  state.retired = [];
  state.openKeys = new LuaTable();
  state.openCount = 0;
  state.dueAt = 0;
}

function callOf(this: void, seq: number, e: Entry): Call {
  const args: (string | number)[] = [writer(), seq, e.expireAt, e.subject, 0];
  let n = 0;
  for (const [field, value] of pairs(e.fields)) {
    args.push(field, value);
    n++;
  }
  args[4] = n;
  return { script: SCRIPT, keys: [e.key, e.quotaKey], args };
}

function requestsIn(this: void, e: Entry): number {
  return e.fields.get("requests") ?? 0;
}

/**
 * A refusal that will not go away by retrying: a key of the wrong type, or the script
 * failing on it. Anything else (LOADING after a restart, BUSY, OOM, READONLY during a
 * failover, a shutdown) is kept for the next flush.
 */
function permanent(this: void, message: string): boolean {
  return string.find(message, "WRONGTYPE", 1, true)[0] !== undefined || string.find(message, "user_script", 1, true)[0] !== undefined
    || string.find(message, "Error running script", 1, true)[0] !== undefined;
}

/**
 * One round trip for the oldest sealed entries. A counter set goes at most once per round
 * trip, its oldest pending batch first: a newer batch of it is only sent once Redis has
 * answered for the older one, so the script's "applied up to" number never skips one.
 * Returns whether Redis answered and whether any entry left the queue.
 */
function send(this: void, state: PoolState): LuaMultiReturn<[boolean, boolean]> {
  const calls: Call[] = [];
  const sent: Entry[] = [];
  const sentSeq: number[] = [];
  const inThisTrip = new LuaTable<string, boolean>();
  for (const batch of state.sealed) {
    for (const e of batch.entries) {
      if (calls.length >= MAX_CALLS) break;
      if (inThisTrip.has(e.key)) continue;
      inThisTrip.set(e.key, true);
      calls.push(callOf(batch.seq, e));
      sent.push(e);
      sentSeq.push(batch.seq);
    }
  }
  if (calls.length === 0) return $multi(true, false);
  const [replies, err] = client.pipeline(state.conf.redis, calls);
  if (replies === undefined) {
    logThrottled(PLUGIN, `flush failed, ${state.sealedCount + state.openCount} counter sets kept for the next one: ${err}`, state.conf);
    return $multi(false, false);
  }
  const done = new LuaTable<Entry, boolean>();
  let progress = false;
  for (let i = 0; i < sent.length; i++) {
    const reply = replies[i] as PipelineReply;
    const e = sent[i];
    const quotaRequests = e.fields.get("quota_requests") ?? 0;
    const quotaCost = e.fields.get("quota_cost") ?? 0;
    if (type(reply) === "table" && type((reply as unknown[])[0]) === "number") {
      const r = reply as number[];
      if (e.view !== undefined) quota.acknowledge(e.view, e.period!, e.bucket!, r[1], r[2], r[3], r[4], quotaRequests, quotaCost);
      done.set(e, true);
      continue;
    }
    const message = type(reply) === "table" ? tostring((reply as unknown[])[1]) : tostring(reply);
    if (permanent(message)) {
      logThrottled(PLUGIN, `redis refused the counts of ${e.key} (${requestsIn(e)} requests dropped): ${message}`, state.conf);
      droppedTotal++;
      if (e.view !== undefined) quota.acknowledge(e.view, e.period!, e.bucket!, undefined, undefined, undefined, undefined, quotaRequests, quotaCost);
      done.set(e, true);
    } else {
      logThrottled(PLUGIN, `redis refused a flush for now, its counts are kept for the next one: ${message}`, state.conf);
    }
  }
  const left: Batch[] = [];
  for (const batch of state.sealed) {
    const entries: Entry[] = [];
    for (const e of batch.entries) {
      if (done.has(e)) progress = true;
      else entries.push(e);
    }
    if (entries.length > 0) left.push({ seq: batch.seq, entries });
  }
  let removed = 0;
  for (const [] of pairs(done)) removed++;
  state.sealed = left;
  state.sealedCount -= removed;
  return $multi(true, progress);
}

function reportDrops(this: void, state: PoolState): void {
  if (state.dropped === 0) return;
  logThrottled(PLUGIN, `max_pending (${state.conf.max_pending}) counter sets reached: ${state.dropped} counts dropped`, state.conf);
  state.dropped = 0;
}

/** Seals what is open and sends every sealed batch it can; one flush per pool at a time. */
function flushPool(this: void, state: PoolState): boolean {
  if (state.flushing) {
    state.again = true;
    return false;
  }
  state.flushing = true;
  let answered = true;
  const [ok, err] = pcall(() => {
    for (let round = 0; round < 10; round++) {
      state.again = false;
      seal(state);
      let progress = true;
      // Bounded: each round trip takes at least one entry off the queue, or the loop ends.
      while (answered && progress && state.sealedCount > 0) [answered, progress] = send(state);
      if (!answered || !state.again) break;
    }
    reportDrops(state);
  });
  state.flushing = false;
  if (!ok) logThrottled(PLUGIN, `flush failed: ${tostring(err)}`);
  return ok && answered;
}

function pending(this: void, state: PoolState): number {
  return state.openCount + state.sealedCount;
}

/** The last flush of an exiting worker: a few tries, then what is still pending is reported lost. */
function flushAtExit(this: void): void {
  for (const [, state] of pairs(pools)) {
    for (let i = 0; i < EXIT_TRIES && pending(state) > 0; i++) {
      // A flush already under way (a request's own timer) finishes first; it is bounded by the Redis timeout.
      for (let wait = 0; state.flushing && wait < 1000; wait++) ngx.sleep(0.01);
      // Requests still finishing add counts while a flush is in flight: flush again until none are left.
      if (!flushPool(state)) ngx.sleep(EXIT_PAUSE);
    }
    if (pending(state) > 0) {
      let requests = 0;
      eachTally(state, (t) => {
        requests += t.requests * t.slots.length;
      });
      for (const batch of state.sealed) for (const e of batch.entries) requests += requestsIn(e);
      ngx.log(ngx.ERR, `[kong] [${PLUGIN}] worker exiting with Redis unreachable: ${pending(state)} counter sets (${requests} requests) lost`);
    }
  }
}

function tick(this: void, premature: boolean): void {
  if (premature) return flushAtExit();
  const now = ngx.now();
  for (const [, state] of pairs(pools)) {
    const due = (state.dueAt !== 0 && now >= state.dueAt) || (state.sealedCount > 0 && state.dueAt === 0);
    if (due && !state.flushing) {
      flushPool(state);
      // A failed batch waits one interval, as new counts do.
      if (state.sealedCount > 0 && state.dueAt === 0) state.dueAt = ngx.now() + state.conf.flush_interval / 1000;
    }
  }
}

/** A flushNow timer is pending: a burst of new counter sets schedules one, not one each. */
let flushScheduled = false;

/** Whether a zero-delay flush is pending (for the unit spec). */
export function flushPending(this: void): boolean {
  return flushScheduled;
}

function flushNow(this: void, premature: boolean): void {
  flushScheduled = false;
  if (premature) return flushAtExit();
  // A flush under way is told to go round again (flushPool): these counts may have come after its seal.
  for (const [, state] of pairs(pools)) if (pending(state) > 0) flushPool(state);
}

/** A flush as soon as possible (a full batch, or an exiting worker's late request). */
export function flushSoon(this: void): void {
  // One pending at a time: it flushes every pool with counts, including those added after
  // this call; a request after it has run schedules the next one.
  if (flushScheduled) return;
  const [ok, err] = ngx.timer.at(0, flushNow);
  if (ok === undefined) {
    if (err !== "process exiting") logThrottled(PLUGIN, `could not start a flush: ${err}`);
    return;
  }
  flushScheduled = true;
}

/** Starts this worker's flush timer (init_worker, or the first request when the plugin came with a later config). */
export function start(this: void): void {
  if (timerStarted) return;
  const [ok, err] = ngx.timer.every(TICK, tick);
  if (ok === undefined) {
    if (err !== "process exiting") logThrottled(PLUGIN, `could not start the flush timer: ${err}`);
    return;
  }
  timerStarted = true;
}

/** After a request's increments: an exiting worker's timer has already run its last flush. */
export function afterRequest(this: void): void {
  if (!timerStarted) start();
  if (ngx.worker.exiting()) flushSoon();
}

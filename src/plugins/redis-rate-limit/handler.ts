/**
 * redis-rate-limit: exact rate limiting shared by every worker and node.
 *
 * access: identify the client, then per `sync`:
 * - lease (default): admit from this worker's lease of the counters while it is valid
 *   (no Redis); else wait for the lease another request of this worker is taking; else
 *   reject from memory when the worker knows nothing can be admitted yet; else take a
 *   lease (one EVALSHA of redis-lua/rate-limit-lease-1.lua, which counts every admission
 *   it grants, so leases never add up to more than a limit). A sweep timer gives back
 *   what is left of leases that expired, ended with their window, were replaced, or
 *   belong to an exiting worker (rate-limit-return-1.lua). Lease sizes: lease.ts.
 * - exact: skip Redis when this worker already knows the identifier is over a limit
 *   until its retry time, else one EVALSHA (redis-lua/rate-limit-1.lua) decides every
 *   configured window and counts the request only when all admit it.
 * Both scripts also say when the next request can be admitted, once a window is used up
 * (by a rejection or by the admission that filled it): the worker remembers that time.
 * The response headers go out in header_filter (upstream headers must not override them);
 * a rejection carries them in its exit. A rejection from the worker's memory carries
 * what the script would have answered at that moment: the script reports its counters
 * with the wait, nothing changes them until the wait has passed, and counts.ts repeats
 * the script's arithmetic on them.
 */
import * as lrucache from "resty.lrucache";
import * as semaphore from "ngx.semaphore";
import { script } from "../../lib/redis/client";
import { logThrottled, onRedisFailure } from "../../lib/redis/fault";
import * as facts from "../../lib/facts";
import { key, part } from "../../lib/keys";
import { SUITE_VERSION } from "../../lib/version";
import type { Conf } from "./conf";
import { remainingAt } from "./counts";
import { wantFor } from "./lease";
import { bounds, WINDOWS } from "./windows";

const PLUGIN = "redis-rate-limit";
const SCRIPT = "rate-limit";
/** Identifiers over a limit that one worker remembers (least recently used dropped first). */
const BLOCKED_SLOTS = 10000;
/** Counters outlive the time they matter by this much, for gateway clocks that disagree a little. */
const CLOCK_SKEW_MS = 2000;

const RATELIMIT_LIMIT = "RateLimit-Limit";
const RATELIMIT_REMAINING = "RateLimit-Remaining";
const RATELIMIT_RESET = "RateLimit-Reset";
const RETRY_AFTER = "Retry-After";

const ceil = math.ceil;
const floor = math.floor;

type Headers = LuaTable<string, string | number>;

/** One configured window, with its header names. */
interface Window {
  name: string;
  limit: number;
  /** The limit as the header shows it, converted once. */
  limitText: string;
  /** Milliseconds, or windows.MONTH / windows.YEAR for the calendar ones. */
  length: number;
  limitHeader: string;
  remainingHeader: string;
}

/** What one config needs per request, built once per config table. */
interface Prepared {
  windows: Window[];
  algorithm: "sliding" | "fixed";
  /** The plugin instance's part of every counter key. */
  instance: string;
  /** Counter keys by identifier, per kind ("ip" when the configured identifier was missing). */
  ipKeys: LuaTable<string, string>;
  idKeys: LuaTable<string, string>;
  keyCount: number;
}

/** Counter keys one config remembers before it starts over (bounds the memory many clients take). */
const KEY_SLOTS = 10000;
/** Identifiers longer than this (bytes) are not kept in the key cache. */
const MAX_KEPT_IDENTIFIER = 128;

// SINGLE_WINDOW_FIRST: per-request loops over the windows handle the first one before the
// loop, so a one-window config (the usual one) enters no loop at all: LuaJIT aborts a trace
// that meets a short inner loop with a long body ("loop unroll limit reached", "leaving
// loop in root trace"), and the request then runs interpreted.

/** An identifier this worker saw at its limit: until `retryAt` no request of it can be admitted. */
interface Blocked {
  conf: Conf;
  retryAt: number;
  /** Per window, as the script reported them: the start it counted in, its count, the previous window's. */
  buckets: number[];
  counts: number[];
  prevs: number[];
}

/**
 * The script calls of one counter set in flight in this worker, and the room the last one
 * reported. A request that would need more room than that while calls are out waits for
 * them instead of sending its own: when they leave the identifier over its limit, it is
 * answered from the deny cache, so a burst at the limit sends a few calls, not one each.
 * Every admission is still one script call: exactness does not depend on this.
 */
interface Flight {
  calls: number;
  /** The least room any window had in the last reply; 0 until a reply came. */
  room: number;
  waiters: number;
  sema: Semaphore;
}
type Semaphore = NonNullable<ReturnType<typeof semaphore.new>[0]>;
const FLIGHT_SLOTS = 10000;

const [flightCache, flightErr] = lrucache.new<Flight>(FLIGHT_SLOTS);
if (flightCache === undefined) error(`${PLUGIN}: could not create the in-flight table: ${flightErr}`);
const flights = flightCache!;

function flightOf(this: void, counterKey: string): Flight {
  const [known] = flights.get(counterKey);
  if (known !== undefined) return known;
  const [sema, err] = semaphore.new(0);
  if (sema === undefined) return error(`${PLUGIN}: could not create a semaphore: ${err}`);
  const flight: Flight = { calls: 0, room: 0, waiters: 0, sema };
  flights.set(counterKey, flight);
  return flight;
}

/**
 * The longest a request waits for its worker's calls in flight, in seconds: a call returns
 * (or fails) within the Redis timeout, twice that covers a reconnect.
 */
function flightDeadline(this: void, conf: Conf): number {
  return ngx.now() + (2 * conf.redis.timeout) / 1000 + 0.1;
}

/**
 * Until the calls in flight could leave room for this request, wait for them to return.
 * The wait is bounded by time, not by the number of replies: every reply wakes every
 * waiter, and a waiter that gave up after a few replies while the room the last one
 * showed was still short sent its own call anyway (a burst at the limit then cost one
 * call per request again).
 */
function awaitRoom(this: void, flight: Flight, conf: Conf): boolean {
  if (flight.calls === 0 || flight.calls < flight.room) return false;
  const deadline = flightDeadline(conf);
  while (flight.calls > 0 && flight.calls >= flight.room) {
    const left = deadline - ngx.now();
    if (left <= 0) break;
    flight.waiters++;
    flight.sema.wait(left);
    flight.waiters--;
  }
  return true;
}

function landed(this: void, flight: Flight, room: number): void {
  flight.calls--;
  flight.room = room;
  if (flight.waiters > 0) flight.sema.post(flight.waiters);
}

/**
 * sync lease: admissions this worker reserved of one counter set (rate-limit-lease-1.lua
 * counted all of them in Redis) and admits locally while it is valid: same config, before
 * `expiresAt` (lease_ttl after it was taken) and before the first of its windows ends.
 * What is left after that goes back to Redis (rate-limit-return-1.lua) from the sweep timer.
 */
interface Lease {
  counterKey: string;
  conf: Conf;
  p: Prepared;
  granted: number;
  /** Admissions not used yet. */
  left: number;
  /** Admissions used (granted - left until the lease goes back, which empties it). */
  used: number;
  takenAt: number;
  expiresAt: number;
  endsAt: number;
  /** Per window, as the script replied: the start the lease was counted in, and the room left after it. */
  buckets: number[];
  remaining: number[];
  /** Replaced by a newer lease (or the worker exits): what is left goes back at the next sweep. */
  dead: boolean;
}
const LEASE_SLOTS = 10000;
/** Seconds between two sweeps for leases to give back. */
const SWEEP_INTERVAL = 0.05;
const RETURN_SCRIPT = "rate-limit-return";
const LEASE_SCRIPT = "rate-limit-lease";

const [leaseCache, leaseErr] = lrucache.new<Lease>(LEASE_SLOTS);
if (leaseCache === undefined) error(`${PLUGIN}: could not create the lease table: ${leaseErr}`);
const leases = leaseCache!;
/** Every lease with admissions left, current or not (an evicted slot's lease still goes back). */
const outstanding = new LuaTable<Lease, boolean>();
let sweeping = false;

function usable(this: void, lease: Lease | undefined, conf: Conf, now: number): boolean {
  return lease !== undefined && lease.left > 0 && !lease.dead && lease.conf === conf && now < lease.expiresAt && now < lease.endsAt;
}

/** Gives back what is left of `lease` (claimed first: no request can use it meanwhile). */
function giveBack(this: void, lease: Lease): void {
  const unused = lease.left;
  lease.left = 0;
  lease.dead = true;
  outstanding.delete(lease);
  if (unused <= 0) return;
  const windows = lease.p.windows;
  const args: (string | number)[] = [windows.length, unused];
  for (let i = 0; i < windows.length; i++) {
    const bucket = lease.buckets[i];
    const [start, length] = bounds(bucket, windows[i].length);
    args[args.length] = windows[i].name;
    args[args.length] = bucket;
    args[args.length] = start + length;
  }
  const [reply, err] = script(lease.conf.redis, { script: RETURN_SCRIPT, keys: [lease.counterKey], args });
  if (type(reply) !== "number") {
    logThrottled(PLUGIN, `redis unavailable: ${reply === false ? `script ${RETURN_SCRIPT} failed: ${err}` : err ?? "unknown error"} (${unused} leased admissions not given back: counted until their window ends)`, lease.conf);
  }
}

function sweep(this: void, premature: boolean): void {
  const now = floor(ngx.now() * 1000 + 0.5);
  const due: Lease[] = [];
  for (const [lease] of pairs(outstanding)) {
    if (premature || lease.dead || lease.left <= 0 || now >= lease.expiresAt || now >= lease.endsAt) due[due.length] = lease;
  }
  for (const lease of due) giveBack(lease);
}

function startSweeping(this: void): void {
  if (sweeping) return;
  const [ok, err] = ngx.timer.every(SWEEP_INTERVAL, sweep);
  if (ok === undefined) {
    if (err !== "process exiting") logThrottled(PLUGIN, `could not start the lease timer: ${err}`);
    return;
  }
  sweeping = true;
}

/** Until the lease being taken in this worker comes back (or the calls fail), wait for it. */
function awaitLease(this: void, flight: Flight, conf: Conf): boolean {
  if (flight.calls === 0) return false;
  const deadline = flightDeadline(conf);
  while (flight.calls > 0) {
    const left = deadline - ngx.now();
    if (left <= 0) break;
    flight.waiters++;
    flight.sema.wait(left);
    flight.waiters--;
  }
  return true;
}

const preparedByConf = setmetatable(new LuaTable<Conf, Prepared>(), { __mode: "k" });

const [blockedLru, lruErr] = lrucache.new<Blocked>(BLOCKED_SLOTS);
if (blockedLru === undefined) error(`${PLUGIN}: could not create the worker cache: ${lruErr}`);
const blockedCache = blockedLru!;

function idOf(this: void, value: unknown): string {
  return type(value) === "string" ? (value as string) : "-";
}

function prepare(this: void, conf: Conf): Prepared {
  const cached = preparedByConf.get(conf);
  if (cached !== undefined) return cached;
  const windows: Window[] = [];
  const fields = conf as unknown as LuaTable<string, unknown>;
  for (const w of WINDOWS) {
    const limit = fields.get(w.name);
    if (type(limit) === "number") {
      windows[windows.length] = {
        name: w.name,
        limit: limit as number,
        limitText: tostring(limit),
        length: w.length,
        limitHeader: "X-RateLimit-Limit-" + w.title,
        remainingHeader: "X-RateLimit-Remaining-" + w.title,
      };
    }
  }
  // Kong 3 passes the plugin's id; without it, the plugin's scope names the instance.
  const instance = type(conf.__plugin_id) === "string" ? conf.__plugin_id! : `${idOf(conf.route_id)}.${idOf(conf.service_id)}`;
  const prepared: Prepared = {
    windows,
    algorithm: conf.algorithm === "fixed-window" ? "fixed" : "sliding",
    instance: part(instance),
    ipKeys: new LuaTable(),
    idKeys: new LuaTable(),
    keyCount: 0,
  };
  preparedByConf.set(conf, prepared);
  return prepared;
}

/** The counter key of one identifier: built (and `part()` hashed) once per config and identifier. */
function counterKeyOf(this: void, p: Prepared, kind: string, value: string): string {
  const known = kind === "ip" ? p.ipKeys : p.idKeys;
  const cached = known.get(value);
  if (cached !== undefined) return cached;
  const built = key(PLUGIN, `${p.instance}:${kind}:${part(value)}`);
  // A long identifier (a client's header, up to nginx's 8 KB line) is not kept: 10,000 of
  // them would hold tens of MB per worker. Its key is built each time.
  if (value.length > MAX_KEPT_IDENTIFIER) return built;
  if (p.keyCount >= KEY_SLOTS) {
    p.ipKeys = new LuaTable();
    p.idKeys = new LuaTable();
    p.keyCount = 0;
  }
  (kind === "ip" ? p.ipKeys : p.idKeys).set(value, built);
  p.keyCount++;
  return built;
}

/** What the counters belong to: kind and value; the client IP when the identifier is missing (as Kong). */
function identify(this: void, conf: Conf): LuaMultiReturn<[string, string]> {
  const by = conf.limit_by;
  let id: string | undefined;
  if (by === "consumer") {
    id = (kong.client.get_consumer() ?? kong.client.get_credential())?.id;
  } else if (by === "credential") {
    id = kong.client.get_credential()?.id;
  } else if (by === "service") {
    id = kong.router.get_service()?.id;
  } else if (by === "route") {
    id = kong.router.get_route()?.id;
  } else if (by === "header") {
    id = kong.request.get_header(conf.header_name!);
  } else if (by === "path") {
    const path = kong.request.get_path();
    if (path === conf.path) id = path;
  }
  if (type(id) !== "string" || id === "") return $multi("ip", kong.client.get_forwarded_ip());
  return $multi(by, id!);
}

/** Where putHeaders puts a header: a table (for kong.response.exit) or the response itself. */
type PutHeader = (this: void, target: Headers | undefined, name: string, value: string | number) => void;

function setResponseHeader(this: void, _target: Headers | undefined, name: string, value: string | number): void {
  kong.response.set_header(name, value);
}

/**
 * Kong's headers: each window's limit and remaining; RateLimit-* for the window closest to
 * its limit (the longer one on a tie). Names and limit texts are prepared per config.
 */
function putHeaders(this: void, p: Prepared, now: number, remaining: number[], put: PutHeader, target: Headers | undefined): void {
  const windows = p.windows;
  const first = windows[0];
  let best = 0;
  let bestRemaining = remaining[0];
  const [firstStart, firstLength] = bounds(now, first.length);
  let bestLength = firstLength;
  let bestReset = firstStart + firstLength - now;
  put(target, first.limitHeader, first.limitText);
  put(target, first.remainingHeader, bestRemaining);
  // From the second window on (see SINGLE_WINDOW_FIRST).
  for (let i = 1; i < windows.length; i++) {
    const w = windows[i];
    const left = remaining[i];
    put(target, w.limitHeader, w.limitText);
    put(target, w.remainingHeader, left);
    const [start, length] = bounds(now, w.length);
    if (bestRemaining < 0 || left < bestRemaining || (left === bestRemaining && length > bestLength)) {
      best = i;
      bestRemaining = left;
      bestLength = length;
      bestReset = start + length - now;
    }
  }
  put(target, RATELIMIT_LIMIT, windows[best].limitText);
  put(target, RATELIMIT_REMAINING, bestRemaining);
  put(target, RATELIMIT_RESET, math.max(1, ceil(bestReset / 1000)));
}

/** The headers as a table, for a rejection's kong.response.exit. */
function headersFor(this: void, p: Prepared, now: number, remaining: number[]): Headers {
  const headers: Headers = new LuaTable();
  putHeaders(p, now, remaining, rawset as unknown as PutHeader, headers);
  return headers;
}

/** An admission's headers go out in header_filter: what they need, kept for the request. */
function keepHeaders(this: void, conf: Conf, now: number, remaining: number[]): void {
  if (conf.hide_client_headers) return;
  const ctx = kong.ctx.plugin;
  ctx["remaining"] = remaining;
  ctx["now"] = now;
}

/** The decision for the request facts: the tightest window and what is left of it. */
function recordDecision(this: void, p: Prepared, admitted: boolean, source: facts.DecisionSource, remaining: number[] | undefined): void {
  if (!facts.recording()) return;
  let limit: number | undefined;
  let left: number | undefined;
  if (remaining !== undefined) {
    for (let i = 0; i < p.windows.length; i++) {
      const r = remaining[i];
      if (r !== undefined && (left === undefined || r < left)) {
        left = r;
        limit = p.windows[i].limit;
      }
    }
  }
  facts.limit(PLUGIN, "rate", admitted, source, limit, left);
}

function reject(this: void, conf: Conf, p: Prepared, now: number, remaining: number[], retryMs: number): never {
  if (conf.hide_client_headers) return kong.response.error(conf.error_code, conf.error_message);
  const headers = headersFor(p, now, remaining);
  headers.set(RETRY_AFTER, math.max(1, ceil(retryMs / 1000)));
  return kong.response.error(conf.error_code, conf.error_message, headers as unknown as KongHeaders);
}

/** A rejection from this worker's memory: what the script would have answered at `now`. */
function rejectFromMemory(this: void, conf: Conf, p: Prepared, blocked: Blocked, now: number): never {
  const windows = p.windows;
  const sliding = p.algorithm === "sliding";
  const remaining: number[] = [];
  for (let i = 0; i < windows.length && !conf.hide_client_headers; i++) {
    const w = windows[i];
    remaining[i] = remainingAt(sliding, w.limit, w.length, now, blocked.buckets[i], blocked.counts[i], blocked.prevs[i]);
  }
  recordDecision(p, false, "worker", remaining);
  return reject(conf, p, now, remaining, blocked.retryAt - now);
}

/**
 * The scripts' window arguments from ARGV[first] on (six per window), and the TTL the
 * counters need: fixed, to the end of the longest window; sliding, of the window after it.
 */
function windowArgs(this: void, p: Prepared, now: number, args: (string | number)[], first: number): number {
  const sliding = p.algorithm === "sliding";
  const windows = p.windows;
  let keep = windowArg(windows[0], sliding, now, args, first);
  // From the second window on (see SINGLE_WINDOW_FIRST).
  for (let i = 1; i < windows.length; i++) {
    const until = windowArg(windows[i], sliding, now, args, first + 6 * i);
    if (until > keep) keep = until;
  }
  return keep + CLOCK_SKEW_MS;
}

/** One window's six arguments from ARGV[at]; returns how long its counters matter from `now`. */
function windowArg(this: void, w: Window, sliding: boolean, now: number, args: (string | number)[], at: number): number {
  const [start, length, prevStart, nextLength] = bounds(now, w.length);
  args[at] = w.name;
  args[at + 1] = w.limit;
  args[at + 2] = start;
  args[at + 3] = length;
  args[at + 4] = prevStart;
  args[at + 5] = nextLength;
  return (sliding ? start + length + nextLength : start + length) - now;
}

/** The wait a reply carries (with every rejection, and with a grant that used a window up): remembered. */
function rememberBlock(this: void, conf: Conf, counterKey: string, n: number, r: number[], now: number): void {
  const retryMs = r[1];
  if (retryMs <= 0) return;
  const buckets: number[] = [];
  const counts: number[] = [];
  const prevs: number[] = [];
  for (let i = 0; i < n; i++) {
    buckets[i] = r[2 + n + 3 * i];
    counts[i] = r[3 + n + 3 * i];
    prevs[i] = r[4 + n + 3 * i];
  }
  blockedCache.set(counterKey, { conf, retryAt: now + retryMs, buckets, counts, prevs }, retryMs / 1000);
}

/**
 * One script call for the worker's in-flight record of this counter (rate-limit-1 or the
 * lease script). On a failure: the waiting requests are released (nothing to learn from
 * it, none should queue behind failing calls), the fault decision recorded and
 * fault_tolerant applied; undefined tells the caller the request is decided.
 */
function callScript(this: void, conf: Conf, p: Prepared, flight: Flight, name: string, counterKey: string, args: (string | number)[]): number[] | undefined {
  flight.calls++;
  const [reply, err] = script(conf.redis, { script: name, keys: [counterKey], args });
  if (type(reply) === "table") return reply as number[];
  landed(flight, math.huge);
  recordDecision(p, conf.fault_tolerant, "fault", undefined);
  onRedisFailure(PLUGIN, conf, reply === false ? `script ${name} failed: ${err}` : err);
  return undefined;
}

/** sync exact: one rate-limit-1.lua call per request this worker cannot answer alone. */
function decideExact(this: void, conf: Conf, p: Prepared, counterKey: string, now: number): void {
  const windows = p.windows;
  const flight = flightOf(counterKey);
  // After a wait the request is decided at the time it is decided.
  if (awaitRoom(flight, conf)) now = floor(ngx.now() * 1000 + 0.5);
  const [blocked] = blockedCache.get(counterKey);
  if (blocked !== undefined && blocked.conf === conf && now < blocked.retryAt) return rejectFromMemory(conf, p, blocked, now);

  const args: (string | number)[] = [now, p.algorithm, 0, windows.length];
  args[2] = windowArgs(p, now, args, 4);

  const r = callScript(conf, p, flight, SCRIPT, counterKey, args);
  if (r === undefined) return;
  const n = windows.length;
  let room = r[2] ?? 0;
  const remaining: number[] = [room];
  // From the second window on (see SINGLE_WINDOW_FIRST).
  for (let i = 1; i < n; i++) {
    const left = r[2 + i];
    remaining[i] = left;
    if (left < room) room = left;
  }
  // A wait comes with every rejection, and with an admission that used a window up:
  // either way no request of this identifier can be admitted before it has passed.
  rememberBlock(conf, counterKey, n, r, now);
  landed(flight, room);
  recordDecision(p, r[0] === 1, "redis", remaining);
  if (r[0] !== 1) return reject(conf, p, now, remaining, r[1]);
  keepHeaders(conf, now, remaining);
}

/** An admission from `lease`: the headers show the room Redis had left after it, plus what is left of it. */
function admitFromLease(this: void, conf: Conf, p: Prepared, lease: Lease, now: number, source: facts.DecisionSource): void {
  lease.left--;
  lease.used++;
  if (lease.left === 0) outstanding.delete(lease);
  const n = p.windows.length;
  const reported = lease.remaining;
  const left = lease.left;
  const remaining: number[] = [reported[0] + left];
  // From the second window on (see SINGLE_WINDOW_FIRST).
  for (let i = 1; i < n; i++) remaining[i] = reported[i] + left;
  recordDecision(p, true, source, remaining);
  keepHeaders(conf, now, remaining);
}

/**
 * sync lease: admit from this worker's lease while it is valid; else wait for the lease
 * being taken by another request of this worker; else reject from memory when the worker
 * knows no request can be admitted yet; else take a new lease (one script call), sized
 * by lease.ts and granted by rate-limit-lease-1.lua, this request being its first admission.
 */
function decideLeased(this: void, conf: Conf, p: Prepared, counterKey: string, now: number): void {
  let [lease] = leases.get(counterKey);
  if (usable(lease, conf, now)) return admitFromLease(conf, p, lease!, now, "worker");

  const flight = flightOf(counterKey);
  if (awaitLease(flight, conf)) {
    now = floor(ngx.now() * 1000 + 0.5);
    [lease] = leases.get(counterKey);
    if (usable(lease, conf, now)) return admitFromLease(conf, p, lease!, now, "worker");
  }
  const [blocked] = blockedCache.get(counterKey);
  if (blocked !== undefined && blocked.conf === conf && now < blocked.retryAt) return rejectFromMemory(conf, p, blocked, now);

  const windows = p.windows;
  const n = windows.length;
  const ttlMs = conf.lease_ttl * 1000;
  // An exiting worker takes single admissions: its last sweep has run or is running.
  let want = 1;
  if (!ngx.worker.exiting()) {
    want = lease === undefined || lease.conf !== conf
      ? wantFor(0, 0, 0, ttlMs, conf.lease_max, flight.waiters)
      : wantFor(lease.granted, lease.used, now - lease.takenAt, ttlMs, conf.lease_max, flight.waiters);
  }
  const expiresAt = now + ttlMs;
  const args: (string | number)[] = [now, p.algorithm, 0, n, want, expiresAt];
  args[2] = windowArgs(p, now, args, 6);
  let endsAt = math.huge;
  for (let i = 0; i < n; i++) {
    const end = (args[8 + 6 * i] as number) + (args[9 + 6 * i] as number);
    if (end < endsAt) endsAt = end;
  }

  const r = callScript(conf, p, flight, LEASE_SCRIPT, counterKey, args);
  if (r === undefined) return;
  const granted = r[0];
  rememberBlock(conf, counterKey, n, r, now);
  const remaining: number[] = [];
  for (let i = 0; i < n; i++) remaining[i] = r[2 + i];
  if (granted < 1) {
    landed(flight, 0);
    recordDecision(p, false, "redis", remaining);
    return reject(conf, p, now, remaining, r[1]);
  }
  // The lease this one replaces goes back at the next sweep with what is left of it.
  if (lease !== undefined && lease.left > 0) lease.dead = true;
  const buckets: number[] = [];
  for (let i = 0; i < n; i++) buckets[i] = r[2 + n + 3 * i];
  const fresh: Lease = { counterKey, conf, p, granted, left: granted, used: 0, takenAt: now, expiresAt, endsAt, buckets, remaining, dead: false };
  leases.set(counterKey, fresh);
  if (granted > 1) {
    outstanding.set(fresh, true);
    startSweeping();
  }
  landed(flight, granted - 1);
  admitFromLease(conf, p, fresh, now, "redis");
}

const handler: KongPluginHandler<Conf> = {
  // Kong's rate-limiting priority: after authentication, so consumers and credentials are known.
  PRIORITY: 910,
  VERSION: SUITE_VERSION,

  access(conf) {
    facts.enter(PLUGIN);
    const p = prepare(conf);
    const [kind, value] = identify(conf);
    const counterKey = counterKeyOf(p, kind, value);
    // the request's time as nginx cached it for this event loop iteration (as Kong reads it)
    const now = floor(ngx.now() * 1000 + 0.5);
    if (conf.sync === "exact") return decideExact(conf, p, counterKey, now);
    return decideLeased(conf, p, counterKey, now);
  },

  header_filter(conf) {
    const ctx = kong.ctx.plugin;
    const remaining = ctx["remaining"] as number[] | undefined;
    if (remaining === undefined) return;
    putHeaders(prepare(conf), ctx["now"] as number, remaining, setResponseHeader, undefined);
  },
};

export = handler;

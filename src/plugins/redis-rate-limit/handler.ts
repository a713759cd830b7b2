/**
 * redis-rate-limit: exact rate limiting shared by every worker and node.
 *
 * access: identify the client, skip Redis when this worker already knows the identifier
 * is over a limit until its retry time, else one EVALSHA (redis-lua/rate-limit-1.lua)
 * decides every configured window and counts the request only when all admit it. The
 * script also says when the next request can be admitted, once a window is used up (by
 * a rejection or by the admission that filled it): the worker remembers that time. The
 * response headers go out in header_filter (upstream headers must not override them);
 * a rejection carries them in its exit. A rejection from the worker's memory carries
 * what the script would have answered at that moment: the script reports its counters
 * with the wait, nothing changes them until the wait has passed, and counts.ts repeats
 * the script's arithmetic on them.
 */
import * as lrucache from "resty.lrucache";
import * as semaphore from "ngx.semaphore";
import { script } from "../../lib/redis/client";
import { onRedisFailure } from "../../lib/redis/fault";
import * as facts from "../../lib/facts";
import { key, part } from "../../lib/keys";
import { SUITE_VERSION } from "../../lib/version";
import type { Conf } from "./conf";
import { remainingAt } from "./counts";
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

type Headers = LuaTable<string, number>;

/** One configured window, with its header names. */
interface Window {
  name: string;
  limit: number;
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
}

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
/** Waits at most this many times for calls in flight (each wait ends when one of them returns). */
const MAX_FLIGHT_WAITS = 3;

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

/** Until the calls in flight could leave room for this request, wait for one of them to return. */
function awaitRoom(this: void, flight: Flight, conf: Conf): boolean {
  let waited = false;
  for (let i = 0; i < MAX_FLIGHT_WAITS && flight.calls > 0 && flight.calls >= flight.room; i++) {
    flight.waiters++;
    flight.sema.wait((2 * conf.redis.timeout) / 1000 + 0.1);
    flight.waiters--;
    waited = true;
  }
  return waited;
}

function landed(this: void, flight: Flight, room: number): void {
  flight.calls--;
  flight.room = room;
  if (flight.waiters > 0) flight.sema.post(flight.waiters);
}

const preparedByConf = setmetatable(new LuaTable<Conf, Prepared>(), { __mode: "k" });

const [blockedCache, lruErr] = lrucache.new<Blocked>(BLOCKED_SLOTS);
if (blockedCache === undefined) error(`${PLUGIN}: could not create the worker cache: ${lruErr}`);

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
  };
  preparedByConf.set(conf, prepared);
  return prepared;
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

/** Kong's headers: each window's limit and remaining; RateLimit-* for the window closest to its limit. */
function headersFor(this: void, p: Prepared, now: number, remaining: number[]): Headers {
  const headers: Headers = new LuaTable();
  let bestLimit = 0;
  let bestRemaining = -1;
  let bestLength = 0;
  let bestReset = 0;
  const windows = p.windows;
  for (let i = 0; i < windows.length; i++) {
    const w = windows[i];
    const left = remaining[i];
    headers.set(w.limitHeader, w.limit);
    headers.set(w.remainingHeader, left);
    const [start, length] = bounds(now, w.length);
    if (bestRemaining < 0 || left < bestRemaining || (left === bestRemaining && length > bestLength)) {
      bestLimit = w.limit;
      bestRemaining = left;
      bestLength = length;
      bestReset = start + length - now;
    }
  }
  headers.set(RATELIMIT_LIMIT, bestLimit);
  headers.set(RATELIMIT_REMAINING, bestRemaining);
  headers.set(RATELIMIT_RESET, math.max(1, ceil(bestReset / 1000)));
  return headers;
}

/** The decision for the request facts: the tightest window and what is left of it. */
function recordDecision(this: void, p: Prepared, admitted: boolean, source: facts.DecisionSource, remaining: number[] | undefined): void {
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

const handler: KongPluginHandler<Conf> = {
  // Kong's rate-limiting priority: after authentication, so consumers and credentials are known.
  PRIORITY: 910,
  VERSION: SUITE_VERSION,

  access(conf) {
    facts.enter(PLUGIN);
    const p = prepare(conf);
    const [kind, value] = identify(conf);
    const counterKey = key(PLUGIN, `${p.instance}:${kind}:${part(value)}`);
    // the request's time as nginx cached it for this event loop iteration (as Kong reads it)
    let now = floor(ngx.now() * 1000 + 0.5);

    const windows = p.windows;
    const sliding = p.algorithm === "sliding";

    const flight = flightOf(counterKey);
    // After a wait the request is decided at the time it is decided.
    if (awaitRoom(flight, conf)) now = floor(ngx.now() * 1000 + 0.5);
    const [blocked] = blockedCache.get(counterKey);
    if (blocked !== undefined && blocked.conf === conf && now < blocked.retryAt) {
      const remaining: number[] = [];
      for (let i = 0; i < windows.length && !conf.hide_client_headers; i++) {
        const w = windows[i];
        remaining[i] = remainingAt(sliding, w.limit, w.length, now, blocked.buckets[i], blocked.counts[i], blocked.prevs[i]);
      }
      recordDecision(p, false, "worker", remaining);
      return reject(conf, p, now, remaining, blocked.retryAt - now);
    }

    const args: (string | number)[] = [now, p.algorithm, 0, windows.length];
    let at = 4;
    let keep = 0;
    for (const w of windows) {
      const [start, length, prevStart, nextLength] = bounds(now, w.length);
      args[at] = w.name;
      args[at + 1] = w.limit;
      args[at + 2] = start;
      args[at + 3] = length;
      args[at + 4] = prevStart;
      args[at + 5] = nextLength;
      at += 6;
      // fixed: the current window; sliding: also the next, which weighs this one
      const until = (sliding ? start + length + nextLength : start + length) - now;
      if (until > keep) keep = until;
    }
    args[2] = keep + CLOCK_SKEW_MS;

    flight.calls++;
    const [reply, err] = script(conf.redis, { script: SCRIPT, keys: [counterKey], args });
    if (type(reply) !== "table") {
      // Nothing to learn from a failure: no request should queue behind failing calls.
      landed(flight, math.huge);
      recordDecision(p, conf.fault_tolerant, "fault", undefined);
      return onRedisFailure(PLUGIN, conf, reply === false ? `script ${SCRIPT} failed: ${err}` : err);
    }
    const r = reply as number[];
    const n = windows.length;
    const remaining: number[] = [];
    for (let i = 0; i < n; i++) remaining[i] = r[2 + i];
    // A wait comes with every rejection, and with an admission that used a window up:
    // either way no request of this identifier can be admitted before it has passed.
    const retryMs = r[1];
    if (retryMs > 0) {
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
    let room = remaining[0] ?? 0;
    for (let i = 1; i < n; i++) if (remaining[i] < room) room = remaining[i];
    landed(flight, room);
    recordDecision(p, r[0] === 1, "redis", remaining);
    if (r[0] !== 1) return reject(conf, p, now, remaining, retryMs);
    if (!conf.hide_client_headers) kong.ctx.plugin["headers"] = headersFor(p, now, remaining);
  },

  header_filter(_conf) {
    const headers = kong.ctx.plugin["headers"] as Headers | undefined;
    if (headers === undefined) return;
    for (const [name, value] of pairs(headers)) kong.response.set_header(name, value);
  },
};

export = handler;

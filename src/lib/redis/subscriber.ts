/**
 * A worker's pub/sub subscriber on one Redis (a plugin's invalidations): the one loop
 * redis-key-auth, redis-jwt and redis-ip-access run, one per plugin, pool and worker.
 *
 * It runs in a timer that owns its connection (client.connect: a new one, never one from
 * the keepalive pool, closed when it ends). Each time the subscription is made, first or
 * again, `onConnected` tells the plugin to drop what it trusts: messages published while
 * no subscription was up are lost. It listens with a read timeout (a stop or a worker
 * exit is seen within a second) and PINGs after HEARTBEAT seconds of silence, so a
 * connection that died without a FIN is noticed. A lost subscription is made again by
 * the loop itself, after a pause that doubles from BACKOFF_MIN to BACKOFF_MAX and starts
 * again at BACKOFF_MIN once a subscription stayed up STABLE_AFTER seconds; failures are
 * logged once per interval (fault.logThrottled) under the plugin's own topic. A loop that
 * raised is started again by its timer after BACKOFF_MAX: no request is needed.
 *
 * Redis Cluster: classic PUBLISH reaches every node, so client.connect takes any master.
 * Sentinel: a lost subscription makes the next connect ask the sentinels again.
 * Health (subscribed or not, subscriptions made) is reported to subscriptions.ts.
 */
import * as client from "./client";
import { logThrottled } from "./fault";
import type { RedisConf } from "./schema";
import * as subscriptions from "./subscriptions";

/** How often (ms) a quiet subscriber wakes to check whether it should stop. */
const READ_TIMEOUT_MS = 1000;
/** Seconds of silence after which the subscriber PINGs Redis, and waits that long again for the answer. */
const HEARTBEAT = 5;
export const BACKOFF_MIN = 0.2;
export const BACKOFF_MAX = 5;
/**
 * Seconds a subscription must have stayed up for its loss to retry at BACKOFF_MIN again:
 * a Redis that accepts SUBSCRIBE and drops the connection at once must not be hammered,
 * nor the plugin's caches be dropped by every reconnect.
 */
export const STABLE_AFTER = 5;

/** What the plugin does with its subscription. Each is called from the subscriber's timer. */
export interface Handlers {
  /** Subscribed (the first time or again): drop what relied on messages, which were lost meanwhile. */
  onConnected(this: void): void;
  /** A message on one of the channels. */
  onMessage(this: void, channel: string, payload: string): void;
  /** The subscription is gone (lost, or the subscriber stopped): messages may be missed until onConnected. */
  onLost?(this: void): void;
}

export interface Options extends Handlers {
  /** The plugin: the health record's label. */
  plugin: string;
  /** fault.logThrottled's topic: a subscriber failing must not silence the request path's reports. */
  logTopic: string;
  /** How log lines name it, e.g. "invalidation subscriber". */
  what: string;
  channels: string[];
}

export interface Subscriber {
  readonly options: Options;
  /** client.poolName of the Redis. */
  readonly pool: string;
  /** The latest config of that Redis: each (re)connect uses it. */
  conf: RedisConf;
  /** Its timer is running (or about to run again after a raise). */
  running: boolean;
  /** Asked to end: no config uses this Redis any more. Final. */
  stopped: boolean;
  /** A subscription is up: messages reach this worker. */
  up: boolean;
}

type ReadReply = (this: RestyRedis) => LuaMultiReturn<[RedisReply | undefined, string | undefined]>;
type Subscribe = (this: RestyRedis, ...channels: string[]) => LuaMultiReturn<[RedisReply | false | undefined, string | undefined]>;

// The subscribed connection accepts no ordinary command through lua-resty-redis, so the
// heartbeat goes out on the raw socket; Redis answers ["pong", ""] in subscribed mode.
const PING = "*1\r\n$4\r\nPING\r\n";

/** A subscriber for `conf`'s Redis, not started yet. */
export function create(this: void, conf: RedisConf, options: Options): Subscriber {
  return { options, pool: client.poolName(conf), conf, running: false, stopped: false, up: false };
}

function shouldStop(this: void, s: Subscriber): boolean {
  return s.stopped || ngx.worker.exiting();
}

/** Sleeps `seconds` in slices, so a stop or a worker exit is noticed within a second. */
function pause(this: void, s: Subscriber, seconds: number): void {
  let left = seconds;
  while (left > 0 && !shouldStop(s)) {
    const slice = math.min(left, 1);
    ngx.sleep(slice);
    left -= slice;
  }
}

/** A plugin's handler raising must not end the subscription (it is logged, throttled). */
function call(this: void, s: Subscriber, fn: ((this: void, channel: string, payload: string) => void) | undefined, channel?: string, payload?: string): void {
  if (fn === undefined) return;
  const [ok, err] = pcall(fn, channel as string, payload as string);
  if (!ok) logThrottled(s.options.logTopic, `${s.options.what} handler failed: ${tostring(err)}`);
}

function isOurs(this: void, s: Subscriber, channel: unknown): channel is string {
  for (const c of s.options.channels) if (c === channel) return true;
  return false;
}

/** Reads messages until the connection fails (returns why) or the subscriber should stop. */
function listen(this: void, s: Subscriber, red: RestyRedis): string | undefined {
  const readReply = red["read_reply"] as ReadReply;
  const sock = (red as RestyRedisWithSock)._sock!;
  const onMessage = s.options.onMessage;
  let lastHeard = ngx.now();
  let pingSentAt: number | undefined;
  while (!shouldStop(s)) {
    const [reply, err] = readReply.call(red);
    const now = ngx.now();
    if (reply === undefined) {
      if (err !== "timeout") return `lost the subscription: ${err}`;
      if (pingSentAt !== undefined) {
        if (now - pingSentAt >= HEARTBEAT) return "lost the subscription: no answer to PING";
      } else if (now - lastHeard >= HEARTBEAT) {
        const [sent, sendErr] = sock.send(PING);
        if (sent === undefined) return `lost the subscription: ${sendErr}`;
        pingSentAt = now;
      }
      continue;
    }
    lastHeard = now;
    pingSentAt = undefined;
    const message = reply as string[];
    if (type(reply) === "table" && message[0] === "message" && isOurs(s, message[1]) && type(message[2]) === "string") {
      call(s, onMessage, message[1], message[2]);
    }
  }
  return undefined;
}

function markDown(this: void, s: Subscriber, health: subscriptions.Subscription): void {
  if (!s.up) return;
  s.up = false;
  subscriptions.lost(health);
  call(s, s.options.onLost);
}

function loop(this: void, s: Subscriber): void {
  const { what, logTopic, channels, plugin } = s.options;
  const health = subscriptions.track(plugin, s.pool);
  let backoff = BACKOFF_MIN;
  while (!shouldStop(s)) {
    const [red, connectErr] = client.connect(s.conf);
    let failure: string | undefined;
    if (red === undefined) {
      failure = `${what} could not connect: ${connectErr}`;
    } else {
      const [ok, subErr] = (red["subscribe"] as Subscribe).call(red, ...channels);
      if (ok === undefined || ok === false) {
        failure = `${what} could not SUBSCRIBE: ${subErr}`;
      } else {
        // Messages published while no subscription was up are lost: start clean.
        call(s, s.options.onConnected);
        s.up = true;
        subscriptions.subscribed(health);
        red.set_timeout(READ_TIMEOUT_MS);
        const upSince = ngx.now();
        const lost = listen(s, red);
        markDown(s, health);
        if (lost !== undefined) {
          failure = `${what} ${lost}; reconnecting`;
          client.connectionLost(s.conf);
          if (ngx.now() - upSince >= STABLE_AFTER) backoff = BACKOFF_MIN;
        }
      }
      // A subscribed connection must never go back to the pool.
      red.close();
    }
    if (failure !== undefined && !shouldStop(s)) {
      logThrottled(logTopic, failure);
      pause(s, backoff);
      backoff = math.min(backoff * 2, BACKOFF_MAX);
    }
  }
  subscriptions.forget(plugin, s.pool);
}

/** The timer: runs the loop until told to stop; a loop that raised is started again after BACKOFF_MAX. */
function run(this: void, premature: boolean, s: Subscriber): void {
  if (!premature) {
    const [ok, err] = pcall(loop, s);
    if (!ok) {
      logThrottled(s.options.logTopic, `${s.options.what} failed: ${tostring(err)}`);
      markDown(s, subscriptions.track(s.options.plugin, s.pool));
      if (!shouldStop(s)) {
        const [again] = ngx.timer.at(BACKOFF_MAX, run, s);
        if (again !== undefined) return;
      }
      subscriptions.forget(s.options.plugin, s.pool);
    }
  }
  s.up = false;
  s.running = false;
}

/**
 * Starts the subscriber unless it runs or was stopped. Only where timers can be created:
 * not in init (the master) nor in header_filter, body_filter or log.
 */
export function start(this: void, s: Subscriber): void {
  if (s.running || s.stopped) return;
  const phase = ngx.get_phase();
  if (phase === "init" || phase === "header_filter" || phase === "body_filter" || phase === "log") return;
  s.running = true;
  const [ok, err] = ngx.timer.at(0, run, s);
  if (ok === undefined) {
    s.running = false;
    logThrottled(s.options.logTopic, `could not start the ${s.options.what}: ${err}`);
  }
}

/** Ends it for good (within a second): no config uses its Redis any more. */
export function stop(this: void, s: Subscriber): void {
  s.stopped = true;
}

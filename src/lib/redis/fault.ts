/**
 * What a Redis failure does to a request, decided in the phase handler: with
 * `fault_tolerant` the request goes on and the failure is logged once per interval (not
 * once per request: a dead Redis under load must not flood the log); without it the
 * request ends with Kong's 500.
 *
 * The interval is kept per plugin instance and Redis endpoint, and the line names both:
 * one instance's failing Redis must not hide another's (a wrong password on one would
 * otherwise silence a TLS failure on the other for the whole interval).
 */
import * as facts from "../facts";
import { endpointOf, type RedisConf } from "./schema";

const LOG_INTERVAL = 10;
/** Throttle states kept per worker; past this (configs come and go) they start over. */
const MAX_LOG_STATES = 1000;

/**
 * Who failed: a plugin instance's config as Kong hands it to the handler (Kong sets
 * `__plugin_id` and `plugin_instance_name` on it), or just the Redis it uses.
 */
export interface FailureSource {
  redis: RedisConf;
  __plugin_id?: string;
  plugin_instance_name?: string;
}

interface LogState {
  lastAt: number;
  suppressed: number;
}
let logStates = new LuaTable<string, LogState>();
let logStateCount = 0;

function text(this: void, value: unknown): string | undefined {
  return type(value) === "string" && value !== "" ? (value as string) : undefined;
}

/**
 * "instance NAME (id ID), redis HOST:PORT/DB": never the password. On a cluster the
 * failing node is part of it (the client names it in `err`), so one failed shard's
 * reports do not silence another's.
 */
function sourceOf(this: void, source: FailureSource, err?: string): string {
  const name = text(source.plugin_instance_name);
  const id = text(source.__plugin_id);
  let endpoint = endpointOf(source.redis);
  const [node] = err !== undefined && string.sub(endpoint, 1, 14) === "redis cluster " ? string.match(err, "redis at ([^%s]+:%d+)") : [undefined];
  if (node !== undefined) endpoint = `${endpoint}, node ${node}`;
  if (name !== undefined) return `instance ${name} (id ${id ?? "none"}), ${endpoint}`;
  if (id !== undefined) return `instance ${id}, ${endpoint}`;
  return endpoint;
}

/**
 * Logs `message` for `plugin` at most once per LOG_INTERVAL seconds in this worker, per
 * plugin instance and Redis endpoint when `source` says which (and the line names them).
 */
export function logThrottled(this: void, plugin: string, message: string, source?: FailureSource): void {
  const where = source !== undefined ? sourceOf(source, message) : undefined;
  const throttleKey = where !== undefined ? `${plugin}\0${where}` : plugin;
  const now = ngx.now();
  let state = logStates.get(throttleKey);
  if (state === undefined) {
    if (logStateCount >= MAX_LOG_STATES) {
      logStates = new LuaTable();
      logStateCount = 0;
    }
    state = { lastAt: -LOG_INTERVAL, suppressed: 0 };
    logStates.set(throttleKey, state);
    logStateCount++;
  }
  if (now - state.lastAt < LOG_INTERVAL) {
    state.suppressed++;
    return;
  }
  const more = state.suppressed > 0 ? ` (${state.suppressed} more since the last report)` : "";
  state.lastAt = now;
  state.suppressed = 0;
  ngx.log(ngx.ERR, `[kong] [${plugin}] ${message}${where !== undefined ? ` (${where})` : ""}${more}`);
}

const UNEXPECTED = { message: "An unexpected error occurred" };

/**
 * Call from a phase handler, with the handler's `conf`, when Redis failed.
 * Fault-tolerant: logs (throttled) and returns, so the handler goes on without Redis.
 * Otherwise logs and ends the request 500.
 */
export function onRedisFailure(this: void, plugin: string, conf: FailureSource & { fault_tolerant: boolean }, err: string | undefined): void {
  const faultTolerant = conf.fault_tolerant;
  const message = `redis unavailable: ${err ?? "unknown error"}${faultTolerant ? " (fault_tolerant: request let through)" : ""}`;
  facts.error(plugin, message);
  logThrottled(plugin, message, conf);
  if (!faultTolerant) return kong.response.exit(500, UNEXPECTED);
}

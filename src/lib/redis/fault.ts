/**
 * What a Redis failure does to a request, decided in the phase handler: with
 * `fault_tolerant` the request goes on and the failure is logged once per interval per
 * plugin (not once per request: a dead Redis under load must not flood the log);
 * without it the request ends with Kong's 500.
 */

const LOG_INTERVAL = 10;

interface LogState {
  lastAt: number;
  suppressed: number;
}
const logStates = new LuaTable<string, LogState>();

/** Logs `message` for `plugin` at most once per LOG_INTERVAL seconds in this worker. */
export function logThrottled(this: void, plugin: string, message: string): void {
  const now = ngx.now();
  let state = logStates.get(plugin);
  if (state === undefined) {
    state = { lastAt: -LOG_INTERVAL, suppressed: 0 };
    logStates.set(plugin, state);
  }
  if (now - state.lastAt < LOG_INTERVAL) {
    state.suppressed++;
    return;
  }
  const more = state.suppressed > 0 ? ` (${state.suppressed} more since the last report)` : "";
  state.lastAt = now;
  state.suppressed = 0;
  ngx.log(ngx.ERR, `[kong] [${plugin}] ${message}${more}`);
}

const UNEXPECTED = { message: "An unexpected error occurred" };

/**
 * Call from a phase handler when Redis failed. Fault-tolerant: logs (throttled) and
 * returns, so the handler goes on without Redis. Otherwise logs and ends the request 500.
 */
export function onRedisFailure(this: void, plugin: string, faultTolerant: boolean, err: string | undefined): void {
  logThrottled(plugin, `redis unavailable: ${err ?? "unknown error"}${faultTolerant ? " (fault_tolerant: request let through)" : ""}`);
  if (!faultTolerant) return kong.response.exit(500, UNEXPECTED);
}

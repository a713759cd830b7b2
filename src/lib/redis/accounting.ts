/**
 * Per-request Redis accounting in kong.ctx.shared.krs_redis: round trips and time spent,
 * for the metrics and logging plugins. Outside a request (timers) nothing is recorded.
 */

export interface RedisAccounting {
  round_trips: number;
  /** Milliseconds spent waiting on Redis in this request. */
  time_ms: number;
  errors: number;
}

const REQUEST_PHASES = new LuaTable<string, boolean>();
for (const phase of ["rewrite", "access", "content", "header_filter", "body_filter", "log", "balancer"]) REQUEST_PHASES.set(phase, true);

/**
 * One logical call that made `roundTrips` round trips (AUTH/SELECT on a fresh connection
 * and a circuit breaker probe's PING not counted).
 */
export function record(this: void, startedAt: number, roundTrips: number, failed: boolean): void {
  if (!REQUEST_PHASES.has(ngx.get_phase())) return;
  ngx.update_time();
  const shared = kong.ctx.shared;
  let acc = shared["krs_redis"] as RedisAccounting | undefined;
  if (acc === undefined) {
    acc = { round_trips: 0, time_ms: 0, errors: 0 };
    shared["krs_redis"] = acc;
  }
  acc.round_trips += roundTrips;
  acc.time_ms += (ngx.now() - startedAt) * 1000;
  if (failed) acc.errors++;
}

/** ngx.now() with the clock refreshed, to time one round trip. */
export function start(this: void): number {
  ngx.update_time();
  return ngx.now();
}

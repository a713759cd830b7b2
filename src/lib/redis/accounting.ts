/**
 * Per-request Redis accounting: round trips, time spent and failures, recorded in the
 * request facts (src/lib/facts.ts) for the metrics and logging plugins. Outside a request
 * (timers) nothing is recorded.
 */
import * as facts from "../facts";

/**
 * One logical call that made `roundTrips` round trips (AUTH/SELECT on a fresh connection
 * and a circuit breaker probe's PING not counted).
 */
export function record(this: void, startedAt: number, roundTrips: number, failed: boolean): void {
  if (!facts.inRequest()) return;
  ngx.update_time();
  facts.redisCall(roundTrips, (ngx.now() - startedAt) * 1000, failed);
}

/** ngx.now() with the clock refreshed, to time one round trip. */
export function start(this: void): number {
  ngx.update_time();
  return ngx.now();
}

/**
 * How many admissions a worker asks for in its next lease of one counter set (sync: lease).
 * Pure arithmetic (no ngx), so busted can test it.
 *
 * The ask follows the worker's own observed rate: the admissions it used of its last lease
 * over the time since it took that lease, times lease_ttl (what it would use before the
 * lease has to go back). It at most doubles from one lease to the next (a burst does not
 * jump to lease_max on one short interval), starts at 1 (a new identifier is decided
 * exactly), covers the requests already waiting in this worker for the same counters, and
 * never exceeds lease_max. Redis then grants at most 1/8 of the room left
 * (redis-lua/rate-limit-lease-1.lua), so near a limit the leases are 1.
 */

const ceil = math.ceil;

/**
 * @param lastGranted admissions of the worker's previous lease of these counters (0: none)
 * @param lastUsed    how many of them it used
 * @param sinceMs     milliseconds since it took that lease
 * @param ttlMs       lease_ttl, in milliseconds
 * @param leaseMax    lease_max
 * @param waiting     other requests of these counters waiting in this worker for this lease
 */
export function wantFor(this: void, lastGranted: number, lastUsed: number, sinceMs: number, ttlMs: number, leaseMax: number, waiting: number): number {
  let want = 1;
  if (lastGranted > 0 && lastUsed > 0) {
    const elapsed = sinceMs < 1 ? 1 : sinceMs;
    want = ceil((lastUsed * ttlMs) / elapsed);
    const most = 2 * lastUsed;
    if (want > most) want = most;
    if (want < 1) want = 1;
  }
  if (want < waiting + 1) want = waiting + 1;
  if (want > leaseMax) want = leaseMax;
  return want;
}

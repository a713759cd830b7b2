/**
 * Per-worker circuit breaker, one per connection pool. It exists to stop paying the
 * *timeout*: a Redis that hangs costs every request `timeout` ms, a Redis that refuses
 * costs a millisecond. So only slow failures (a timeout, or a failure that took at least
 * SLOW_FRACTION of the configured timeout) count: after SLOW_FAILURE_THRESHOLD of them
 * in a row the circuit opens and calls fail at once. Fast failures (connection refused,
 * reset) are reported to the caller as they are and never open it: refusing requests
 * for a cool-down would only turn a Redis blip into an outage.
 *
 * Open, it lets one call through every PROBE_INTERVAL (the probe) and refuses the others
 * while that probe is in flight: an answer (even an error reply) or a fast failure
 * closes the circuit, a slow failure keeps it open for one more interval. A probe that
 * never reports (its request died) gives its turn up after PROBE_LEASE_TIMEOUTS
 * timeouts.
 * Redis error replies (-ERR …) are answers, not failures: they never trip it.
 */

const SLOW_FAILURE_THRESHOLD = 3;
/** Seconds between probes while open: recovery takes at most this once Redis answers. */
const PROBE_INTERVAL = 0.1;
const SLOW_FRACTION = 0.5;
/** Connect, TLS, AUTH, SELECT and the command each have `timeout`; one more for margin. */
const PROBE_LEASE_TIMEOUTS = 6;

export type Outcome = "answered" | "slow" | "fast";

interface Circuit {
  slowFailures: number;
  /** ngx.now() from which the next probe may go; 0 while closed. */
  retryAt: number;
  /** ngx.now() until which a probe is in flight; 0 when none. */
  probeUntil: number;
}

const circuits = new LuaTable<string, Circuit>();
/** Every pool this worker has called (closed circuits included), for the metrics' gauges. */
const known = new LuaTable<string, boolean>();

/** What a failed call tells the breaker: "slow" when it cost (close to) the timeout. */
export function classify(this: void, err: string | undefined, elapsedSeconds: number, timeoutMs: number): Outcome {
  if (err === "timeout" || elapsedSeconds * 1000 >= timeoutMs * SLOW_FRACTION) return "slow";
  return "fast";
}

/**
 * Before a call: undefined when it may go ahead (and `probe` true when it is the one call
 * let through an open circuit: report its outcome with `probe` set), otherwise the
 * fail-fast error.
 */
export function check(this: void, pool: string, timeoutMs: number): LuaMultiReturn<[string | undefined, boolean]> {
  if (!known.has(pool)) known.set(pool, true);
  const circuit = circuits.get(pool);
  if (circuit === undefined || circuit.retryAt === 0) return $multi(undefined, false);
  const now = ngx.now();
  if (now < circuit.retryAt || now < circuit.probeUntil) {
    return $multi(`redis circuit open after ${circuit.slowFailures} slow failures (probing every ${PROBE_INTERVAL * 1000} ms)`, false);
  }
  circuit.probeUntil = now + PROBE_LEASE_TIMEOUTS * timeoutMs / 1000;
  return $multi(undefined, true);
}

/** After a call: what happened, and whether it was the probe `check` let through. */
export function report(this: void, pool: string, outcome: Outcome, probe: boolean): void {
  const circuit = circuits.get(pool);
  if (circuit === undefined && outcome !== "slow") return;
  if (outcome === "answered") {
    circuits.delete(pool);
    return;
  }
  if (outcome === "fast") {
    // Redis fails without costing the timeout: there is nothing left to protect, so a
    // fast-failing probe closes the circuit. An ordinary call's fast failure changes
    // nothing: it neither opens the circuit nor wipes out a run of slow failures.
    if (probe) circuits.delete(pool);
    return;
  }
  if (circuit === undefined) {
    circuits.set(pool, { slowFailures: 1, retryAt: 0, probeUntil: 0 });
    return;
  }
  circuit.slowFailures++;
  const now = ngx.now();
  if (circuit.retryAt === 0) {
    if (circuit.slowFailures >= SLOW_FAILURE_THRESHOLD) circuit.retryAt = now + PROBE_INTERVAL;
  } else if (probe) {
    circuit.retryAt = now + PROBE_INTERVAL;
    circuit.probeUntil = 0;
  }
}

/** True while this worker's circuit for `pool` is open (for metrics; changes nothing). */
export function isOpen(this: void, pool: string): boolean {
  const circuit = circuits.get(pool);
  return circuit !== undefined && circuit.retryAt !== 0;
}

/** The pools this worker has called, each once (one per node on a cluster). */
export function knownPools(this: void): string[] {
  const out: string[] = [];
  for (const [pool] of pairs(known)) out.push(pool);
  return out;
}

/**
 * The endpoints ("host:port/database") whose circuit is open in this worker, for the
 * reporting plugins. Pool names carry a hash of the credentials: it never leaves here.
 */
export function openEndpoints(this: void): string[] {
  const out: string[] = [];
  for (const [pool, circuit] of pairs(circuits)) {
    if (circuit.retryAt === 0) continue;
    out.push(endpointOfPool(pool));
  }
  return out;
}

/** "host:port/database" of a pool name (connection.ts nodePool): its TLS and credential parts never leave here. */
export function endpointOfPool(this: void, pool: string): string {
  const [host, port, database] = string.match(pool, "^krs:(.*):(%d+):(%d+):[^:]*:?[^:]*:[^:]*$");
  return host !== undefined ? `${host}:${port}/${database}` : "unknown";
}

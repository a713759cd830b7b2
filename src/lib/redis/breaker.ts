/**
 * Per-worker circuit breaker, one per connection pool. After FAILURE_THRESHOLD
 * consecutive network failures (connect refused, timeouts) calls fail fast for
 * COOL_DOWN seconds instead of waiting `timeout` ms each; then one call probes Redis
 * again: success closes the circuit, failure opens it for another cool-down.
 * Redis error replies (-ERR …) are answers, not failures: they never trip it.
 */

const FAILURE_THRESHOLD = 3;
const COOL_DOWN = 1;

interface Circuit {
  failures: number;
  /** ngx.now() until which calls fail fast; 0 when closed. */
  openUntil: number;
}

const circuits = new LuaTable<string, Circuit>();

/** undefined when a call may go ahead; otherwise the fail-fast error. */
export function check(this: void, pool: string): string | undefined {
  const circuit = circuits.get(pool);
  if (circuit === undefined || circuit.openUntil === 0) return undefined;
  const now = ngx.now();
  if (now < circuit.openUntil) {
    return `redis circuit open after ${circuit.failures} failures (retrying in ${math.ceil(circuit.openUntil - now)}s)`;
  }
  // Half-open: this call probes; the others keep failing fast until it reports.
  circuit.openUntil = now + COOL_DOWN;
  return undefined;
}

export function success(this: void, pool: string): void {
  const circuit = circuits.get(pool);
  if (circuit !== undefined) circuits.delete(pool);
}

export function failure(this: void, pool: string): void {
  let circuit = circuits.get(pool);
  if (circuit === undefined) {
    circuit = { failures: 0, openUntil: 0 };
    circuits.set(pool, circuit);
  }
  circuit.failures++;
  if (circuit.failures >= FAILURE_THRESHOLD) circuit.openUntil = ngx.now() + COOL_DOWN;
}

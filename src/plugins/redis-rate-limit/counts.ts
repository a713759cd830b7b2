/**
 * redis-lua/rate-limit-1.lua's arithmetic, on the gateway: what the script would answer
 * now for counters it reported earlier, as long as nothing has been admitted since (which
 * holds until the wait it reported has passed: no request can be admitted before then).
 * The worker's deny cache answers with it, so its headers are the ones a call to Redis
 * would have produced at that moment. Pure Lua arithmetic (no ngx), so busted can test it.
 */
import { bounds } from "./windows";

const floor = math.floor;
const ceil = math.ceil;

/** The resolution of the sliding weight: the script's STEPS (a power of two, so /STEPS is exact). */
const STEPS = 262144;

/** Requests one window admits `elapsed` ms into it, given its count and the previous window's (the script's room_in). */
export function roomIn(this: void, sliding: boolean, limit: number, length: number, elapsed: number, curr: number, prev: number): number {
  if (!sliding) return limit - curr;
  const weight = ceil(((length - elapsed) * STEPS) / length);
  return floor((limit * STEPS - prev * weight) / STEPS) - curr;
}

/**
 * The remaining count the script reports at `now` for a window it last decided with
 * counters `bucket`, `curr`, `prev`, when it rejects: the room as it stands, never negative.
 * `windowLength` is the window's configured length (ms, or windows.MONTH / YEAR). The
 * script's choice of counters is repeated: a stored window at or after the one containing
 * `now` is used as it is (a node whose clock is ahead wrote it), the one just before
 * becomes the previous window, anything older counts nothing.
 */
export function remainingAt(this: void, sliding: boolean, limit: number, windowLength: number, now: number, bucket: number, curr: number, prev: number): number {
  const [start, length, prevStart] = bounds(now, windowLength);
  let counted = start;
  let current = 0;
  let previous = 0;
  if (bucket >= start) {
    counted = bucket;
    current = curr;
    previous = prev;
  } else if (bucket === prevStart) {
    previous = curr;
  }
  let elapsed = now - counted;
  if (elapsed < 0) elapsed = 0;
  const room = roomIn(sliding, limit, length, elapsed, current, previous);
  return room < 1 ? 0 : room;
}

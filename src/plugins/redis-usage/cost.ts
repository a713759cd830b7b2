/** What a request costs, from the upstream's header or the body size. Pure Lua, so busted can test it. */
import { MAX_COST } from "./conf";

const ceil = math.ceil;

/** A whole number of at most MAX_COST, else undefined (NaN, negative, fractions, hex, exponents, huge all fall back). */
export function parseCost(this: void, value: unknown): number | undefined {
  if (type(value) !== "string") return undefined;
  const [digits] = string.match(value as string, "^%s*(%d+)%s*$");
  if (digits === undefined || (digits as string).length > 10) return undefined;
  const n = tonumber(digits)!;
  return n <= MAX_COST ? n : undefined;
}

/** `perKb` for every started KiB of the body actually sent, at most MAX_COST. */
export function costPerKb(this: void, perKb: number, bodyBytes: number): number {
  return math.min(MAX_COST, perKb * ceil(bodyBytes / 1024));
}

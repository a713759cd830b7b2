/**
 * redis-usage's UTC day and month buckets, on the gateway's clock (epoch milliseconds).
 * Redis scripts have no clock and no os.date: the gateway names the bucket a request
 * falls in and when its hash may expire, and passes both. Pure Lua arithmetic (no ngx,
 * no os.date), so busted can test it at the boundaries with injected timestamps.
 */

const floor = math.floor;
const DAY_MS = 86400000;

/** Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
export function daysFromCivil(this: void, year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = floor(y / 400);
  const yoe = y - era * 400;
  const mp = month > 2 ? month - 3 : month + 9;
  const doy = floor((153 * mp + 2) / 5) + day - 1;
  const doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

/** Year, month (1..12) and day (1..31) of a day count since 1970-01-01 (civil_from_days). */
export function civilFromDays(this: void, days: number): LuaMultiReturn<[number, number, number]> {
  const z = days + 719468;
  const era = floor(z / 146097);
  const doe = z - era * 146097;
  const yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365);
  const doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100));
  const mp = floor((5 * doy + 2) / 153);
  const day = doy - floor((153 * mp + 2) / 5) + 1;
  const month = mp < 10 ? mp + 3 : mp - 9;
  const year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  return $multi(year, month, day);
}

/** Epoch ms at which month `month` of `year` starts; `month` may run any number of months past either end of the year. */
export function monthStart(this: void, year: number, month: number): number {
  const index = year * 12 + (month - 1);
  const y = floor(index / 12);
  return daysFromCivil(y, index - y * 12 + 1, 1) * DAY_MS;
}

/** A bucket: its id (`YYYYMMDD` or `YYYYMM`), its start and the start of the next one (epoch ms). */
export interface Bucket {
  id: string;
  start: number;
  finish: number;
}

/** The UTC day containing `now`. */
export function dayOf(this: void, now: number): Bucket {
  const days = floor(now / DAY_MS);
  const [year, month, day] = civilFromDays(days);
  return { id: string.format("%04d%02d%02d", year, month, day), start: days * DAY_MS, finish: (days + 1) * DAY_MS };
}

/** The UTC calendar month containing `now`. */
export function monthOf(this: void, now: number): Bucket {
  const [year, month] = civilFromDays(floor(now / DAY_MS));
  return { id: string.format("%04d%02d", year, month), start: monthStart(year, month), finish: monthStart(year, month + 1) };
}

/** When a day bucket's hash may go: `retentionDays` whole days after the day ends. */
export function dayExpiry(this: void, day: Bucket, retentionDays: number): number {
  return day.finish + retentionDays * DAY_MS;
}

/** When a month bucket's hash may go: `retentionMonths` calendar months after the month ends. */
export function monthExpiry(this: void, month: Bucket, retentionMonths: number): number {
  const [year, m] = civilFromDays(floor(month.start / DAY_MS));
  return monthStart(year, m + 1 + retentionMonths);
}

/**
 * A bucket id the read API accepts: `YYYYMMDD` (or `YYYY-MM-DD`) for days, `YYYYMM` (or
 * `YYYY-MM`) for months, a real date; undefined for anything else.
 */
export function parseBucket(this: void, period: "day" | "month", text: string): Bucket | undefined {
  const [compact] = string.gsub(text, "%-", "");
  if (period === "month") {
    const [y, m] = string.match(compact, "^(%d%d%d%d)(%d%d)$");
    if (y === undefined || text.length > 7) return undefined;
    const month = tonumber(m)!;
    if (month < 1 || month > 12) return undefined;
    return monthOf(monthStart(tonumber(y)!, month));
  }
  const [y, m, d] = string.match(compact, "^(%d%d%d%d)(%d%d)(%d%d)$");
  if (y === undefined || text.length > 10) return undefined;
  const year = tonumber(y)!;
  const month = tonumber(m)!;
  const day = tonumber(d)!;
  if (month < 1 || month > 12 || day < 1) return undefined;
  const days = daysFromCivil(year, month, day);
  const [ry, rm] = civilFromDays(days);
  // 2026-02-30 names March 2nd: not a date.
  if (ry !== year || rm !== month) return undefined;
  return dayOf(days * DAY_MS);
}

/** The bucket after `b` of the same period. */
export function nextBucket(this: void, period: "day" | "month", b: Bucket): Bucket {
  return period === "day" ? dayOf(b.finish) : monthOf(b.finish);
}

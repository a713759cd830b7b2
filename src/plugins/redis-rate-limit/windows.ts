/**
 * The rate-limit windows and their bounds on the gateway's clock (epoch milliseconds, UTC).
 * Seconds, minutes, hours and days are aligned on the epoch (a day starts at 00:00 UTC);
 * a month and a year are the calendar month and year in UTC, as Kong's rate-limiting
 * counts them. Pure Lua arithmetic (no ngx, no os.date), so busted can test it.
 */

const floor = math.floor;

export type WindowName = "second" | "minute" | "hour" | "day" | "month" | "year";

/** The `length` of the calendar windows, whose length varies: a month, a year (UTC). */
export const MONTH = 0;
export const YEAR = -1;

/** Every window, shortest first: config field, header suffix, length in ms (or MONTH, YEAR). */
export const WINDOWS: { name: WindowName; title: string; length: number }[] = [
  { name: "second", title: "Second", length: 1000 },
  { name: "minute", title: "Minute", length: 60000 },
  { name: "hour", title: "Hour", length: 3600000 },
  { name: "day", title: "Day", length: 86400000 },
  { name: "month", title: "Month", length: MONTH },
  { name: "year", title: "Year", length: YEAR },
];

const DAY = 86400000;

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

/** The year and month (1..12) of a day count since 1970-01-01 (civil_from_days). */
export function civilFromDays(this: void, days: number): LuaMultiReturn<[number, number]> {
  const z = days + 719468;
  const era = floor(z / 146097);
  const doe = z - era * 146097;
  const yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365);
  const doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100));
  const mp = floor((5 * doy + 2) / 153);
  const month = mp < 10 ? mp + 3 : mp - 9;
  const year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  return $multi(year, month);
}

function monthStart(this: void, year: number, month: number): number {
  // month may run one past either end of the year
  if (month < 1) return daysFromCivil(year - 1, month + 12, 1) * DAY;
  if (month > 12) return daysFromCivil(year + 1, month - 12, 1) * DAY;
  return daysFromCivil(year, month, 1) * DAY;
}

// The month containing the last `now` asked about, kept until the clock leaves it.
let cachedStart = 0;
let cachedEnd = 0;
let cachedPrevStart = 0;
let cachedNextLength = 0;

function computeMonth(this: void, now: number): void {
  const [year, month] = civilFromDays(floor(now / DAY));
  cachedStart = monthStart(year, month);
  cachedEnd = monthStart(year, month + 1);
  cachedPrevStart = monthStart(year, month - 1);
  cachedNextLength = monthStart(year, month + 2) - cachedEnd;
}

// The same for the year.
let yearStart = 0;
let yearEnd = 0;
let yearPrevStart = 0;
let yearNextLength = 0;

function computeYear(this: void, now: number): void {
  const [year] = civilFromDays(floor(now / DAY));
  yearStart = daysFromCivil(year, 1, 1) * DAY;
  yearEnd = daysFromCivil(year + 1, 1, 1) * DAY;
  yearPrevStart = daysFromCivil(year - 1, 1, 1) * DAY;
  yearNextLength = daysFromCivil(year + 2, 1, 1) * DAY - yearEnd;
}

/**
 * The window of `length` ms (or MONTH, YEAR: the calendar one) containing `now`: its
 * start and length, the start of the window before it, and the length of the window
 * after it.
 */
export function bounds(this: void, now: number, length: number): LuaMultiReturn<[number, number, number, number]> {
  if (length > 0) {
    const start = now - (now % length);
    return $multi(start, length, start - length, length);
  }
  if (length === MONTH) {
    if (now < cachedStart || now >= cachedEnd) computeMonth(now);
    return $multi(cachedStart, cachedEnd - cachedStart, cachedPrevStart, cachedNextLength);
  }
  if (now < yearStart || now >= yearEnd) computeYear(now);
  return $multi(yearStart, yearEnd - yearStart, yearPrevStart, yearNextLength);
}

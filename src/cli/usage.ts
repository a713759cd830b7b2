/**
 * `krs usage`: redis-usage's counters and quota overrides, read and written straight in
 * Redis (same keys as the plugin: docs/redis-keys.md).
 *
 *   krs usage show --consumer C | --route R | --service S [--month M | --day D | --from X --to Y] [--json|--csv]
 *   krs usage top --month M [--by consumer|route|service] [--limit N] [--json|--csv]
 *   krs usage quota set|get|clear CONSUMER [--day N] [--month N]
 *
 * A consumer is named as the plugin meters it: its username (else custom_id, else id).
 * CSV is a billing export: one row per subject per bucket, a header line first.
 */
import { createHash } from "node:crypto";
import type { Command } from "commander";
import { Option } from "commander";
import type { Cluster, Redis } from "ioredis";
import { jsonOption, positiveInt, UsageError, type Register } from "./command.js";
import { openRedis, redisTargetFrom, withRedisTarget, type RedisTargetFlags } from "./redis.js";
import { scanAll, totalDbsize } from "./scan.js";
import { progress } from "./ui.js";

export const FIELDS = ["requests", "bytes_in", "bytes_out", "cost", "2xx", "3xx", "4xx", "5xx", "quota_requests", "quota_cost"] as const;
export type Kind = "consumer" | "route" | "service" | "ip" | "credential";
const MAX_BUCKETS = 400;
const MAX_QUOTA = 1_000_000_000_000;

/** src/lib/keys.ts part(): kept when short and plain, else `#` + base64url(SHA-1). */
export function part(value: string): string {
  if (Buffer.byteLength(value) <= 64 && /^[A-Za-z0-9._@-]+$/.test(value)) return value;
  return "#" + createHash("sha1").update(value).digest("base64url");
}

export function tagOf(kind: Kind, name: string): string {
  return `${kind}:${part(name)}`;
}

export function bucketKey(kind: Kind, name: string, period: "day" | "month", id: string): string {
  return `krs:redis-usage:v1:{${tagOf(kind, name)}}:${period === "day" ? "d" : "m"}:${id}`;
}

export function quotaKey(consumer: string): string {
  return `krs:redis-usage:v1:{${tagOf("consumer", consumer)}}:quota`;
}

export interface Row {
  kind: Kind;
  subject: string;
  period: "day" | "month";
  /** YYYY-MM-DD or YYYY-MM */
  bucket: string;
  counts: Record<(typeof FIELDS)[number], number>;
}

/** "2026-11" / "2026-11-30" → its period and bucket id; throws a UsageError naming the flag. */
export function parseBucket(flag: string, value: string, period?: "day" | "month"): { period: "day" | "month"; id: string; date: Date } {
  const m = /^(\d{4})-(\d{2})(?:-(\d{2}))?$/.exec(value);
  const p = m === null ? undefined : m[3] === undefined ? "month" : "day";
  if (m === null || (period !== undefined && p !== period)) throw new UsageError(`${flag}: expected ${period === "day" ? "YYYY-MM-DD" : period === "month" ? "YYYY-MM" : "YYYY-MM or YYYY-MM-DD"}, got '${value}'`);
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3] ?? 1)];
  const date = new Date(Date.UTC(y, mo - 1, d));
  if (mo < 1 || mo > 12 || date.getUTCMonth() !== mo - 1 || date.getUTCDate() !== d) throw new UsageError(`${flag}: no such ${p}: '${value}'`);
  return { period: p!, id: value.replace(/-/g, ""), date };
}

function label(period: "day" | "month", date: Date): string {
  return date.toISOString().slice(0, period === "day" ? 10 : 7);
}

/** The buckets from `from` to `to` (inclusive), at most MAX_BUCKETS. */
export function bucketRange(period: "day" | "month", from: Date, to: Date): { id: string; label: string }[] {
  if (to < from) throw new UsageError("--to: before --from");
  const out: { id: string; label: string }[] = [];
  for (let d = new Date(from); d <= to; period === "day" ? d.setUTCDate(d.getUTCDate() + 1) : d.setUTCMonth(d.getUTCMonth() + 1)) {
    if (out.length >= MAX_BUCKETS) throw new UsageError(`--to: at most ${MAX_BUCKETS} ${period}s from --from`);
    const l = label(period, d);
    out.push({ id: l.replace(/-/g, ""), label: l });
  }
  return out;
}

function countsOf(values: (string | null)[]): Record<(typeof FIELDS)[number], number> | undefined {
  if (values.every((v) => v === null)) return undefined;
  return Object.fromEntries(FIELDS.map((f, i) => [f, Number(values[i] ?? 0)])) as Record<(typeof FIELDS)[number], number>;
}

export async function show(redis: Redis | Cluster, kind: Kind, subject: string, period: "day" | "month", buckets: { id: string; label: string }[]): Promise<Row[]> {
  const pipeline = redis.pipeline();
  for (const b of buckets) pipeline.hmget(bucketKey(kind, subject, period, b.id), ...FIELDS);
  const replies = (await pipeline.exec()) ?? [];
  const rows: Row[] = [];
  buckets.forEach((b, i) => {
    const [err, values] = replies[i] ?? [];
    if (err) throw err;
    const counts = countsOf(values as (string | null)[]);
    if (counts !== undefined) rows.push({ kind, subject, period, bucket: b.label, counts });
  });
  return rows;
}

/** Every subject of `kind` with counts in one bucket, by SCAN (never KEYS), heaviest first. */
export async function top(redis: Redis | Cluster, kind: Kind, period: "day" | "month", bucket: { id: string; label: string }, limit: number, onProgress?: (examined: number, total: number) => void): Promise<{ rows: Row[]; complete: boolean }> {
  const total = await totalDbsize(redis);
  const rows: Row[] = [];
  const tagPrefix = `krs:redis-usage:v1:{${kind}:`;
  const suffix = `}:${period === "day" ? "d" : "m"}:${bucket.id}`;
  const { complete } = await scanAll(redis, {
    batch: 500,
    maxOpsPerSec: 0,
    match: `${tagPrefix}*${suffix}`,
    onBatch: async (keys, node) => {
      const pipeline = node.pipeline();
      for (const k of keys) pipeline.hmget(k, "subject", ...FIELDS);
      const replies = (await pipeline.exec()) ?? [];
      keys.forEach((k, i) => {
        const [err, values] = replies[i] ?? [];
        if (err) throw err;
        const [name, ...rest] = values as (string | null)[];
        const counts = countsOf(rest);
        if (counts === undefined) return;
        rows.push({ kind, subject: name ?? k.slice(tagPrefix.length, k.length - suffix.length), period, bucket: bucket.label, counts });
      });
      return keys.length;
    },
    onProgress: (examined) => onProgress?.(examined, total),
  });
  rows.sort((a, b) => b.counts.requests - a.counts.requests || b.counts.cost - a.counts.cost || a.subject.localeCompare(b.subject));
  return { rows: rows.slice(0, limit), complete };
}

/**
 * A subject name is whatever a consumer, route or client chose (or whoever writes Redis):
 * a cell starting with = + - @ (or a tab / CR) is a formula to the spreadsheet a billing
 * export is opened in, so it is made text with a leading quote (OWASP's CSV injection rule).
 */
function csvField(value: string | number): string {
  const raw = String(value);
  const text = typeof value === "string" && /^[=+\-@\t\r]/.test(raw) ? `'${raw}` : raw;
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** Control characters in a name would drive the operator's terminal (escape sequences): shown as \xNN. */
function printable(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

export function toCsv(rows: Row[]): string {
  const header = ["kind", "subject", "period", "bucket", ...FIELDS].join(",");
  return [header, ...rows.map((r) => [r.kind, r.subject, r.period, r.bucket, ...FIELDS.map((f) => r.counts[f])].map(csvField).join(","))].join("\n");
}

function shortName(name: string): string {
  return name.length > 40 ? name.slice(0, 37) + "..." : name;
}

function toText(rows: Row[]): string {
  if (rows.length === 0) return "no usage recorded";
  const head = ["subject", "bucket", "requests", "cost", "bytes_in", "bytes_out", "2xx", "3xx", "4xx", "5xx"];
  const table = rows.map((r) => [shortName(printable(r.subject)), r.bucket, ...head.slice(2).map((f) => String(r.counts[f as (typeof FIELDS)[number]]))]);
  const widths = head.map((h, i) => Math.max(h.length, ...table.map((row) => row[i].length)));
  return [head, ...table].map((row) => row.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ")).join("\n");
}

function print(rows: Row[], opts: { json?: boolean; csv?: boolean }): void {
  if (opts.json === true && opts.csv === true) throw new UsageError("--json and --csv: pick one");
  console.log(opts.csv === true ? toCsv(rows) : opts.json === true ? JSON.stringify(rows, null, 2) : toText(rows));
}

function currentMonth(): string {
  return new Date().toISOString().slice(0, 7);
}

interface ShowOptions extends RedisTargetFlags {
  consumer?: string;
  route?: string;
  service?: string;
  ip?: string;
  month?: string;
  day?: string;
  from?: string;
  to?: string;
  json?: boolean;
  csv?: boolean;
}

function subjectOf(opts: ShowOptions): { kind: Kind; name: string } {
  const given = (["consumer", "route", "service", "ip"] as const).filter((k) => opts[k] !== undefined);
  if (given.length !== 1) throw new UsageError("usage show needs exactly one of --consumer, --route, --service, --ip");
  return { kind: given[0], name: opts[given[0]]! };
}

function rangeOf(opts: ShowOptions): { period: "day" | "month"; buckets: { id: string; label: string }[] } {
  const ways = [opts.month !== undefined, opts.day !== undefined, opts.from !== undefined || opts.to !== undefined].filter(Boolean).length;
  if (ways > 1) throw new UsageError("give one of --month, --day or --from/--to");
  if (opts.day !== undefined) {
    const d = parseBucket("--day", opts.day, "day");
    return { period: "day", buckets: bucketRange("day", d.date, d.date) };
  }
  if (opts.from !== undefined || opts.to !== undefined) {
    const from = parseBucket("--from", opts.from ?? opts.to!);
    const to = parseBucket("--to", opts.to ?? (from.period === "day" ? new Date().toISOString().slice(0, 10) : currentMonth()), from.period);
    return { period: from.period, buckets: bucketRange(from.period, from.date, to.date) };
  }
  const m = parseBucket("--month", opts.month ?? currentMonth(), "month");
  return { period: "month", buckets: bucketRange("month", m.date, m.date) };
}

async function withRedis<T>(flags: RedisTargetFlags, fn: (redis: Redis | Cluster) => Promise<T>): Promise<T> {
  const redis = await openRedis(redisTargetFrom(flags));
  try {
    return await fn(redis);
  } finally {
    redis.disconnect();
  }
}

function quotaNumber(flag: string, value: string): number | null {
  if (value === "none") return null;
  if (!/^\d+$/.test(value) || Number(value) > MAX_QUOTA) throw new UsageError(`${flag}: expected a whole number from 0 to ${MAX_QUOTA}, or none`);
  return Number(value);
}

export const registerUsage: Register = (program: Command, run) => {
  const usage = program.command("usage").description("redis-usage: metered usage and quota overrides");
  withRedisTarget(usage.command("show"))
    .description("one subject's usage per bucket (default: this month)")
    .addOption(new Option("--consumer <name>", "the consumer's username (else custom_id, else id)"))
    .addOption(new Option("--route <name>", "a route's name (else id)"))
    .addOption(new Option("--service <name>", "a service's name (else id)"))
    .addOption(new Option("--ip <address>", "a client address metered with fallback ip"))
    .addOption(new Option("--month <YYYY-MM>", "one UTC month"))
    .addOption(new Option("--day <YYYY-MM-DD>", "one UTC day"))
    .addOption(new Option("--from <date>", "first month (YYYY-MM) or day (YYYY-MM-DD)"))
    .addOption(new Option("--to <date>", "last one, the same kind (default: now)"))
    .addOption(new Option("--csv", "CSV: one row per subject per bucket"))
    .addOption(jsonOption())
    .action(
      run("usage show", async (opts: ShowOptions) => {
        const { kind, name } = subjectOf(opts);
        const { period, buckets } = rangeOf(opts);
        print(await withRedis(opts, (redis) => show(redis, kind, name, period, buckets)), opts);
        return 0;
      }),
    );
  withRedisTarget(usage.command("top"))
    .description("the heaviest subjects of one month or day (SCAN in batches, never KEYS)")
    .addOption(new Option("--month <YYYY-MM>", "the UTC month (default: this one)"))
    .addOption(new Option("--day <YYYY-MM-DD>", "a UTC day instead"))
    .addOption(new Option("--by <kind>", "consumer, route, service, ip or credential").default("consumer").choices(["consumer", "route", "service", "ip", "credential"]))
    .addOption(new Option("--limit <n>", "how many").default(10).argParser(positiveInt("--limit", 100_000)))
    .addOption(new Option("--csv", "CSV: one row per subject"))
    .addOption(jsonOption())
    .action(
      run("usage top", async (opts: { month?: string; day?: string; by: Kind; limit: number; csv?: boolean; json?: boolean } & RedisTargetFlags) => {
        if (opts.month !== undefined && opts.day !== undefined) throw new UsageError("give one of --month or --day");
        const b = opts.day !== undefined ? parseBucket("--day", opts.day, "day") : parseBucket("--month", opts.month ?? currentMonth(), "month");
        const bar = progress("usage top");
        const result = await withRedis(opts, (redis) => top(redis, opts.by, b.period, { id: b.id, label: label(b.period, b.date) }, opts.limit, (s, t) => bar.update(s, t))).finally(() => bar.stop());
        print(result.rows, opts);
        if (!result.complete) console.error("krs usage top: interrupted before the end of the scan; the list is partial");
        return result.complete ? 0 : 130;
      }),
    );
  const quota = usage.command("quota").description("per-consumer quota overrides (they win over the plugin's quota_day / quota_month)");
  withRedisTarget(quota.command("set <consumer>"))
    .description("set the consumer's day and/or month quota (none clears one)")
    .addOption(new Option("--day <n>", "quota per UTC day, in the plugin's quota_unit"))
    .addOption(new Option("--month <n>", "quota per UTC month"))
    .action(
      run("usage quota set", async (consumer: string, opts: { day?: string; month?: string } & RedisTargetFlags) => {
        if (opts.day === undefined && opts.month === undefined) throw new UsageError("usage quota set needs --day and/or --month");
        const day = opts.day === undefined ? undefined : quotaNumber("--day", opts.day);
        const month = opts.month === undefined ? undefined : quotaNumber("--month", opts.month);
        const shown = await withRedis(opts, async (redis) => {
          const multi = redis.multi();
          for (const [field, value] of [["day", day], ["month", month]] as const) {
            if (value === null) multi.hdel(quotaKey(consumer), field);
            else if (value !== undefined) multi.hset(quotaKey(consumer), field, value);
          }
          await multi.exec();
          return redis.hmget(quotaKey(consumer), "day", "month");
        });
        console.log(JSON.stringify({ consumer, day: shown[0] === null ? null : Number(shown[0]), month: shown[1] === null ? null : Number(shown[1]) }));
        return 0;
      }),
    );
  withRedisTarget(quota.command("get <consumer>"))
    .description("the consumer's overrides (null: the plugin's default applies)")
    .action(
      run("usage quota get", async (consumer: string, opts: RedisTargetFlags) => {
        const shown = await withRedis(opts, (redis) => redis.hmget(quotaKey(consumer), "day", "month"));
        console.log(JSON.stringify({ consumer, day: shown[0] === null ? null : Number(shown[0]), month: shown[1] === null ? null : Number(shown[1]) }));
        return 0;
      }),
    );
  withRedisTarget(quota.command("clear <consumer>"))
    .description("remove the consumer's overrides")
    .action(
      run("usage quota clear", async (consumer: string, opts: RedisTargetFlags) => {
        const removed = await withRedis(opts, (redis) => redis.del(quotaKey(consumer)));
        console.log(removed === 1 ? `cleared the quota overrides of ${consumer}` : `${consumer} had no quota overrides`);
        return 0;
      }),
    );
};

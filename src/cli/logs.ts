/**
 * `krs logs tail`: structured-log's Redis Stream, read back. The last entries, or
 * `--follow` (XREAD BLOCK from now; with `--group` XREADGROUP, acknowledging each entry,
 * so several readers share the work and a restarted one resumes where it stopped).
 * Pretty on a terminal, one JSON object per line when piped or with `--json`.
 */
import { hostname } from "node:os";
import { Command, InvalidArgumentError, Option } from "commander";
import type { Cluster, Redis } from "ioredis";
import { failureLine, jsonOption, positiveInt, UsageError, type Register } from "./command.js";
import { openRedis, redisTargetFrom, withRedisTarget, type RedisTargetFlags } from "./redis.js";
import { paint, type Color } from "./ui.js";

export const DEFAULT_STREAM = "requests";
const DEFAULT_COUNT = 20;
const STREAM_NAME = /^[A-Za-z0-9._-]{1,64}$/;
/** Milliseconds one XREAD waits before the loop looks at Ctrl-C again. */
const BLOCK_MS = 1000;

/** The stream's key for a structured-log `stream_key` name (or a full key as given). */
export function streamKeyOf(stream: string): string {
  if (stream.startsWith("krs:")) return stream;
  if (!STREAM_NAME.test(stream)) throw new UsageError(`--stream: expected a stream_key name (letters, digits, '.', '_', '-', at most 64) or a full key, got '${stream}'`);
  return `krs:structured-log:v1:{${stream}}:stream`;
}

export interface TailFilter {
  /** "5xx", "4xx", or one status like "404". */
  status?: string;
  /** Consumer username, id or custom_id. */
  consumer?: string;
  /** Route name or id. */
  route?: string;
}

export function checkStatus(value: string): string {
  if (!/^[1-5](xx|\d\d)$/.test(value)) throw new InvalidArgumentError(`--status: expected a status like 404 or a class like 5xx, got '${value}'`);
  return value;
}

// The lines are the plugin's JSON: whatever their shape, a filter only reads.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Line = any;

export function matches(line: Line, filter: TailFilter): boolean {
  const status = String(line?.response?.status ?? "");
  if (filter.status !== undefined) {
    if (filter.status.endsWith("xx") ? status[0] !== filter.status[0] || status.length !== 3 : status !== filter.status) return false;
  }
  if (filter.consumer !== undefined) {
    const c = line?.consumer ?? {};
    if (![c.username, c.id, c.custom_id].includes(filter.consumer)) return false;
  }
  if (filter.route !== undefined) {
    const r = line?.route ?? {};
    if (![r.name, r.id].includes(filter.route)) return false;
  }
  return true;
}

function statusColor(status: number): Color {
  if (status >= 500) return "red";
  if (status >= 400) return "yellow";
  return "green";
}

/**
 * Every value here came from a client, an upstream or whoever can write the stream: an
 * escape sequence in a URI or a consumer name would drive the reader's terminal (clear it,
 * rewrite earlier lines, set its title). Control bytes are shown, not obeyed.
 */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

function shown(value: unknown): string {
  return String(value).replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** One line for a person: when, status, method and URI, route, consumer, latency, the suite's facts, request id. */
export function pretty(line: Line): string {
  const status = Number(line?.response?.status ?? 0);
  const krs = line?.krs ?? {};
  const facts: string[] = [];
  if (krs.cache !== undefined) facts.push(`cache=${shown(krs.cache.status)}`);
  for (const l of krs.limits ?? []) facts.push(`${shown(l.kind)}=${l.admitted ? "ok" : "refused"}`);
  if (krs.auth !== undefined) facts.push(`auth=${shown(krs.auth.plugin)}:${shown(krs.auth.result)}`);
  if (krs.access !== undefined && krs.access.allowed === false) facts.push(`access=${shown(krs.access.plugin)}:${shown(krs.access.reason ?? "refused")}`);
  if (krs.redis?.round_trips > 0) facts.push(shown(`redis=${krs.redis.round_trips}rt/${krs.redis.time_ms}ms${krs.redis.errors > 0 ? `/${krs.redis.errors}err` : ""}`));
  for (const e of krs.errors ?? []) facts.push(paint("red", `error=${shown(e.plugin)}: ${shown(e.message)}`));
  const consumer = line?.consumer?.username ?? line?.consumer?.id;
  return [
    paint("dim", shown(line?.timestamp ?? "")),
    paint(statusColor(status), String(status)),
    `${shown(line?.request?.method ?? "?")} ${shown(line?.request?.uri ?? "")}`,
    line?.route?.name !== undefined ? `route=${shown(line.route.name)}` : "",
    consumer !== undefined ? `consumer=${shown(consumer)}` : "",
    `${shown(line?.latencies?.request ?? "?")}ms`,
    ...facts,
    paint("dim", shown(line?.request_id ?? "")),
  ].filter((s) => s !== "").join("  ");
}

export interface TailOptions extends TailFilter {
  stream: string;
  follow?: boolean;
  group?: string;
  count: number;
  json?: boolean;
}

type Entry = [id: string, fields: string[]];

function lineOf(fields: string[]): Line | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (fields[i] !== "log") continue;
    try {
      return JSON.parse(fields[i + 1]);
    } catch {
      return undefined;
    }
  }
  return undefined;
}

/** Prints the entries that pass the filter, at most `limit`; returns how many it printed. */
function print(entries: Entry[], opts: TailOptions, asJson: boolean, limit = Number.MAX_SAFE_INTEGER): number {
  let printed = 0;
  for (const [, fields] of entries) {
    if (printed >= limit) break;
    const line = lineOf(fields);
    if (line === undefined || !matches(line, opts)) continue;
    console.log(asJson ? JSON.stringify(line) : pretty(line));
    printed++;
  }
  return printed;
}

export async function tail(redis: Redis | Cluster, opts: TailOptions, stopped: () => boolean = () => false): Promise<number> {
  const key = streamKeyOf(opts.stream);
  const asJson = opts.json === true || process.stdout.isTTY !== true;
  if (opts.follow !== true) {
    // The newest entries first from Redis, printed oldest first; filtered after reading,
    // so a selective filter reads further back, up to 100 pages.
    const found: Entry[] = [];
    let end = "+";
    for (let page = 0; page < 100 && found.length < opts.count; page++) {
      const batch = (await redis.xrevrange(key, end, "-", "COUNT", 500)) as Entry[];
      for (const entry of batch) {
        const line = lineOf(entry[1]);
        if (line !== undefined && matches(line, opts)) found.push(entry);
        if (found.length >= opts.count) break;
      }
      if (batch.length < 500) break;
      end = "(" + batch[batch.length - 1][0];
    }
    print(found.reverse(), opts, asJson);
    return 0;
  }
  let printed = 0;
  if (opts.group !== undefined) {
    const consumer = `krs-${hostname()}-${process.pid}`;
    try {
      await redis.xgroup("CREATE", key, opts.group, "$");
    } catch (e) {
      const message = (e as Error).message;
      if (message.includes("requires the key to exist")) throw new Error(`no stream ${key} yet (no structured-log has written to it)`);
      if (!message.includes("BUSYGROUP")) throw e;
    }
    while (!stopped() && printed < opts.count) {
      // No more than still to print: what this reader takes, the group's others never get.
      const reply = (await redis.xreadgroup("GROUP", opts.group, consumer, "COUNT", Math.min(100, opts.count - printed), "BLOCK", BLOCK_MS, "STREAMS", key, ">")) as [string, Entry[]][] | null;
      const entries = reply?.[0]?.[1] ?? [];
      if (entries.length === 0) continue;
      printed += print(entries, opts, asJson, opts.count - printed);
      await redis.xack(key, opts.group, ...entries.map(([id]) => id));
    }
    return 0;
  }
  let last = "$";
  while (!stopped() && printed < opts.count) {
    const reply = (await redis.xread("COUNT", 100, "BLOCK", BLOCK_MS, "STREAMS", key, last)) as [string, Entry[]][] | null;
    const entries = reply?.[0]?.[1] ?? [];
    if (entries.length === 0) continue;
    last = entries[entries.length - 1][0];
    printed += print(entries, opts, asJson, opts.count - printed);
  }
  return 0;
}

export const registerLogs: Register = (program: Command, run) => {
  const logs = program.command("logs").description("structured-log's Redis Stream");
  withRedisTarget(logs.command("tail"))
    .description("the last requests in the stream, or --follow new ones; pretty on a terminal, JSON lines when piped")
    .addOption(new Option("--stream <name>", "the plugin's stream_key (or a full key)").default(DEFAULT_STREAM))
    .addOption(new Option("--follow", "wait for new entries (XREAD BLOCK) until Ctrl-C"))
    .addOption(new Option("--group <name>", "with --follow: read as a consumer group (XREADGROUP, XACK): readers of one group share the entries"))
    .addOption(new Option("--status <code>", "only this status (404) or class (5xx)").argParser(checkStatus))
    .addOption(new Option("--consumer <c>", "only this consumer (username, id or custom_id)"))
    .addOption(new Option("--route <r>", "only this route (name or id)"))
    .addOption(new Option("--count <n>", "how many entries: the last N (default 20), or with --follow stop after N (default: until Ctrl-C)").argParser(positiveInt("--count")))
    .addOption(jsonOption())
    .action(
      run("logs tail", async (flags: Omit<TailOptions, "count"> & { count?: number } & RedisTargetFlags) => {
        if (flags.group !== undefined && flags.follow !== true) throw new UsageError("--group: only with --follow");
        streamKeyOf(flags.stream);
        const opts: TailOptions = { ...flags, count: flags.count ?? (flags.follow === true ? Number.MAX_SAFE_INTEGER : DEFAULT_COUNT) };
        const redis = await openRedis(redisTargetFrom(flags));
        let interrupted = false;
        const onSigint = () => (interrupted = true);
        process.once("SIGINT", onSigint);
        try {
          return await tail(redis, opts, () => interrupted);
        } catch (e) {
          console.error(failureLine("logs tail", e));
          return 1;
        } finally {
          process.removeListener("SIGINT", onSigint);
          redis.disconnect();
        }
      }),
    );
};

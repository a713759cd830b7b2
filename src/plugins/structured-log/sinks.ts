/**
 * Where the lines go, one sink per destination and worker: a bounded queue flushed by a
 * timer (at most flush_interval later), or at once when a batch is full. A file gets one
 * write(2) per batch of whole lines on an O_APPEND descriptor, so lines of different
 * workers never interleave; a Redis Stream one script call per batch (XADD per line and
 * one EXPIRE, redis-lua/structured-log-append-1.lua), never a call on the request's path.
 * stdout is a file sink on the worker's standard output. Past max_queue, lines are
 * dropped, counted, and reported once per interval.
 */
import * as ffi from "ffi";
import * as stringBuffer from "string.buffer";
import * as client from "../../lib/redis/client";
import type { RedisConf } from "../../lib/redis/schema";
import * as keys from "../../lib/keys";
import { PLUGIN } from "./names";

export interface SinkConf {
  sink: "file" | "redis-stream" | "stdout";
  path?: string;
  reopen: boolean;
  stream_key: string;
  max_len: number;
  stream_ttl: number;
  max_queue: number;
  batch_max: number;
  flush_interval: number;
  redis: RedisConf;
}

interface Sink {
  kind: "file" | "redis-stream";
  /** The last config that pushed here: its limits and Redis apply to the next flush. */
  conf: SinkConf;
  /** redis-stream: the stream's key. */
  key?: string;
  /** redis-stream: the lines waiting. */
  queue: string[];
  /** file: the lines waiting, each ended by "\n", and how many (no Lua string per line). */
  pending?: LuaStringBuffer;
  pendingLines: number;
  flushing: boolean;
  /** A zero-delay flush is already scheduled. */
  scheduled: boolean;
  /**
   * No current config uses it (a reload changed or removed it): out of the registry, its
   * timer not re-armed, its file closed after each write. A request that began before the
   * reload may still push here: its line is written at once.
   */
  retired: boolean;
  /** Its key in `sinks`. */
  id: string;
  fd?: number;
  written: number;
  dropped: number;
  /** Dropped since the last report, and when that was. */
  unreported: number;
  reportedAt: number;
  /** Why lines were dropped lately (for the report). */
  lastCause?: string;
}

const REPORT_INTERVAL = 10;
/** Batches one flush sends at most: a flush never holds its timer for long. */
const MAX_BATCHES_PER_FLUSH = 50;

/** The worker's standard output: the container's in Kong's image (nginx in the foreground). */
const STDOUT = "/dev/stdout";

const sinks = new LuaTable<string, Sink>();
const sinkOfConf = setmetatable(new LuaTable<SinkConf, Sink>(), { __mode: "k" });

// ---------------------------------------------------------------- files (libc through FFI)

const O_WRONLY = 0x1;
const O_CREAT = 0x40;
const O_APPEND = 0x400;
/** Owner and group: a redacted line still names clients and consumers. */
const MODE_0640 = 416;
const MODE_0750 = 488;

interface Libc {
  open(this: void, path: string, flags: number, mode: number): number;
  mkdir(this: void, path: string, mode: number): number;
  write(this: void, fd: number, data: FfiCData, len: number): unknown;
  close(this: void, fd: number): number;
  strerror(this: void, errnum: number): FfiCData;
}
// Kong's file-log declares the same functions: a second cdef of one is an error, hence one pcall each.
for (const decl of ["int open(const char *pathname, int flags, int mode)", "long write(int fd, const void *buf, unsigned long count)", "int close(int fd)", "int mkdir(const char *pathname, unsigned int mode)", "char *strerror(int errnum)"]) pcall(ffi.cdef, decl + ";");
const libc = ffi.C as unknown as Libc;

function errnoText(this: void): string {
  const errno = (ffi as unknown as { errno(this: void): number }).errno();
  return ffi.string(libc.strerror(errno));
}

/** Logs a sink's trouble at most once per interval, with the drops since the last report. */
function report(this: void, sink: Sink, cause: string): void {
  sink.lastCause = cause;
  const now = ngx.now();
  if (now - sink.reportedAt < REPORT_INTERVAL) return;
  sink.reportedAt = now;
  const dropped = sink.unreported;
  sink.unreported = 0;
  ngx.log(ngx.ERR, `[kong] [${PLUGIN}] ${cause}; ${dropped} log lines dropped since the last report (${sink.dropped} in this worker since start)`);
}

function drop(this: void, sink: Sink, count: number, cause: string): void {
  sink.dropped += count;
  sink.unreported += count;
  report(sink, cause);
}

/** Writes `len` bytes from `data` (a buffer's pointer). */
function writeAll(this: void, fd: number, data: FfiCData, len: number): string | undefined {
  let done = 0;
  // A regular file takes an O_APPEND write whole; the loop is for the odd short write.
  for (let attempt = 0; attempt < 8 && done < len; attempt++) {
    const n = tonumber(libc.write(fd, ((data as unknown as number) + done) as unknown as FfiCData, len - done)) ?? -1;
    if (n < 0) return errnoText();
    done += n;
  }
  return done < len ? "short write" : undefined;
}

/** The lines a sink holds. */
function queued(this: void, sink: Sink): number {
  return sink.kind === "file" ? sink.pendingLines : sink.queue.length;
}

/** A relative path is under the nginx prefix, as Kong's own files are. */
function resolvePath(this: void, path: string): string {
  if (string.sub(path, 1, 1) === "/") return path;
  const prefix = ngx.config.prefix();
  return string.sub(prefix, -1) === "/" ? prefix + path : `${prefix}/${path}`;
}

function flushFile(this: void, sink: Sink): void {
  const count = sink.pendingLines;
  const pending = sink.pending!;
  if (count === 0) return;
  const conf = sink.conf;
  const path = conf.sink === "stdout" ? STDOUT : resolvePath(conf.path!);
  if (sink.fd === undefined) {
    let fd = libc.open(path, O_WRONLY + O_CREAT + O_APPEND, MODE_0640);
    // A relative path's directory under the prefix is made once (Kong's prefix belongs to
    // the worker user; the local gateway makes plugin-logs/ itself). Absolute ones never.
    let openErr = fd < 0 ? errnoText() : "";
    if (fd < 0 && string.sub(conf.path ?? "/", 1, 1) !== "/") {
      const [dir] = string.match(path, "^(.*)/[^/]+$");
      if (dir !== undefined && libc.mkdir(dir, MODE_0750) === 0) {
        fd = libc.open(path, O_WRONLY + O_CREAT + O_APPEND, MODE_0640);
        if (fd < 0) openErr = errnoText();
      }
    }
    if (fd < 0) {
      pending.reset();
      sink.pendingLines = 0;
      return drop(sink, count, `could not open log file ${path}: ${openErr}`);
    }
    sink.fd = fd;
  }
  // One write of whole lines (at most batch_max of them: push flushes at that count).
  const [data, len] = pending.ref();
  const err = writeAll(sink.fd, data, len);
  pending.reset();
  sink.pendingLines = 0;
  if (err !== undefined) {
    drop(sink, count, `could not write log file ${path}: ${err}`);
    libc.close(sink.fd);
    sink.fd = undefined;
    return;
  }
  sink.written += count;
  if (conf.reopen || sink.retired) {
    libc.close(sink.fd);
    sink.fd = undefined;
  }
}

// ---------------------------------------------------------------- Redis Stream

/** Errors before anything reached Redis: the batch can be sent again without a duplicate. */
function notSent(this: void, err: string): boolean {
  return string.find(err, "^redis script")[0] === undefined;
}

/**
 * Lines per script call at most, whatever batch_max says: each line is one argument, and
 * LuaJIT unpacks at most ~8000 values into a call.
 */
const LINES_PER_CALL = 1000;

function flushStream(this: void, sink: Sink): boolean {
  let lines = sink.queue;
  if (lines.length === 0) return false;
  sink.queue = [];
  const conf = sink.conf;
  const key = sink.key!;
  const keys = [key];
  const batch = math.max(1, math.min(conf.batch_max, LINES_PER_CALL));
  let first = 1;
  let unreachable = "";
  for (let round = 0; round < MAX_BATCHES_PER_FLUSH && first <= lines.length; round++) {
    const last = math.min(first + batch - 1, lines.length);
    // One EVALSHA per batch: XADD per line and the EXPIRE happen in Redis (redis-lua/structured-log-append-1.lua).
    const args: (string | number)[] = [conf.max_len, conf.stream_ttl];
    for (let i = first; i <= last; i++) args[i - first + 2] = lines[i - 1];
    const [reply, err] = client.script(conf.redis, { script: "structured-log-append", keys, args });
    const count = last - first + 1;
    if (reply === undefined) {
      if (notSent(err ?? "")) {
        unreachable = err ?? "unknown error";
        break;
      }
      // Sent, answer lost: Redis may hold them. Sending again could log a request twice.
      drop(sink, count, `redis stream ${key} write failed, outcome unknown: ${err}`);
    } else if (reply === false || type(reply) !== "table") {
      drop(sink, count, `redis refused the batch for ${key}: ${err ?? tostring(reply)}`);
    } else {
      const [written, refused, reason] = reply as unknown as [number, number, string];
      sink.written += written;
      if (refused > 0) drop(sink, refused, `redis refused XADD to ${key}: ${reason}`);
    }
    first = last + 1;
  }
  if (first > lines.length) return false;
  // Not sent (Redis unreachable, circuit open): back in front of what came meanwhile,
  // within max_queue; the newest lines are the ones dropped.
  const unsent = lines.length - first + 1;
  const kept: string[] = [];
  for (let i = first; i <= lines.length && kept.length < conf.max_queue; i++) kept.push(lines[i - 1]);
  lines = sink.queue;
  for (const line of lines) {
    if (kept.length >= conf.max_queue) break;
    kept.push(line);
  }
  const lost = unsent + lines.length - kept.length;
  sink.queue = kept;
  if (lost > 0) drop(sink, lost, `redis stream ${key} unreachable (${unreachable}), queue full (max_queue ${conf.max_queue})`);
  else report(sink, `redis stream ${key} unreachable (${unreachable}); ${kept.length} lines queued`);
  return true;
}

// ---------------------------------------------------------------- queue

function flush(this: void, sink: Sink): void {
  if (sink.flushing) return;
  sink.flushing = true;
  const [ok, held] = pcall(sink.kind === "file" ? flushFile : flushStream, sink);
  sink.flushing = false;
  if (!ok) ngx.log(ngx.ERR, `[kong] [${PLUGIN}] flush failed: ${tostring(held)}`);
  if (sink.retired) settleRetired(sink, ok && (held as unknown) === true);
}

/**
 * A retired sink keeps nothing: lines pushed while its last flush waited on Redis get one
 * more flush; lines Redis did not take are dropped, as no timer will retry them.
 */
function settleRetired(this: void, sink: Sink, held: boolean): void {
  if (sink.kind === "redis-stream" && sink.queue.length > 0) {
    if (!held) return schedule(sink);
    const lost = sink.queue.length;
    sink.queue = [];
    drop(sink, lost, `redis stream ${sink.key} unreachable and no longer configured`);
  }
}

function onTimer(this: void, premature: boolean, sink: Sink): void {
  flush(sink);
  // At worker exit (reload, stop) a line still queued would be lost: flush until empty.
  // The worker may have begun exiting while this flush waited on Redis: no later timer
  // would then run, so drain now as well.
  if (premature || ngx.worker.exiting()) {
    for (let i = 0; i < 20 && queued(sink) > 0 && !sink.flushing; i++) flush(sink);
    return;
  }
  // Re-armed only while a config uses the sink: a retired one's timer ends here.
  if (!sink.retired) arm(sink);
}

function arm(this: void, sink: Sink): void {
  const [ok, err] = ngx.timer.at(sink.conf.flush_interval, onTimer, sink);
  if (ok === undefined && err !== "process exiting") ngx.log(ngx.ERR, `[kong] [${PLUGIN}] could not start the flush timer: ${err}`);
}

function onScheduled(this: void, _premature: boolean, sink: Sink): void {
  sink.scheduled = false;
  flush(sink);
}

function schedule(this: void, sink: Sink): void {
  if (sink.scheduled) return;
  // Zero-delay timers are allowed even while the worker is exiting.
  const [ok] = ngx.timer.at(0, onScheduled, sink);
  if (ok !== undefined) sink.scheduled = true;
}

function sinkKey(this: void, conf: SinkConf): string {
  if (conf.sink === "file") return `file:${conf.path}:${conf.flush_interval}`;
  if (conf.sink === "stdout") return `file:${STDOUT}:${conf.flush_interval}`;
  // The deployment as the client names it (cluster / sentinel config as a whole, else the
  // server and identity): host and port alone are unused in Cluster and Sentinel mode, and
  // two such instances would share one queue flushed to whichever pushed last.
  return `stream:${client.poolName(conf.redis)}:${conf.stream_key}:${conf.flush_interval}`;
}

/** The sink keys the current configs use; undefined until the first configure. */
let liveKeys: LuaTable<string, boolean> | undefined;

function retire(this: void, sink: Sink): void {
  sink.retired = true;
  sinks.delete(sink.id);
  if (sink.kind === "file") {
    // What it holds goes to its file now (a write needs no cosocket), then the file is closed.
    flush(sink);
    if (sink.fd !== undefined && !sink.flushing) {
      libc.close(sink.fd);
      sink.fd = undefined;
    }
  } else if (sink.queue.length > 0) {
    schedule(sink);
  }
}

/**
 * After each config change (Kong's configure phase): the sinks no config uses any more are
 * flushed, closed and dropped, so a reload leaves neither a queue nor a timer behind.
 */
export function retain(this: void, configs: SinkConf[] | undefined): void {
  const live = new LuaTable<string, boolean>();
  if (configs !== undefined) for (const conf of configs) live.set(sinkKey(conf), true);
  liveKeys = live;
  const unused: Sink[] = [];
  for (const [k, sink] of pairs(sinks)) if (live.get(k) !== true) unused.push(sink);
  for (const sink of unused) retire(sink);
}

function sinkFor(this: void, conf: SinkConf): Sink {
  let sink = sinkOfConf.get(conf);
  if (sink !== undefined) return sink;
  const k = sinkKey(conf);
  sink = sinks.get(k);
  if (sink === undefined) {
    sink = {
      kind: conf.sink === "redis-stream" ? "redis-stream" : "file",
      conf,
      key: conf.sink === "redis-stream" ? streamKey(conf.stream_key) : undefined,
      queue: [],
      pending: conf.sink === "redis-stream" ? undefined : stringBuffer.new(conf.batch_max * 1024),
      pendingLines: 0,
      flushing: false,
      scheduled: false,
      retired: false,
      id: k,
      written: 0,
      dropped: 0,
      unreported: 0,
      reportedAt: -REPORT_INTERVAL,
    };
    // A request still on a config that was replaced: its line is written, no sink kept.
    if (liveKeys !== undefined && liveKeys.get(k) !== true) sink.retired = true;
    else {
      arm(sink);
      sinks.set(k, sink);
    }
  }
  sink.conf = conf;
  sinkOfConf.set(conf, sink);
  return sink;
}

export function streamKey(this: void, name: string): string {
  return keys.key(PLUGIN, keys.part(name), "stream");
}

/** Lines this worker dropped for the sink of `conf` since it started. */
export function droppedFor(this: void, conf: SinkConf): number {
  return sinkFor(conf).dropped;
}

/** Queues one line (no newline; a string, or a buffer that is copied) for the sink of `conf`. */
export function push(this: void, conf: SinkConf, line: string | LuaStringBuffer): void {
  const sink = sinkFor(conf);
  const count = queued(sink);
  if (count >= conf.max_queue) {
    drop(sink, 1, sink.lastCause ?? `queue full (max_queue ${conf.max_queue})`);
    return;
  }
  if (sink.kind === "file") {
    sink.pending!.put(line, "\n");
    sink.pendingLines = count + 1;
  } else {
    sink.queue.push(type(line) === "string" ? (line as string) : (line as LuaStringBuffer).tostring());
  }
  if (count + 1 >= conf.batch_max || sink.retired || ngx.worker.exiting()) {
    // A file write is allowed here (and costs less than a timer); Redis needs a timer.
    if (sink.kind === "file") flush(sink);
    else schedule(sink);
  }
}

export interface SinkStats {
  sink: string;
  queued: number;
  written: number;
  dropped: number;
}

/** This worker's sinks, for an operator or a metrics plugin. */
export function stats(this: void): SinkStats[] {
  const out: SinkStats[] = [];
  // The sink's file or stream key, not its registry key: that one holds a credential hash.
  for (const [, s] of pairs(sinks)) out.push({ sink: s.key ?? (s.conf.sink === "stdout" ? STDOUT : s.conf.path ?? ""), queued: queued(s), written: s.written, dropped: s.dropped });
  return out;
}

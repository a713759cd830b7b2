/**
 * The one way the suite reaches Redis. Connections come from lua-resty-redis's cosocket
 * pool (set_keepalive), never from a module-level object; AUTH/SELECT/TLS happen only on
 * fresh connections; scripts run by EVALSHA with one EVAL fallback on NOSCRIPT.
 *
 * Every function returns lua-resty-redis's triple meaning:
 *   reply            success
 *   false, msg       Redis answered with an error reply (-ERR …)
 *   nil, err         network failure, timeout, open circuit
 * The caller's phase handler decides what a failure means (see fault.ts).
 */
import * as restyRedis from "resty.redis";
import * as embedded from "krs.scripts";
import * as accounting from "./accounting";
import * as breaker from "./breaker";
import type { RedisConf } from "./schema";

/** One script call: a script of redis-lua/ by name (file name without `-<numKeys>.lua`). */
export interface ScriptCall {
  script: string;
  keys: string[];
  args: (string | number)[];
}
/** One plain command, e.g. `{ command: "publish", args: ["channel", "msg"] }`. */
export interface CommandCall {
  command: string;
  args: (string | number)[];
}
export type Call = ScriptCall | CommandCall;
/** A pipelined reply: the reply, or lua-resty-redis's `{ false, msg }` for an error reply. */
export type PipelineReply = RedisReply | [false, string];

/** Pool names cached per conf table (weak keys: a config version's tables go with it). */
const poolNames = setmetatable(new LuaTable<RedisConf, string>(), { __mode: "k" });

/**
 * Connections are only shared between identical endpoints and identities: host, port,
 * database, TLS settings and a hash of the credentials.
 */
export function poolName(this: void, conf: RedisConf): string {
  const cached = poolNames.get(conf);
  if (cached !== undefined) return cached;
  const credentials = hasText(conf.password) ? string.sub(ngx.md5(`${conf.username ?? ""}\0${conf.password}`), 1, 16) : "-";
  const tls = conf.ssl ? `tls${conf.ssl_verify ? "v" : ""}:${hasText(conf.server_name) ? conf.server_name : ""}` : "plain";
  const name = `krs:${conf.host}:${conf.port}:${conf.database}:${tls}:${credentials}`;
  poolNames.set(conf, name);
  return name;
}

/** The pools of the Redis configs this worker has used (for metrics), each once. */
export function knownPools(this: void): string[] {
  const seen = new LuaTable<string, boolean>();
  const out: string[] = [];
  for (const [, name] of pairs(poolNames)) {
    if (seen.get(name) === true) continue;
    seen.set(name, true);
    out.push(name);
  }
  return out;
}

/**
 * An optional string field is set only when it is a non-empty string: Kong may hand
 * unset fields over as ngx.null, and turns an unresolvable vault reference into "".
 */
function hasText(this: void, value: string | undefined): value is string {
  return type(value) === "string" && value !== "";
}

function send(this: void, red: RestyRedis, command: string, argv: (string | number)[]): RedisResult {
  const fn = red[command] as RedisCommandFn;
  return fn.call(red, ...argv);
}

/**
 * A network failure: the connection is closed and the breaker told what the failure cost
 * (`cause` is lua-resty-redis's own error, e.g. "timeout"; `message` what the caller sees).
 */
function fail(this: void, red: RestyRedis, conf: RedisConf, started: number, probe: boolean, cause: string | undefined, message: string): LuaMultiReturn<[undefined, string]> {
  red.close();
  ngx.update_time();
  breaker.report(poolName(conf), breaker.classify(cause, ngx.now() - started, conf.timeout), probe);
  return $multi(undefined, message);
}

/** Redis answered with an error reply while the connection was set up: not a network failure. */
function refused(this: void, red: RestyRedis, conf: RedisConf, probe: boolean, message: string): LuaMultiReturn<[undefined, string]> {
  red.close();
  breaker.report(poolName(conf), "answered", probe);
  return $multi(undefined, message);
}

function open(this: void, conf: RedisConf, started: number): LuaMultiReturn<[RestyRedis | undefined, string | undefined]> {
  const pool = poolName(conf);
  const [openErr, probe] = breaker.check(pool, conf.timeout);
  if (openErr !== undefined) return $multi(undefined, openErr);
  const [red, newErr] = restyRedis.new();
  if (red === undefined) return $multi(undefined, "could not create a redis object: " + tostring(newErr));
  red.set_timeout(conf.timeout);
  const [ok, err] = red.connect(conf.host, conf.port, { pool, pool_size: conf.keepalive_pool_size });
  if (ok === undefined) return fail(red, conf, started, probe, err, `could not connect to redis at ${conf.host}:${conf.port}: ${err}`);
  const [reused] = red.get_reused_times();
  if (reused === 0) {
    if (conf.ssl) {
      // Done on the socket so it works with Debian's lua-resty-redis 0.27, whose connect()
      // has no ssl option, and with Kong's newer one alike.
      // pcall: lua-resty-core 0.1.25 (Debian) raises an assertion instead of returning an
      // error when a handshake fails verification synchronously (fixed in later versions).
      const sock = (red as RestyRedisWithSock)._sock!;
      const serverName = hasText(conf.server_name) ? conf.server_name : conf.host;
      const [called, session, sslErr] = pcall(() => sock.sslhandshake(undefined, serverName, conf.ssl_verify));
      if (!called || session === undefined) {
        const reason = called ? sslErr : `handshake aborted (${tostring(session)})`;
        return fail(red, conf, started, probe, called ? tostring(sslErr) : undefined, `TLS handshake with redis at ${conf.host}:${conf.port} failed: ${reason}`);
      }
    }
    if (hasText(conf.password)) {
      const argv: (string | number)[] = hasText(conf.username) ? [conf.username, conf.password] : [conf.password];
      const [res, authErr] = send(red, "auth", argv);
      if (res === undefined) return fail(red, conf, started, probe, authErr, `redis AUTH failed: ${authErr}`);
      if (res === false) return refused(red, conf, probe, `redis AUTH refused: ${authErr}`);
    }
    if (conf.database !== 0) {
      const [res, selectErr] = send(red, "select", [conf.database]);
      if (res === undefined) return fail(red, conf, started, probe, selectErr, `redis SELECT failed: ${selectErr}`);
      if (res === false) return refused(red, conf, probe, `redis SELECT ${conf.database} refused: ${selectErr}`);
    }
  }
  if (probe) {
    // The one call let through an open circuit: an accepted TCP connection proves nothing
    // (a hung Redis still accepts), so it hands the connection over only once Redis has
    // answered, and the circuit is closed by then.
    const [pong, pingErr] = send(red, "ping", []);
    if (pong === undefined) return fail(red, conf, started, true, pingErr, `redis PING failed: ${pingErr}`);
    breaker.report(pool, "answered", true);
  }
  return $multi(red, undefined);
}

/** A ready connection (pooled, authenticated, database selected), or nil plus the reason. */
export function connect(this: void, conf: RedisConf): LuaMultiReturn<[RestyRedis | undefined, string | undefined]> {
  return open(conf, accounting.start());
}

/** Back to the pool; a connection that cannot be pooled is closed. */
export function release(this: void, red: RestyRedis, conf: RedisConf): void {
  const [ok] = red.set_keepalive(conf.keepalive_timeout, conf.keepalive_pool_size);
  if (ok === undefined) red.close();
}

function scriptOf(this: void, call: ScriptCall): EmbeddedScript {
  const script = embedded.get(call.script);
  if (script === undefined) error(`unknown redis script '${call.script}' (see redis-lua/)`, 3);
  if (call.keys.length !== script.numkeys) error(`redis script '${call.script}' takes ${script.numkeys} keys, got ${call.keys.length}`, 3);
  return script;
}

function argvOf(this: void, first: string, call: ScriptCall, numkeys: number): (string | number)[] {
  const argv: (string | number)[] = [first, numkeys];
  for (const key of call.keys) argv.push(key);
  for (const arg of call.args) argv.push(arg);
  return argv;
}

function isNoScript(this: void, err: string | undefined): boolean {
  return err !== undefined && string.sub(err, 1, 8) === "NOSCRIPT";
}

/**
 * The end of every call: on a network failure the connection is closed and the breaker
 * told; otherwise it goes back to the pool. Either way the call is accounted.
 */
function finish<T>(this: void, red: RestyRedis, conf: RedisConf, started: number, trips: number, what: string, res: T | false | undefined, err: string | undefined): LuaMultiReturn<[T | false | undefined, string | undefined]> {
  if (res === undefined) {
    accounting.record(started, trips, true);
    return fail(red, conf, started, false, err, `${what} failed: ${err}`);
  }
  release(red, conf);
  breaker.report(poolName(conf), "answered", false);
  accounting.record(started, trips, false);
  return $multi(res, err);
}

function connectAccounted(this: void, conf: RedisConf, started: number): LuaMultiReturn<[RestyRedis | undefined, string | undefined]> {
  const [red, err] = open(conf, started);
  if (red === undefined) accounting.record(started, 0, true);
  return $multi(red, err);
}

/** Runs one script: EVALSHA, and EVAL once when Redis lost its script cache. */
export function script(this: void, conf: RedisConf, call: ScriptCall): RedisResult {
  const embeddedScript = scriptOf(call);
  const started = accounting.start();
  const [red, connectErr] = connectAccounted(conf, started);
  if (red === undefined) return $multi(undefined, connectErr);
  let [res, err] = send(red, "evalsha", argvOf(embeddedScript.sha1, call, embeddedScript.numkeys));
  let trips = 1;
  if (res === false && isNoScript(err)) {
    [res, err] = send(red, "eval", argvOf(embeddedScript.source, call, embeddedScript.numkeys));
    trips++;
  }
  return finish(red, conf, started, trips, `redis script '${call.script}'`, res, err);
}

/** Runs one plain command. */
export function command(this: void, conf: RedisConf, name: string, ...args: (string | number)[]): RedisResult {
  const started = accounting.start();
  const [red, connectErr] = connectAccounted(conf, started);
  if (red === undefined) return $multi(undefined, connectErr);
  const [res, err] = send(red, name, args);
  return finish(red, conf, started, 1, `redis ${name}`, res, err);
}

function queue(this: void, red: RestyRedis, call: Call, useSource: boolean): void {
  const scriptCall = call as ScriptCall;
  if (scriptCall.script !== undefined) {
    const s = scriptOf(scriptCall);
    send(red, useSource ? "eval" : "evalsha", argvOf(useSource ? s.source : s.sha1, scriptCall, s.numkeys));
  } else {
    const commandCall = call as CommandCall;
    send(red, commandCall.command, commandCall.args);
  }
}

/**
 * Several commands and scripts in one round trip. Replies come back in order; a Redis
 * error reply for one call is `{ false, msg }` in its slot. Scripts Redis no longer has
 * cached are sent again with EVAL in one more round trip.
 */
export function pipeline(this: void, conf: RedisConf, calls: Call[]): LuaMultiReturn<[PipelineReply[] | undefined, string | undefined]> {
  const started = accounting.start();
  const [red, connectErr] = connectAccounted(conf, started);
  if (red === undefined) return $multi(undefined, connectErr);
  red.init_pipeline(calls.length);
  for (const call of calls) queue(red, call, false);
  const [replies, err] = red.commit_pipeline();
  if (replies === undefined) return finish<PipelineReply[]>(red, conf, started, 1, "redis pipeline", undefined, err) as LuaMultiReturn<[PipelineReply[] | undefined, string | undefined]>;
  const retry: number[] = [];
  for (let i = 0; i < calls.length; i++) {
    const reply = replies[i];
    if (type(reply) === "table" && (reply as [false, string])[0] === false && isNoScript((reply as [false, string])[1])) retry.push(i);
  }
  if (retry.length === 0) return finish(red, conf, started, 1, "redis pipeline", replies as PipelineReply[], undefined) as LuaMultiReturn<[PipelineReply[] | undefined, string | undefined]>;
  red.init_pipeline(retry.length);
  for (const i of retry) queue(red, calls[i], true);
  const [again, againErr] = red.commit_pipeline();
  if (again !== undefined) for (let j = 0; j < retry.length; j++) replies[retry[j]] = again[j];
  return finish(red, conf, started, 2, "redis pipeline", again !== undefined ? (replies as PipelineReply[]) : undefined, againErr) as LuaMultiReturn<[PipelineReply[] | undefined, string | undefined]>;
}

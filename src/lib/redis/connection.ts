/**
 * One connection to one Redis server (a standalone server, a cluster node or a
 * sentinel): cosocket pool per server and identity, TLS/AUTH/SELECT only on fresh
 * connections, and the circuit breaker of that server. client.ts decides which server
 * a call goes to; this module only knows how to reach one.
 */
import * as restyRedis from "resty.redis";
import * as breaker from "./breaker";
import type { RedisConf } from "./schema";

/** Who to be on a server: the data nodes use the conf's credentials, sentinels their own. */
export interface Identity {
  username?: string;
  password?: string;
  database: number;
}

/**
 * An optional string field is set only when it is a non-empty string: Kong may hand
 * unset fields over as ngx.null, and turns an unresolvable vault reference into "".
 */
export function hasText(this: void, value: unknown): value is string {
  return type(value) === "string" && value !== "";
}

/** Pool names per identity table, host and port (weak keys: a config version's tables go with it). */
const poolNames = setmetatable(new LuaTable<Identity, LuaTable<string, LuaTable<number, string>>>(), { __mode: "k" });

/**
 * Connections are only shared between identical servers and identities: host, port,
 * database, TLS settings and a hash of the credentials. Also the breaker's key: one
 * circuit per server, so one failed cluster node does not open it for the others.
 * Hot path (twice per call): table lookups only once a server was named.
 */
export function nodePool(this: void, conf: RedisConf, who: Identity, host: string, port: number): string {
  let byHost = poolNames.get(who);
  if (byHost === undefined) {
    byHost = new LuaTable();
    poolNames.set(who, byHost);
  }
  let byPort = byHost.get(host);
  if (byPort === undefined) {
    byPort = new LuaTable();
    byHost.set(host, byPort);
  }
  const cached = byPort.get(port);
  if (cached !== undefined) return cached;
  const credentials = hasText(who.password) ? string.sub(ngx.md5(`${who.username ?? ""}\0${who.password}`), 1, 16) : "-";
  const tls = conf.ssl ? `tls${conf.ssl_verify ? "v" : ""}:${hasText(conf.server_name) ? conf.server_name : ""}` : "plain";
  const name = `krs:${host}:${port}:${who.database}:${tls}:${credentials}`;
  byPort.set(port, name);
  return name;
}

export function send(this: void, red: RestyRedis, command: string, argv: (string | number)[]): RedisResult {
  const fn = red[command] as RedisCommandFn;
  return fn.call(red, ...argv);
}

/**
 * A network failure: the connection is closed and the server's breaker told what the
 * failure cost (`cause` is lua-resty-redis's own error, e.g. "timeout"; `message` what
 * the caller sees).
 */
export function fail(this: void, red: RestyRedis, conf: RedisConf, pool: string, started: number, probe: boolean, cause: string | undefined, message: string): string {
  red.close();
  ngx.update_time();
  breaker.report(pool, breaker.classify(cause, ngx.now() - started, conf.timeout), probe);
  return message;
}

/** Redis answered with an error reply while the connection was set up: not a network failure. */
function refused(this: void, red: RestyRedis, pool: string, probe: boolean, message: string): string {
  red.close();
  breaker.report(pool, "answered", probe);
  return message;
}

/** A failure after the connection was made: something may have been sent. */
function notSent(this: void, message: string): LuaMultiReturn<[undefined, string, boolean]> {
  return $multi(undefined, message, false);
}

/**
 * The cosocket pool a dedicated connection connects through: nothing is ever put back
 * into it (a subscribed connection is closed), so connecting through it always opens a
 * new connection, never one a request left in the keepalive pool.
 */
const DEDICATED = ":dedicated";

/**
 * A ready connection to `host:port` (pooled, authenticated as `who`, database selected),
 * or nil plus the reason. `refusedAtConnect` is true when the TCP connect itself failed:
 * nothing was sent, so the caller may safely try another server. `dedicated`: a new
 * connection of the caller's own (a subscriber keeps it for as long as it listens, then
 * closes it), never one from the keepalive pool; the server's breaker is the same.
 */
export function openAt(this: void, conf: RedisConf, who: Identity, host: string, port: number, started: number, dedicated?: boolean): LuaMultiReturn<[RestyRedis | undefined, string | undefined, boolean]> {
  const pool = nodePool(conf, who, host, port);
  const [openErr, probe] = breaker.check(pool, conf.timeout);
  if (openErr !== undefined) return $multi(undefined, `${openErr} (redis at ${host}:${port})`, true);
  const [red, newErr] = restyRedis.new();
  if (red === undefined) return $multi(undefined, "could not create a redis object: " + tostring(newErr), false);
  red.set_timeout(conf.timeout);
  let ok: 1 | undefined;
  let err: string | undefined;
  if (dedicated === true) [ok, err] = red.connect(host, port, { pool: pool + DEDICATED });
  else [ok, err] = red.connect(host, port, { pool, pool_size: conf.keepalive_pool_size });
  if (ok === undefined) {
    return $multi(undefined, fail(red, conf, pool, started, probe, err, `could not connect to redis at ${host}:${port}: ${err}`), true);
  }
  const [reused] = red.get_reused_times();
  if (reused === 0) {
    if (conf.ssl) {
      // Done on the socket so it works with Debian's lua-resty-redis 0.27, whose connect()
      // has no ssl option, and with Kong's newer one alike.
      // pcall: lua-resty-core 0.1.25 (Debian) raises an assertion instead of returning an
      // error when a handshake fails verification synchronously (fixed in later versions).
      const sock = (red as RestyRedisWithSock)._sock!;
      const serverName = hasText(conf.server_name) ? conf.server_name : host;
      const [called, session, sslErr] = pcall(() => sock.sslhandshake(undefined, serverName, conf.ssl_verify));
      if (!called || session === undefined) {
        const reason = called ? sslErr : `handshake aborted (${tostring(session)})`;
        return notSent(fail(red, conf, pool, started, probe, called ? tostring(sslErr) : undefined, `TLS handshake with redis at ${host}:${port} failed: ${reason}`));
      }
    }
    if (hasText(who.password)) {
      const argv: (string | number)[] = hasText(who.username) ? [who.username, who.password] : [who.password];
      const [res, authErr] = send(red, "auth", argv);
      if (res === undefined) return notSent(fail(red, conf, pool, started, probe, authErr, `redis AUTH failed: ${authErr}`));
      if (res === false) return notSent(refused(red, pool, probe, `redis AUTH refused: ${authErr}`));
    }
    if (who.database !== 0) {
      const [res, selectErr] = send(red, "select", [who.database]);
      if (res === undefined) return notSent(fail(red, conf, pool, started, probe, selectErr, `redis SELECT failed: ${selectErr}`));
      if (res === false) return notSent(refused(red, pool, probe, `redis SELECT ${who.database} refused: ${selectErr}`));
    }
  }
  if (probe) {
    // The one call let through an open circuit: an accepted TCP connection proves nothing
    // (a hung Redis still accepts), so it hands the connection over only once Redis has
    // answered, and the circuit is closed by then.
    const [pong, pingErr] = send(red, "ping", []);
    if (pong === undefined) return notSent(fail(red, conf, pool, started, true, pingErr, `redis PING failed: ${pingErr}`));
    breaker.report(pool, "answered", true);
  }
  return $multi(red, undefined, false);
}

/** Back to the pool; a connection that cannot be pooled is closed. */
export function release(this: void, red: RestyRedis, conf: RedisConf): void {
  const [ok] = red.set_keepalive(conf.keepalive_timeout, conf.keepalive_pool_size);
  if (ok === undefined) red.close();
}

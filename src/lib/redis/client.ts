/**
 * The one way the suite reaches Redis: a standalone server, a Redis Cluster or the
 * server Redis Sentinel names, as `config.redis` says (schema.ts). Connections come from
 * lua-resty-redis's cosocket pool (set_keepalive), one pool per server, never from a
 * module-level object; AUTH/SELECT/TLS happen only on fresh connections; scripts run by
 * EVALSHA with one EVAL fallback on NOSCRIPT, on the server that answered NOSCRIPT.
 *
 * On a cluster a call goes to the master serving its first key's slot (cluster.ts), and
 * follows MOVED (the slot map is fixed and refreshed) and ASK (ASKING, then the call) at
 * most `cluster_max_redirections` times. A pipeline is split per node, the parts sent to
 * all nodes before any reply is read (one round trip of the slowest node), and its
 * replies put back in order. Every call of the suite touches one
 * hash tag (DESIGN.md), so no call spans slots.
 *
 * Every function returns lua-resty-redis's triple meaning:
 *   reply            success
 *   false, msg       Redis answered with an error reply (-ERR …)
 *   nil, err         network failure, timeout, open circuit
 * The caller's phase handler decides what a failure means (see fault.ts).
 */
import * as embedded from "krs.scripts";
import * as accounting from "./accounting";
import * as breaker from "./breaker";
import * as cluster from "./cluster";
import { hasText, nodePool, openAt, release as releaseConnection, send, type Identity } from "./connection";
import * as sentinel from "./sentinel";
import { keySlot } from "./slot";
import { modeOf, type ClusterNode, type RedisConf, type RedisMode, type SentinelNode } from "./schema";

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

/** What a conf resolves to, computed once per conf table. */
interface Target {
  mode: RedisMode;
  /** The pool name of a standalone server; the cluster's or sentinel config's identity otherwise. */
  id: string;
  /** Who the data servers are talked to as. */
  who: Identity;
  /** Who the sentinels are talked to as. */
  sentinelWho: Identity;
}

const targets = setmetatable(new LuaTable<RedisConf, Target>(), { __mode: "k" });

function targetOf(this: void, conf: RedisConf): Target {
  const cached = targets.get(conf);
  if (cached !== undefined) return cached;
  const mode = modeOf(conf);
  const who: Identity = {
    username: hasText(conf.username) ? conf.username : undefined,
    password: hasText(conf.password) ? conf.password : undefined,
    // A cluster has database 0 only (the schema refuses another).
    database: mode === "cluster" ? 0 : conf.database,
  };
  const sentinelWho: Identity = {
    username: hasText(conf.sentinel_username) ? conf.sentinel_username : undefined,
    password: hasText(conf.sentinel_password) ? conf.sentinel_password : undefined,
    database: 0,
  };
  let id: string;
  if (mode === "cluster") {
    const seeds: string[] = [];
    for (const node of conf.cluster_nodes as ClusterNode[]) seeds.push(`${node.ip}:${node.port}`);
    id = `krs:cluster:${table.concat(seeds, ",")}:${string.sub(nodePool(conf, who, "", 0), 6)}`;
  } else if (mode === "sentinel") {
    const nodes: string[] = [];
    for (const node of conf.sentinel_nodes as SentinelNode[]) nodes.push(`${node.host}:${node.port}`);
    id = `krs:sentinel:${conf.sentinel_master as string}:${tostring(conf.sentinel_role)}:${table.concat(nodes, ",")}:${string.sub(nodePool(conf, who, "", 0), 6)}`;
  } else {
    id = nodePool(conf, who, conf.host, conf.port);
  }
  const target: Target = { mode, id, who, sentinelWho };
  targets.set(conf, target);
  return target;
}

/**
 * One name per Redis deployment and identity: a standalone server's connection pool, or
 * the cluster / sentinel config as a whole. Plugins key their per-Redis state by it.
 */
export function poolName(this: void, conf: RedisConf): string {
  return targetOf(conf).id;
}

/** Back to the pool; a connection that cannot be pooled is closed. */
export function release(this: void, red: RestyRedis, conf: RedisConf): void {
  releaseConnection(red, conf);
}

function scriptOf(this: void, call: ScriptCall): EmbeddedScript {
  const script = embedded.get(call.script);
  if (script === undefined) error(`unknown redis script '${call.script}' (see redis-lua/)`, 4);
  if (call.keys.length !== script.numkeys) error(`redis script '${call.script}' takes ${script.numkeys} keys, got ${call.keys.length}`, 4);
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

function isErrorReply(this: void, reply: unknown): reply is [false, string] {
  return type(reply) === "table" && (reply as [false, string])[0] === false;
}

/** Commands whose first argument is not a key: on a cluster any node serves them. */
const KEYLESS = new LuaTable<string, boolean>();
for (const name of ["publish", "ping", "echo", "time", "info", "script", "cluster", "dbsize", "randomkey", "subscribe", "psubscribe", "wait"]) KEYLESS.set(name, true);

function slotOf(this: void, call: Call): number | undefined {
  const scriptCall = call as ScriptCall;
  if (scriptCall.script !== undefined) return scriptCall.keys.length > 0 ? keySlot(scriptCall.keys[0]) : undefined;
  const commandCall = call as CommandCall;
  if (KEYLESS.has(commandCall.command) || commandCall.args.length === 0) return undefined;
  return keySlot(tostring(commandCall.args[0]));
}

/** The cosocket calls the EVALSHA path makes itself (lua-nginx-module's tcpsock API). */
interface RawSocket {
  send(this: RawSocket, data: string[]): LuaMultiReturn<[number | undefined, string | undefined]>;
  receiveany(this: RawSocket, max: number): LuaMultiReturn<[string | undefined, string | undefined]>;
  receive(this: RawSocket, size: number): LuaMultiReturn<[string | undefined, string | undefined]>;
}

/** Per script, its EVALSHA's RESP after the argument count (`EVALSHA <sha1> <numkeys>`): the same on every call. */
const evalshaHeads = new LuaTable<EmbeddedScript, string>();
/** `*<count>\r\n` lines, by count. */
const countLines = new LuaTable<number, string>();
/** `\r\n$<length>\r\n`, the line before a bulk string of that length, by length. */
const lengthLines = new LuaTable<number, string>();

function evalshaHead(this: void, script: EmbeddedScript): string {
  const known = evalshaHeads.get(script);
  if (known !== undefined) return known;
  const numkeys = tostring(script.numkeys);
  const head = `$7\r\nEVALSHA\r\n$40\r\n${script.sha1}\r\n$${numkeys.length}\r\n${numkeys}`;
  evalshaHeads.set(script, head);
  return head;
}

function countLine(this: void, count: number): string {
  const known = countLines.get(count);
  if (known !== undefined) return known;
  const line = `*${count}\r\n`;
  countLines.set(count, line);
  return line;
}

/** Lengths up to this get a kept length line; longer ones (a log line, a cached body) are rarer and unbounded in number. */
const MAX_KEPT_LENGTH = 1024;

function lengthLine(this: void, length: number): string {
  const known = lengthLines.get(length);
  if (known !== undefined) return known;
  const line = `\r\n$${length}\r\n`;
  if (length <= MAX_KEPT_LENGTH) lengthLines.set(length, line);
  return line;
}

/**
 * The pieces of one EVALSHA request, reused by every call: filled and handed to send()
 * (which copies them) with no yield in between, so no two calls ever share it. Strings
 * only: send() converts a number piece to text twice, and joining the pieces in Lua
 * first makes a long string per call that LuaJIT interns (slow when many look alike).
 */
const request: string[] = [];

/** One bulk string from `at`: its length line (the head ends without its CRLF), then its text. */
function putBulk(this: void, at: number, value: string | number): number {
  const text = type(value) === "string" ? (value as string) : tostring(value);
  request[at] = lengthLine(text.length);
  request[at + 1] = text;
  return at + 2;
}

/** How much one receive takes; a longer reply takes more receives. */
const READ_CHUNK = 8192;

/**
 * One RESP value of `buf` from `pos`: lua-resty-redis's reply shapes (an error reply is
 * `false, msg`, inside an array `{ false, msg }`), and where the next value starts. While
 * `buf` ends before the value does: no position, and the length `buf` must reach before
 * parsing again is worth it (a bulk's end; one byte more when a line is not complete).
 */
function parseReply(this: void, buf: string, pos: number): LuaMultiReturn<[RedisReply | false | undefined, string | undefined, number | undefined, number]> {
  const [lineEnd] = string.find(buf, "\r\n", pos, true);
  if (lineEnd === undefined) return $multi(undefined, undefined, undefined, buf.length + 1);
  const prefix = string.byte(buf, pos);
  const after = lineEnd + 2;
  if (prefix === 58) { // ':'
    const n = tonumber(string.sub(buf, pos + 1, lineEnd - 1));
    if (n === undefined) return $multi(undefined, "bad integer reply", undefined, 0);
    return $multi(n, undefined, after, 0);
  }
  if (prefix === 42) { // '*'
    const n = tonumber(string.sub(buf, pos + 1, lineEnd - 1)) ?? -1;
    if (n < 0) return $multi(ngx.null, undefined, after, 0);
    const values: RedisReply[] = [];
    let next = after;
    for (let i = 0; i < n; i++) {
      const [value, msg, at, need] = parseReply(buf, next);
      if (at === undefined) return $multi(value, msg, undefined, need);
      values[i] = value === false ? ([false, msg] as unknown as RedisReply) : (value as RedisReply);
      next = at;
    }
    return $multi(values, undefined, next, 0);
  }
  if (prefix === 36) { // '$'
    const size = tonumber(string.sub(buf, pos + 1, lineEnd - 1)) ?? -1;
    if (size < 0) return $multi(ngx.null, undefined, after, 0);
    if (after + size + 1 > buf.length) return $multi(undefined, undefined, undefined, after + size + 1);
    return $multi(string.sub(buf, after, after + size - 1), undefined, after + size + 2, 0);
  }
  if (prefix === 43) return $multi(string.sub(buf, pos + 1, lineEnd - 1), undefined, after, 0); // '+'
  if (prefix === 45) return $multi(false, string.sub(buf, pos + 1, lineEnd - 1), after, 0); // '-'
  // Not RESP: the connection cannot be read further (the caller closes it).
  return $multi(undefined, `unknown prefix: "${tostring(prefix)}"`, undefined, 0);
}

/**
 * EVALSHA of `call` on `red`'s connection: the request in one send (the script's head
 * built once), the reply read with as few receives as it takes, usually one.
 */
function evalsha(this: void, red: RestyRedis, script: EmbeddedScript, call: ScriptCall): RedisResult {
  const sock = (red as RestyRedisWithSock)._sock as unknown as RawSocket | undefined;
  if (sock === undefined) return $multi(undefined, "not initialized");
  const keys = call.keys;
  const args = call.args;
  const previous = request.length;
  request[0] = countLine(3 + keys.length + args.length);
  request[1] = evalshaHead(script);
  let at = 2;
  // The first key outside the loop: a one-key call (the suite's usual one) enters no loop
  // for its keys, which LuaJIT cannot make a trace of ("leaving loop in root trace").
  if (keys.length > 0) at = putBulk(at, keys[0]);
  for (let i = 1; i < keys.length; i++) at = putBulk(at, keys[i]);
  for (let i = 0; i < args.length; i++) at = putBulk(at, args[i]);
  request[at] = "\r\n";
  for (let i = at + 1; i < previous; i++) request[i] = undefined as unknown as string;
  const [sent, sendErr] = sock.send(request);
  if (sent === undefined) return $multi(undefined, sendErr);
  const [buf, err] = sock.receiveany(READ_CHUNK);
  if (buf === undefined) return $multi(undefined, err);
  // Nearly every reply fits in the first read: parsed at once.
  const [reply, msg, next] = parseReply(buf, 1);
  if (next !== undefined) {
    if (next <= buf.length) return $multi(undefined, "unexpected data after a redis reply");
    return $multi(reply, msg);
  }
  if (msg !== undefined) return $multi(undefined, msg);
  return readLongReply(sock, buf);
}

/** An array being read: its values so far, and how many it has. */
interface OpenArray {
  values: RedisReply[];
  count: number;
}

/**
 * `buf` from `pos` on, followed by more of the reply: at least up to length `need` of the
 * kept part when a bulk's size says so (one receive), else what the socket has.
 */
function readMore(this: void, sock: RawSocket, buf: string, pos: number, need: number): LuaMultiReturn<[string | undefined, string | undefined]> {
  const kept = pos > 1 ? string.sub(buf, pos) : buf;
  const wanted = need - pos + 1;
  const [more, err] = wanted > kept.length + 1 ? sock.receive(wanted - kept.length) : sock.receiveany(READ_CHUNK);
  if (more === undefined) return $multi(undefined, err);
  return $multi(kept + more, undefined);
}

/**
 * A reply longer than one read (a cached body, an ip-access list of 100,000 entries), read
 * as it comes: each value is parsed once and what was parsed is dropped from the buffer, so
 * the cost grows with the reply's size, not with its size times its reads. Arrays nest
 * through a stack; the shapes are parseReply's.
 */
function readLongReply(this: void, sock: RawSocket, buf: string): RedisResult {
  const open: OpenArray[] = [];
  let pos = 1;
  for (;;) {
    const [lineEnd] = string.find(buf, "\r\n", pos, true);
    if (lineEnd === undefined) {
      const [more, err] = readMore(sock, buf, pos, 0);
      if (more === undefined) return $multi(undefined, err);
      buf = more;
      pos = 1;
      continue;
    }
    let value: RedisReply | false;
    let msg: string | undefined;
    if (string.byte(buf, pos) === 42) { // '*': an array opens (its values follow)
      const n = tonumber(string.sub(buf, pos + 1, lineEnd - 1)) ?? -1;
      if (n > 0) {
        open.push({ values: [], count: n });
        pos = lineEnd + 2;
        continue;
      }
      value = n < 0 ? ngx.null : [];
      pos = lineEnd + 2;
    } else {
      const [scalar, scalarMsg, at, need] = parseReply(buf, pos);
      if (at === undefined) {
        if (scalarMsg !== undefined) return $multi(undefined, scalarMsg);
        const [more, err] = readMore(sock, buf, pos, need);
        if (more === undefined) return $multi(undefined, err);
        buf = more;
        pos = 1;
        continue;
      }
      value = scalar as RedisReply | false; // a position means a value
      msg = scalarMsg;
      pos = at;
    }
    // The value completes its array, which may complete the one holding it, ...
    for (;;) {
      const top = open[open.length - 1];
      if (top === undefined) {
        if (pos <= buf.length) return $multi(undefined, "unexpected data after a redis reply");
        return $multi(value, msg);
      }
      top.values.push(value === false ? ([false, msg] as unknown as RedisReply) : value);
      if (top.values.length < top.count) break;
      open.pop();
      value = top.values;
      msg = undefined;
    }
  }
}

/**
 * Sends one call on `red`, preceded by ASKING when the slot is being imported there (in
 * the same round trip). A script Redis does not have is sent again with EVAL on the same
 * connection. Returns the reply, its error, and the round trips it took.
 */
function sendCall(this: void, red: RestyRedis, call: Call, asking: boolean): LuaMultiReturn<[RedisReply | false | undefined, string | undefined, number]> {
  const scriptCall = call as ScriptCall;
  let res: RedisReply | false | undefined;
  let err: string | undefined;
  let script: EmbeddedScript | undefined;
  if (scriptCall.script !== undefined) {
    script = scriptOf(scriptCall);
    if (asking) [res, err] = sendAsking(red, true, "evalsha", argvOf(script.sha1, scriptCall, script.numkeys));
    else [res, err] = evalsha(red, script, scriptCall);
  } else {
    [res, err] = sendAsking(red, asking, (call as CommandCall).command, (call as CommandCall).args);
  }
  let trips = 1;
  if (script !== undefined && res === false && isNoScript(err)) {
    [res, err] = sendAsking(red, asking, "eval", argvOf(script.source, scriptCall, script.numkeys));
    trips++;
  }
  return $multi(res, err, trips);
}

function sendAsking(this: void, red: RestyRedis, asking: boolean, command: string, argv: (string | number)[]): RedisResult {
  if (!asking) return send(red, command, argv);
  red.init_pipeline(2);
  send(red, "asking", []);
  send(red, command, argv);
  const [replies, err] = red.commit_pipeline();
  if (replies === undefined) return $multi(undefined, err);
  const reply = replies[1];
  if (isErrorReply(reply)) return $multi(false, reply[1]);
  return $multi(reply as RedisReply, undefined);
}

type Redirect = "moved" | "ask" | "tryagain";

/** A cluster redirection in an error reply: its kind, slot and target. */
function redirectOf(this: void, err: string | undefined): LuaMultiReturn<[Redirect | undefined, number, string, number]> {
  if (err === undefined) return $multi(undefined, 0, "", 0);
  const [kind, slot, host, port] = string.match(err, "^(%u+) (%d+) (%S+):(%d+)");
  if (kind === "MOVED" || kind === "ASK") return $multi(kind === "MOVED" ? "moved" : "ask", tonumber(slot)!, host!, tonumber(port)!);
  if (string.sub(err, 1, 8) === "TRYAGAIN") return $multi("tryagain", 0, "", 0);
  return $multi(undefined, 0, "", 0);
}

/**
 * The end of a call on one server: on a network failure the connection is closed and
 * that server's breaker told; otherwise it goes back to the pool.
 */
function settle(this: void, red: RestyRedis, conf: RedisConf, pool: string, started: number, res: unknown, err: string | undefined): string | undefined {
  if (res === undefined) {
    red.close();
    ngx.update_time();
    breaker.report(pool, breaker.classify(err, ngx.now() - started, conf.timeout), false);
    return err;
  }
  releaseConnection(red, conf);
  breaker.report(pool, "answered", false);
  return undefined;
}

/** One call on a standalone server, or the server sentinel names (asked again after a failure). */
function runDirect(this: void, conf: RedisConf, target: Target, call: Call, what: string): RedisResult {
  const started = accounting.start();
  let trips = 0;
  const attempts = target.mode === "sentinel" ? 2 : 1;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    let host = conf.host;
    let port = conf.port;
    if (target.mode === "sentinel") {
      const [h, p, resolveErr] = sentinel.resolve(conf, target.id, target.sentinelWho);
      if (h === undefined) {
        accounting.record(started, trips, true);
        return $multi(undefined, resolveErr);
      }
      host = h;
      port = p!;
    }
    const [red, connectErr, notSent] = openAt(conf, target.who, host, port, started);
    if (red === undefined) {
      if (target.mode === "sentinel") sentinel.forget(target.id);
      if (notSent && attempt < attempts) continue;
      accounting.record(started, trips, true);
      return $multi(undefined, connectErr);
    }
    const [res, err, sent] = sendCall(red, call, false);
    trips += sent;
    const pool = nodePool(conf, target.who, host, port);
    const failure = settle(red, conf, pool, started, res, err);
    if (failure !== undefined) {
      if (target.mode === "sentinel") sentinel.forget(target.id);
      accounting.record(started, trips, true);
      return $multi(undefined, `${what} failed: ${failure}`);
    }
    // A demoted master (the failover happened, this worker did not hear of it yet).
    if (target.mode === "sentinel" && res === false && string.sub(err ?? "", 1, 8) === "READONLY") {
      sentinel.forget(target.id);
      if (attempt < attempts) continue;
    }
    accounting.record(started, trips, false);
    return $multi(res, err);
  }
  accounting.record(started, trips, true);
  return $multi(undefined, `${what} failed: no usable redis server`);
}

/** One call on a cluster, following redirections. */
function runClustered(this: void, conf: RedisConf, target: Target, call: Call, what: string): RedisResult {
  const started = accounting.start();
  const slot = slotOf(call);
  let [server, mapErr] = cluster.serverFor(conf, target.id, target.who, slot);
  let asking = false;
  let trips = 0;
  let last = "";
  for (let hop = 0; hop <= conf.cluster_max_redirections; hop++) {
    if (server === undefined) {
      accounting.record(started, trips, true);
      return $multi(undefined, mapErr);
    }
    const [red, connectErr, notSent] = openAt(conf, target.who, server.host, server.port, started);
    if (red === undefined) {
      cluster.nodeFailed(target.id);
      // Nothing was sent: after a failover the slot may be served elsewhere already.
      if (notSent && slot !== undefined && hop < conf.cluster_max_redirections) {
        cluster.refresh(conf, target.id, target.who);
        const [next] = cluster.serverFor(conf, target.id, target.who, slot);
        if (next !== undefined && next.addr !== server.addr) {
          server = next;
          asking = false;
          continue;
        }
      }
      accounting.record(started, trips, true);
      return $multi(undefined, atNode(connectErr, server));
    }
    const [res, err, sent] = sendCall(red, call, asking);
    trips += sent;
    const failure = settle(red, conf, nodePool(conf, target.who, server.host, server.port), started, res, err);
    if (failure !== undefined) {
      cluster.nodeFailed(target.id);
      accounting.record(started, trips, true);
      return $multi(undefined, `${what} failed: ${failure} (redis at ${server.addr})`);
    }
    const [redirect, movedSlot, host, port] = redirectOf(res === false ? err : undefined);
    if (redirect === undefined) {
      accounting.record(started, trips, false);
      return $multi(res, err);
    }
    last = err!;
    if (redirect === "moved") {
      server = cluster.moved(target.id, movedSlot, host, port);
      asking = false;
    } else if (redirect === "ask") {
      server = cluster.asked(target.id, host, port);
      asking = true;
    } else {
      // A multi-key call during a slot migration: wait for it a little.
      ngx.sleep(0.01 * (hop + 1));
    }
  }
  accounting.record(started, trips, true);
  return $multi(false, `${what}: more than ${conf.cluster_max_redirections} cluster redirections (last: ${last})`);
}

/** A cluster failure names its node, so that it is logged (and throttled) per node. */
function atNode(this: void, err: string | undefined, server: cluster.Server): string {
  const message = err ?? "unknown error";
  const [named] = string.find(message, "redis at ", 1, true);
  return named !== undefined ? message : `${message} (redis at ${server.addr})`;
}

function run(this: void, conf: RedisConf, call: Call, what: string): RedisResult {
  const target = targetOf(conf);
  if (target.mode === "cluster") return runClustered(conf, target, call, what);
  return runDirect(conf, target, call, what);
}

/**
 * A connection of the caller's own for a subscriber (authenticated, database selected,
 * never one from the keepalive pool: the caller closes it when done), or nil plus the
 * reason: the standalone server, the server sentinel names, or on a cluster one of its
 * masters (the next one each time; a node that does not answer is skipped): Redis
 * Cluster forwards every classic PUBLISH to every node, so any node hears every channel.
 */
export function connect(this: void, conf: RedisConf): LuaMultiReturn<[RestyRedis | undefined, string | undefined]> {
  const target = targetOf(conf);
  const started = accounting.start();
  if (target.mode === "standalone") {
    const [red, err] = openAt(conf, target.who, conf.host, conf.port, started, true);
    return $multi(red, err);
  }
  if (target.mode === "sentinel") {
    const [host, port, resolveErr] = sentinel.resolve(conf, target.id, target.sentinelWho);
    if (host === undefined) return $multi(undefined, resolveErr);
    const [red, err] = openAt(conf, target.who, host, port!, started, true);
    if (red === undefined) sentinel.forget(target.id);
    return $multi(red, err);
  }
  const [all, mapErr] = cluster.masters(conf, target.id, target.who);
  if (all === undefined) return $multi(undefined, mapErr);
  let lastErr: string | undefined;
  for (let i = 0; i < all.length; i++) {
    const [server] = cluster.serverFor(conf, target.id, target.who, undefined);
    if (server === undefined) break;
    const [red, err] = openAt(conf, target.who, server.host, server.port, started, true);
    if (red !== undefined) return $multi(red, undefined);
    cluster.nodeFailed(target.id);
    lastErr = atNode(err, server);
  }
  return $multi(undefined, lastErr ?? "no redis cluster node to connect to");
}

/**
 * A subscription on a connect() connection was lost. Sentinel: ask the sentinels again
 * on the next connect (a failover may have moved the master while the +switch-master
 * watch was not listening). A cluster's next connect takes the next master anyway.
 */
export function connectionLost(this: void, conf: RedisConf): void {
  const target = targetOf(conf);
  if (target.mode === "sentinel") sentinel.forget(target.id);
}

/** Runs one script: EVALSHA, and EVAL once when Redis lost its script cache. */
export function script(this: void, conf: RedisConf, call: ScriptCall): RedisResult {
  scriptOf(call);
  return run(conf, call, `redis script '${call.script}'`);
}

/** Runs one plain command. */
export function command(this: void, conf: RedisConf, name: string, ...args: (string | number)[]): RedisResult {
  return run(conf, { command: name, args }, `redis ${name}`);
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
 * The calls `indexes` of `calls` in one round trip on `red`, their replies written into
 * `replies` at the same positions; scripts the server no longer has go again with EVAL
 * in one more round trip. Returns the round trips, or nil plus the network error.
 */
function pipelineOn(this: void, red: RestyRedis, calls: Call[], indexes: number[], replies: PipelineReply[]): LuaMultiReturn<[number | undefined, string | undefined]> {
  red.init_pipeline(indexes.length);
  for (const i of indexes) queue(red, calls[i], false);
  const [got, err] = red.commit_pipeline();
  if (got === undefined) return $multi(undefined, err);
  const retry: number[] = [];
  for (let j = 0; j < indexes.length; j++) {
    const reply = got[j];
    replies[indexes[j]] = reply as PipelineReply;
    if (isErrorReply(reply) && isNoScript(reply[1])) retry.push(indexes[j]);
  }
  if (retry.length === 0) return $multi(1, undefined);
  red.init_pipeline(retry.length);
  for (const i of retry) queue(red, calls[i], true);
  const [again, againErr] = red.commit_pipeline();
  if (again === undefined) return $multi(undefined, againErr);
  for (let j = 0; j < retry.length; j++) replies[retry[j]] = again[j] as PipelineReply;
  return $multi(2, undefined);
}

function allIndexes(this: void, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(i);
  return out;
}

function pipelineDirect(this: void, conf: RedisConf, target: Target, calls: Call[]): LuaMultiReturn<[PipelineReply[] | undefined, string | undefined]> {
  const started = accounting.start();
  let host = conf.host;
  let port = conf.port;
  if (target.mode === "sentinel") {
    const [h, p, resolveErr] = sentinel.resolve(conf, target.id, target.sentinelWho);
    if (h === undefined) {
      accounting.record(started, 0, true);
      return $multi(undefined, resolveErr);
    }
    host = h;
    port = p!;
  }
  const [red, connectErr] = openAt(conf, target.who, host, port, started);
  if (red === undefined) {
    if (target.mode === "sentinel") sentinel.forget(target.id);
    accounting.record(started, 0, true);
    return $multi(undefined, connectErr);
  }
  const replies: PipelineReply[] = [];
  const [trips, err] = pipelineOn(red, calls, allIndexes(calls.length), replies);
  const failure = settle(red, conf, nodePool(conf, target.who, host, port), started, trips, err);
  if (failure !== undefined) {
    if (target.mode === "sentinel") sentinel.forget(target.id);
    accounting.record(started, 1, true);
    return $multi(undefined, `redis pipeline failed: ${failure}`);
  }
  if (target.mode === "sentinel") {
    for (const reply of replies) if (isErrorReply(reply) && string.sub(reply[1], 1, 8) === "READONLY") sentinel.forget(target.id);
  }
  accounting.record(started, trips!, false);
  return $multi(replies, undefined);
}

interface Part {
  server: cluster.Server;
  indexes: number[];
}

/**
 * One node's part of a cluster pipeline: its replies written into `replies` at the
 * calls' positions. Returns the round trips, or nil plus the error naming the node and
 * the round trips it cost (0 when no connection was made).
 */
function runPart(this: void, conf: RedisConf, target: Target, calls: Call[], part: Part, replies: PipelineReply[], started: number): LuaMultiReturn<[number | undefined, string | undefined, number]> {
  const [red, connectErr] = openAt(conf, target.who, part.server.host, part.server.port, started);
  if (red === undefined) {
    cluster.nodeFailed(target.id);
    return $multi(undefined, atNode(connectErr, part.server), 0);
  }
  const [sent, err] = pipelineOn(red, calls, part.indexes, replies);
  const failure = settle(red, conf, nodePool(conf, target.who, part.server.host, part.server.port), started, sent, err);
  if (failure !== undefined) {
    cluster.nodeFailed(target.id);
    return $multi(undefined, `redis pipeline failed: ${failure} (redis at ${part.server.addr})`, 1);
  }
  return $multi(sent, undefined, sent!);
}

/**
 * A pipeline on a cluster: one part per node, all sent before any reply is read (each
 * other part in a light thread, ngx.thread.spawn: it runs until its socket waits, so its
 * request is out before the next part starts), so the whole costs one round trip of the
 * slowest node, not one per node in sequence. Calls that were redirected (MOVED, ASK: a
 * resharding is under way) go again one by one, following their redirection.
 */
function pipelineClustered(this: void, conf: RedisConf, target: Target, calls: Call[]): LuaMultiReturn<[PipelineReply[] | undefined, string | undefined]> {
  const started = accounting.start();
  const parts = new LuaTable<string, Part>();
  const order: Part[] = [];
  for (let i = 0; i < calls.length; i++) {
    const [server, mapErr] = cluster.serverFor(conf, target.id, target.who, slotOf(calls[i]));
    if (server === undefined) {
      accounting.record(started, 0, true);
      return $multi(undefined, mapErr);
    }
    let part = parts.get(server.addr);
    if (part === undefined) {
      part = { server, indexes: [] };
      parts.set(server.addr, part);
      order.push(part);
    }
    part.indexes.push(i);
  }
  const replies: PipelineReply[] = [];
  const threads: LuaThread[] = [];
  for (let k = 1; k < order.length; k++) threads.push(ngx.thread.spawn(runPart, conf, target, calls, order[k], replies, started));
  let trips = 0;
  let firstErr: string | undefined;
  if (order.length > 0) {
    const [sent, err, cost] = runPart(conf, target, calls, order[0], replies, started);
    trips += cost;
    if (sent === undefined) firstErr = err;
  }
  for (const thread of threads) {
    const [ok, sent, err, cost] = ngx.thread.wait(thread);
    // A part raises only for a caller's bad argument (an unknown script): raise it here too.
    if (!ok) error(tostring(sent), 0);
    trips += cost as number;
    if (sent === undefined) firstErr = firstErr ?? (err as string);
  }
  if (firstErr !== undefined) {
    accounting.record(started, trips, true);
    return $multi(undefined, firstErr);
  }
  accounting.record(started, trips, false);
  for (let i = 0; i < calls.length; i++) {
    const reply = replies[i];
    if (isErrorReply(reply) && redirectOf(reply[1])[0] !== undefined) {
      const [res, err] = runClustered(conf, target, calls[i], "redis pipeline");
      if (res === undefined) return $multi(undefined, err);
      replies[i] = res === false ? [false, err!] : res;
    }
  }
  return $multi(replies, undefined);
}

/**
 * Several commands and scripts in one round trip (one per cluster node). Replies come
 * back in order; a Redis error reply for one call is `{ false, msg }` in its slot.
 * Scripts Redis no longer has cached are sent again with EVAL in one more round trip.
 */
export function pipeline(this: void, conf: RedisConf, calls: Call[]): LuaMultiReturn<[PipelineReply[] | undefined, string | undefined]> {
  const target = targetOf(conf);
  if (target.mode === "cluster") return pipelineClustered(conf, target, calls);
  return pipelineDirect(conf, target, calls);
}

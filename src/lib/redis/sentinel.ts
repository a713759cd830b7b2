/**
 * Redis Sentinel: the address of the server to use (the master, or a replica for
 * `sentinel_role` slave/any), asked of the sentinels in order and cached per worker. It
 * is asked again after a connection error or a READONLY reply (client.ts calls forget),
 * and at once when a sentinel announces `+switch-master` for this master: each worker
 * keeps one subscription per sentinel config while the config is in use, so a failover
 * needs no gateway restart and costs no failed request when the old master stays up.
 */
import { openAt, release, send, type Identity } from "./connection";
import { logThrottled } from "./fault";
import type { RedisConf, SentinelNode } from "./schema";

interface Resolved {
  host: string;
  port: number;
}

interface Watch {
  conf: RedisConf;
  who: Identity;
  running: boolean;
  /** ngx.now() of the last resolve: a subscription nobody used for IDLE_STOP seconds ends. */
  usedAt: number;
}

const LOG_TOPIC = "krs:sentinel";
const IDLE_STOP = 300;
const READ_TIMEOUT_MS = 1000;
const BACKOFF_MIN = 0.2;
const BACKOFF_MAX = 5;

const resolved = new LuaTable<string, Resolved>();
const watches = new LuaTable<string, Watch>();

type ReadReply = (this: RestyRedis) => LuaMultiReturn<[RedisReply | undefined, string | undefined]>;
type Subscribe = (this: RestyRedis, channel: string) => LuaMultiReturn<[RedisReply | false | undefined, string | undefined]>;

/** A flat `[k1, v1, k2, v2…]` reply (SENTINEL REPLICAS) as a map. */
function fieldsOf(this: void, flat: RedisReply[]): LuaTable<string, string> {
  const out = new LuaTable<string, string>();
  for (let i = 0; i + 1 < flat.length; i += 2) out.set(flat[i] as string, tostring(flat[i + 1]));
  return out;
}

/** Healthy replicas: not down, not disconnected, linked to their master. */
function replicasOf(this: void, reply: RedisReply): Resolved[] {
  const out: Resolved[] = [];
  if (type(reply) !== "table") return out;
  for (const entry of reply as RedisReply[][]) {
    const fields = fieldsOf(entry);
    const flags = fields.get("flags") ?? "";
    const [down] = string.find(flags, "down", 1, true);
    const [disconnected] = string.find(flags, "disconnected", 1, true);
    if (down === undefined && disconnected === undefined && fields.get("master-link-status") === "ok") {
      out.push({ host: fields.get("ip")!, port: tonumber(fields.get("port"))! });
    }
  }
  return out;
}

function ask(this: void, conf: RedisConf, who: Identity, node: SentinelNode): LuaMultiReturn<[Resolved | undefined, string | undefined]> {
  const [red, err] = openAt(conf, who, node.host, node.port, ngx.now());
  if (red === undefined) return $multi(undefined, err);
  const name = conf.sentinel_master as string;
  const [addr, addrErr] = send(red, "sentinel", ["get-master-addr-by-name", name]);
  if (addr === undefined) {
    red.close();
    return $multi(undefined, `sentinel ${node.host}:${node.port}: ${addrErr}`);
  }
  if (addr === false || type(addr) !== "table") {
    release(red, conf);
    return $multi(undefined, `sentinel ${node.host}:${node.port} does not know master '${name}'${addr === false ? ": " + tostring(addrErr) : ""}`);
  }
  const master: Resolved = { host: (addr as string[])[0], port: tonumber((addr as string[])[1])! };
  const role = conf.sentinel_role;
  if (role !== "slave" && role !== "any") {
    release(red, conf);
    return $multi(master, undefined);
  }
  const [replies, replicasErr] = send(red, "sentinel", ["replicas", name]);
  if (replies === undefined) {
    red.close();
    return $multi(undefined, `sentinel ${node.host}:${node.port}: ${replicasErr}`);
  }
  release(red, conf);
  const choices = replicasOf(replies === false ? ngx.null : replies);
  if (role === "any") choices.push(master);
  if (choices.length === 0) return $multi(undefined, `sentinel ${node.host}:${node.port}: master '${name}' has no healthy replica`);
  return $multi(choices[math.random(1, choices.length) - 1], undefined);
}

function switchLoop(this: void, id: string, watch: Watch): void {
  let backoff = BACKOFF_MIN;
  const name = watch.conf.sentinel_master as string;
  while (!ngx.worker.exiting() && ngx.now() - watch.usedAt < IDLE_STOP) {
    let failure: string | undefined;
    for (const node of watch.conf.sentinel_nodes as SentinelNode[]) {
      const [red, err] = openAt(watch.conf, watch.who, node.host, node.port, ngx.now());
      if (red === undefined) {
        failure = `+switch-master subscriber could not connect: ${err}`;
        continue;
      }
      const [ok, subErr] = (red["subscribe"] as Subscribe).call(red, "+switch-master");
      if (ok === undefined || ok === false) {
        red.close();
        failure = `+switch-master subscriber could not SUBSCRIBE: ${subErr}`;
        continue;
      }
      // A failover announced while nobody listened is caught up here.
      resolved.delete(id);
      backoff = BACKOFF_MIN;
      red.set_timeout(READ_TIMEOUT_MS);
      const readReply = red["read_reply"] as ReadReply;
      failure = undefined;
      while (!ngx.worker.exiting() && ngx.now() - watch.usedAt < IDLE_STOP) {
        const [reply, readErr] = readReply.call(red);
        if (reply === undefined) {
          if (readErr === "timeout") continue;
          failure = `+switch-master subscriber lost the subscription: ${readErr}`;
          break;
        }
        const message = reply as string[];
        // "<master name> <old ip> <old port> <new ip> <new port>"
        if (type(reply) === "table" && message[0] === "message" && type(message[2]) === "string") {
          const [master, newIp, newPort] = string.match(message[2], "^(%S+) %S+ %S+ (%S+) (%d+)$");
          if (master === name) {
            if (watch.conf.sentinel_role === "master" || watch.conf.sentinel_role === undefined) resolved.set(id, { host: newIp!, port: tonumber(newPort)! });
            else resolved.delete(id);
          }
        }
      }
      red.close();
      break;
    }
    if (failure !== undefined && !ngx.worker.exiting()) {
      logThrottled(LOG_TOPIC, failure);
      ngx.sleep(backoff);
      backoff = math.min(backoff * 2, BACKOFF_MAX);
    }
  }
}

function subscriber(this: void, premature: boolean, id: string, watch: Watch): void {
  if (!premature) {
    const [ok, err] = pcall(switchLoop, id, watch);
    if (!ok) logThrottled(LOG_TOPIC, `+switch-master subscriber failed: ${tostring(err)}`);
  }
  watch.running = false;
}

function watchSwitches(this: void, conf: RedisConf, id: string, who: Identity): void {
  let watch = watches.get(id);
  if (watch === undefined) {
    watch = { conf, who, running: false, usedAt: 0 };
    watches.set(id, watch);
  }
  watch.usedAt = ngx.now();
  if (watch.running) return;
  const phase = ngx.get_phase();
  if (phase === "init" || phase === "init_worker" || phase === "header_filter" || phase === "body_filter" || phase === "log") return;
  watch.conf = conf;
  watch.who = who;
  watch.running = true;
  const [ok] = ngx.timer.at(0, subscriber, id, watch);
  if (ok === undefined) watch.running = false;
}

/** The server to use for this sentinel config, asked of the sentinels when not known. */
export function resolve(this: void, conf: RedisConf, id: string, who: Identity): LuaMultiReturn<[string | undefined, number | undefined, string | undefined]> {
  watchSwitches(conf, id, who);
  const known = resolved.get(id);
  if (known !== undefined) return $multi(known.host, known.port, undefined);
  const errors: string[] = [];
  for (const node of conf.sentinel_nodes as SentinelNode[]) {
    const [found, err] = ask(conf, who, node);
    if (found !== undefined) {
      resolved.set(id, found);
      return $multi(found.host, found.port, undefined);
    }
    errors.push(err!);
  }
  return $multi(undefined, undefined, `no sentinel gave the address of '${tostring(conf.sentinel_master)}': ${table.concat(errors, "; ")}`);
}

/** The cached address failed (connection error, READONLY): ask the sentinels on the next call. */
export function forget(this: void, id: string): void {
  resolved.delete(id);
}

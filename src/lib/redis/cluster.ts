/**
 * Redis Cluster topology, per worker and cluster: which node serves each of the 16384
 * slots, read with CLUSTER SLOTS from any known node (the seeds of `cluster_nodes`
 * first time, the known masters afterwards). A MOVED reply fixes its slot at once and
 * marks the map stale; the next call refreshes the whole map (at most every
 * MIN_REFRESH_INTERVAL, one refresh at a time per worker), so a resharding or failover
 * costs one redirection per slot and worker, not one per request. After a node failed
 * (a killed master: its slots are served by nobody until Redis promotes a replica) the
 * map may be read again sooner, every FAILED_NODE_REFRESH_INTERVAL: the calls that fail
 * meanwhile fail anyway, and the first one after the promotion finds the new master.
 */
import { isOpen } from "./breaker";
import { nodePool, openAt, release, send, type Identity } from "./connection";
import { SLOTS } from "./slot";
import type { ClusterNode, RedisConf } from "./schema";

export interface Server {
  host: string;
  port: number;
  /** "host:port" */
  addr: string;
}

interface Topology {
  /** Slot number (0…16383) → the master serving it; a gap (slots not served) is nil. */
  slots: LuaTable<number, Server>;
  masters: Server[];
  servers: LuaTable<string, Server>;
  stale: boolean;
  /** A node failed since the last refresh: the next one may come sooner. */
  nodeFailed: boolean;
  refreshing: boolean;
  refreshedAt: number;
  /** Round robin over masters for calls without a key (PUBLISH, PING, subscribers). */
  next: number;
}

/** Seconds between two refreshes of one cluster's map in one worker. */
const MIN_REFRESH_INTERVAL = 0.1;
/**
 * The same after a node failed: how long a worker may miss a promotion. At most 40
 * CLUSTER SLOTS a second per worker, and only while calls fail.
 */
const FAILED_NODE_REFRESH_INTERVAL = 0.025;

const topologies = new LuaTable<string, Topology>();

function serverOf(this: void, topology: Topology, host: string, port: number): Server {
  const addr = `${host}:${port}`;
  let server = topology.servers.get(addr);
  if (server === undefined) {
    server = { host, port, addr };
    topology.servers.set(addr, server);
  }
  return server;
}

function newTopology(this: void): Topology {
  return { slots: new LuaTable(), masters: [], servers: new LuaTable(), stale: true, nodeFailed: false, refreshing: false, refreshedAt: -math.huge, next: 0 };
}

/** Reads CLUSTER SLOTS from one node into a new topology, or says why it could not. */
function readSlots(this: void, conf: RedisConf, who: Identity, host: string, port: number): LuaMultiReturn<[Topology | undefined, string | undefined]> {
  const [red, err] = openAt(conf, who, host, port, ngx.now());
  if (red === undefined) return $multi(undefined, err);
  const [reply, slotsErr] = send(red, "cluster", ["slots"]);
  if (reply === undefined) {
    red.close();
    return $multi(undefined, `CLUSTER SLOTS at ${host}:${port} failed: ${slotsErr}`);
  }
  release(red, conf);
  if (reply === false || type(reply) !== "table") return $multi(undefined, `CLUSTER SLOTS at ${host}:${port} refused: ${tostring(slotsErr)}`);
  const topology = newTopology();
  const seen = new LuaTable<string, boolean>();
  for (const range of reply as RedisReply[][]) {
    const first = range[0] as number;
    const last = range[1] as number;
    const master = range[2] as RedisReply[];
    // An empty IP means "the address you reached me at" (a node that does not know its own).
    const ip = master[0] === "" ? host : (master[0] as string);
    const server = serverOf(topology, ip, master[1] as number);
    if (!seen.has(server.addr)) {
      seen.set(server.addr, true);
      topology.masters.push(server);
    }
    for (let slot = first; slot <= last; slot++) topology.slots.set(slot, server);
  }
  if (topology.masters.length === 0) return $multi(undefined, `CLUSTER SLOTS at ${host}:${port}: no slot is served`);
  topology.stale = false;
  return $multi(topology, undefined);
}

/**
 * The known masters first (the cluster as it is now), then the configured seeds; a master
 * whose circuit is open (it hangs) last, so that a refresh does not wait for its timeout
 * while another node can answer.
 */
function candidates(this: void, conf: RedisConf, who: Identity, known: Topology | undefined): Server[] {
  const out: Server[] = [];
  const hung: Server[] = [];
  const seen = new LuaTable<string, boolean>();
  if (known !== undefined) {
    for (const server of known.masters) {
      seen.set(server.addr, true);
      if (isOpen(nodePool(conf, who, server.host, server.port))) hung.push(server);
      else out.push(server);
    }
  }
  for (const seed of conf.cluster_nodes as ClusterNode[]) {
    const addr = `${seed.ip}:${seed.port}`;
    if (!seen.has(addr)) {
      seen.set(addr, true);
      out.push({ host: seed.ip, port: seed.port, addr });
    }
  }
  for (const server of hung) out.push(server);
  return out;
}

/** Reads the slot map again; keeps the old one (marked stale) when no node answers. */
export function refresh(this: void, conf: RedisConf, id: string, who: Identity): string | undefined {
  const known = topologies.get(id);
  if (known !== undefined) {
    // One refresh at a time, and not more often than MIN_REFRESH_INTERVAL: during an
    // outage every failing call asks for one.
    const interval = known.nodeFailed ? FAILED_NODE_REFRESH_INTERVAL : MIN_REFRESH_INTERVAL;
    if (known.refreshing || ngx.now() - known.refreshedAt < interval) return undefined;
    known.refreshing = true;
  }
  const errors: string[] = [];
  let fresh: Topology | undefined;
  for (const server of candidates(conf, who, known)) {
    const [topology, err] = readSlots(conf, who, server.host, server.port);
    if (topology !== undefined) {
      fresh = topology;
      break;
    }
    errors.push(err!);
  }
  ngx.update_time();
  if (fresh !== undefined) {
    fresh.refreshedAt = ngx.now();
    if (known !== undefined) fresh.next = known.next;
    topologies.set(id, fresh);
    return undefined;
  }
  if (known !== undefined) {
    known.refreshing = false;
    known.nodeFailed = false;
    known.refreshedAt = ngx.now();
  }
  return `no redis cluster node answered CLUSTER SLOTS: ${table.concat(errors, "; ")}`;
}

function current(this: void, conf: RedisConf, id: string, who: Identity): LuaMultiReturn<[Topology | undefined, string | undefined]> {
  let topology = topologies.get(id);
  if (topology === undefined || topology.stale) {
    const err = refresh(conf, id, who);
    topology = topologies.get(id);
    if (topology === undefined) return $multi(undefined, err);
  }
  return $multi(topology, undefined);
}

/** The master serving `slot` (any master when `slot` is undefined: a call without a key). */
export function serverFor(this: void, conf: RedisConf, id: string, who: Identity, slot: number | undefined): LuaMultiReturn<[Server | undefined, string | undefined]> {
  const [topology, err] = current(conf, id, who);
  if (topology === undefined) return $multi(undefined, err);
  if (slot !== undefined) {
    const server = topology.slots.get(slot);
    if (server !== undefined) return $multi(server, undefined);
  }
  topology.next = (topology.next % topology.masters.length) + 1;
  return $multi(topology.masters[topology.next - 1], undefined);
}

/** Every master currently known (for calls that must reach each, and for connect()). */
export function masters(this: void, conf: RedisConf, id: string, who: Identity): LuaMultiReturn<[Server[] | undefined, string | undefined]> {
  const [topology, err] = current(conf, id, who);
  if (topology === undefined) return $multi(undefined, err);
  return $multi(topology.masters, undefined);
}

/** A MOVED reply: the slot lives elsewhere now. Returns the server to retry at. */
export function moved(this: void, id: string, slot: number, host: string, port: number): Server {
  let topology = topologies.get(id);
  if (topology === undefined) {
    topology = newTopology();
    topologies.set(id, topology);
  }
  const server = serverOf(topology, host, port);
  if (slot >= 0 && slot < SLOTS) topology.slots.set(slot, server);
  topology.stale = true;
  return server;
}

/** An ASK reply's target (not remembered: the slot is only being migrated). */
export function asked(this: void, id: string, host: string, port: number): Server {
  const topology = topologies.get(id);
  if (topology === undefined) return { host, port, addr: `${host}:${port}` };
  return serverOf(topology, host, port);
}

/** A node failed: the map may be out of date (a failover), read it again on the next call. */
export function nodeFailed(this: void, id: string): void {
  const topology = topologies.get(id);
  if (topology !== undefined) {
    topology.stale = true;
    topology.nodeFailed = true;
  }
}

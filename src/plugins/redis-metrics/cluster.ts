/**
 * The cluster view: every node's first worker pushes a snapshot of the node's counters to
 * Redis every push_interval (redis-lua/metrics-push-2.lua: one key per node, living
 * SNAPSHOT_LIFETIME intervals, and an index of live nodes), and GET /redis-metrics/cluster
 * sums the snapshots of the nodes still live. A stopped node drops out once its snapshot
 * expires.
 *
 * Counters never go backwards across a node's restart: the snapshot is keyed by node id,
 * and a node that starts again (a new boot id, counters back at zero) finds its previous
 * run's snapshot and adds those totals to everything it pushes from then on. Only a node
 * gone longer than its snapshot's lifetime starts again from zero in the cluster sum,
 * which Prometheus's rate() reads as a counter reset, as for any restarted target.
 */
import * as cjson from "cjson.safe";
import { command, script } from "../../lib/redis/client";
import type { RedisConf } from "../../lib/redis/schema";
import { key, part } from "../../lib/keys";
import { isSeries } from "./exposition";
import * as store from "./store";

const PLUGIN = "redis-metrics";
const TAG = "cluster";
/** A snapshot outlives this many push intervals. */
export const SNAPSHOT_LIFETIME = 3;
const BASE_KEY = "#push_base";
const BASE_BOOT_KEY = "#push_base_boot";

export interface ClusterConf {
  push_interval: number;
  redis: RedisConf;
}

interface Snapshot {
  node_id: string;
  boot: string;
  at: number;
  values: { [series: string]: number };
}

function snapshotKey(this: void, nodeId: string): string {
  return key(PLUGIN, TAG, "node", part(nodeId));
}

function indexKey(this: void): string {
  return key(PLUGIN, TAG, "nodes");
}

function decodeSnapshot(this: void, text: unknown): Snapshot | undefined {
  if (type(text) !== "string") return undefined;
  const [decoded] = cjson.decode(text as string);
  if (type(decoded) !== "table") return undefined;
  const s = decoded as Snapshot;
  if (type(s.values) !== "table") return undefined;
  return s;
}

/**
 * What this run adds its own counters to: the previous run's totals when this node
 * restarted while its snapshot was still in Redis, else nothing. Looked up once per run
 * and kept in the dict, so a respawned worker does not look it up again.
 */
function baseFor(this: void, conf: ClusterConf, nodeId: string, boot: string): LuaMultiReturn<[LuaTable<string, number> | undefined, string | undefined]> {
  const shm = store.dict()!;
  if (shm.get(BASE_BOOT_KEY)[0] === boot) {
    const [json] = shm.get(BASE_KEY);
    const [decoded] = cjson.decode(type(json) === "string" ? (json as string) : "{}");
    return $multi((decoded ?? new LuaTable()) as LuaTable<string, number>, undefined);
  }
  const [previous, err] = command(conf.redis, "get", snapshotKey(nodeId));
  if (previous === undefined) return $multi(undefined, err);
  const snapshot = decodeSnapshot(previous);
  let base = new LuaTable<string, number>();
  if (snapshot !== undefined && snapshot.boot !== boot) {
    // Only what this plugin could have written: one odd value would fail every push of
    // this run, the base being kept in the dict.
    for (const [series, total] of pairs(snapshot.values as unknown as LuaTable<string, number>)) {
      if (isSeries(series, total)) base.set(series, total);
    }
  } else if (snapshot !== undefined) {
    // Same run (the dict had no room for the base): the snapshot's totals include the
    // base, and our counters are still there, so the base is their difference.
    const current = store.snapshot();
    for (const [series, total] of pairs(snapshot.values as unknown as LuaTable<string, number>)) {
      if (!isSeries(series, total)) continue;
      const diff = total - (current.get(series) ?? 0);
      if (diff > 0) base.set(series, diff);
    }
  }
  // Never evicting counters for it: without room, the next push works the base out again.
  const [kept] = shm.safe_set(BASE_KEY, cjson.encode(base)[0] ?? "{}");
  if (kept) shm.safe_set(BASE_BOOT_KEY, boot);
  return $multi(base, undefined);
}

/** One push of this node's counters. Runs in a timer: no request pays for it. */
export function push(this: void, conf: ClusterConf): string | undefined {
  store.flush();
  const nodeId = kong.node.get_id();
  const boot = store.bootId();
  const [base, err] = baseFor(conf, nodeId, boot);
  if (base === undefined) return err;
  const values = store.snapshot();
  for (const [series, value] of pairs(base)) values.set(series, (values.get(series) ?? 0) + value);
  ngx.update_time();
  const snapshot: Snapshot = { node_id: nodeId, boot, at: ngx.now(), values: values as unknown as { [series: string]: number } };
  const [json, encodeErr] = cjson.encode(snapshot);
  if (json === undefined) return "could not encode the snapshot: " + tostring(encodeErr);
  const lifetimeMs = math.ceil(conf.push_interval * SNAPSHOT_LIFETIME * 1000);
  const [, pushErr] = script(conf.redis, {
    script: "metrics-push",
    keys: [snapshotKey(nodeId), indexKey()],
    args: [json, lifetimeMs, nodeId, math.floor(ngx.now() * 1000)],
  });
  return pushErr;
}

/** Every live node's series summed, and how many nodes that is. */
export function collect(this: void, conf: ClusterConf): LuaMultiReturn<[LuaTable<string, number> | undefined, number, string | undefined]> {
  ngx.update_time();
  const [ids, err] = command(conf.redis, "zrangebyscore", indexKey(), math.floor(ngx.now() * 1000), "+inf");
  if (ids === undefined || ids === false) return $multi(undefined, 0, tostring(err));
  const nodes = ids as string[];
  const sums = new LuaTable<string, number>();
  if (nodes.length === 0) return $multi(sums, 0, undefined);
  const keys: string[] = [];
  for (const id of nodes) keys.push(snapshotKey(id));
  const [texts, mgetErr] = command(conf.redis, "mget", ...keys);
  if (texts === undefined || texts === false) return $multi(undefined, 0, tostring(mgetErr));
  let live = 0;
  for (let i = 0; i < keys.length; i++) {
    const snapshot = decodeSnapshot((texts as unknown[])[i]);
    if (snapshot === undefined) continue;
    live++;
    for (const [series, value] of pairs(snapshot.values as unknown as LuaTable<string, number>)) {
      if (isSeries(series, value)) sums.set(series, (sums.get(series) ?? 0) + value);
    }
  }
  return $multi(sums, live, undefined);
}

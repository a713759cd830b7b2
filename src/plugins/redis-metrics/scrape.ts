/**
 * The two expositions: this node (its counters, plus the gauges read at scrape time, as
 * Kong's exporter does: nginx connections and timers, shared dict and Lua VM memory) and
 * the cluster (every live node's counters summed).
 */
import * as cluster from "./cluster";
import { CONTENT_TYPE, render } from "./exposition";
import * as M from "./metrics";
import * as state from "./state";
import * as store from "./store";

function gauge(this: void, values: LuaTable<string, number>, m: M.MetricDef, labels: string[], value: number): void {
  values.set(m.name + "{" + M.labelText(m, labels) + "}", value);
}

function addNodeGauges(this: void, values: LuaTable<string, number>): void {
  const nodeId = kong.node.get_id();
  const subsystem = kong.nginx.get_subsystem();
  const stats = kong.nginx.get_statistics();
  const connections: [string, number][] = [
    ["accepted", stats.connections_accepted], ["active", stats.connections_active], ["handled", stats.connections_handled],
    ["reading", stats.connections_reading], ["total", stats.total_requests], ["waiting", stats.connections_waiting], ["writing", stats.connections_writing],
  ];
  for (const [stateName, value] of connections) gauge(values, M.NGINX_CONNECTIONS, [nodeId, subsystem, stateName], value);
  gauge(values, M.NGINX_REQUESTS, [nodeId, subsystem], stats.total_requests);
  gauge(values, M.NGINX_TIMERS, ["running"], ngx.timer.running_count());
  gauge(values, M.NGINX_TIMERS, ["pending"], ngx.timer.pending_count());
  // DB-less: the declarative config is the datastore, and it is there.
  gauge(values, M.DATASTORE_REACHABLE, [], 1);
  gauge(values, M.NODE_INFO, [nodeId, kong.version], 1);
  const memory = kong.node.get_memory_stats();
  for (const [name, shm] of pairs(memory.lua_shared_dicts as unknown as LuaTable<string, { allocated_slabs: number; capacity: number }>)) {
    gauge(values, M.SHM_BYTES, [nodeId, name, subsystem], shm.allocated_slabs);
    gauge(values, M.SHM_TOTAL_BYTES, [nodeId, name, subsystem], shm.capacity);
  }
  for (const vm of memory.workers_lua_vms) {
    if (type(vm.http_allocated_gc) === "number") gauge(values, M.WORKER_VM_BYTES, [nodeId, tostring(vm.pid), subsystem], vm.http_allocated_gc);
  }
}

function addStoreMetrics(this: void, values: LuaTable<string, number>, dropped: number, errors: number): void {
  const s = store.state();
  gauge(values, M.SERIES, [], s.series);
  gauge(values, M.SERIES_MAX, [], store.getMaxSeries());
  gauge(values, M.SERIES_DROPPED, [], dropped);
  gauge(values, M.METRIC_ERRORS, [], errors);
}

function send(this: void, body: string): never {
  return kong.response.exit(200, body, { "Content-Type": CONTENT_TYPE });
}

/** GET /redis-metrics */
export function local(this: void): never {
  if (store.dict() === undefined) return kong.response.exit(500, { message: `ngx shared dict '${store.DICT}' not found` });
  store.flush();
  const values = store.snapshot();
  for (const [series, value] of pairs(store.workerGauges())) values.set(series, value);
  addNodeGauges(values);
  const s = store.state();
  addStoreMetrics(values, s.dropped, s.errors);
  return send(render(values));
}

/** GET /redis-metrics/cluster */
export function clusterWide(this: void): never {
  const conf = state.clusterConf();
  if (conf === undefined) return kong.response.exit(409, { message: "no enabled redis-metrics plugin has a push_interval: nodes push their counters to Redis only then" });
  const [sums, nodes, err] = cluster.collect(conf);
  if (sums === undefined) {
    kong.log.err("could not read the cluster's metrics: ", err);
    return kong.response.exit(503, { message: `could not read the cluster's metrics (Redis at ${conf.redis.host}:${conf.redis.port})` });
  }
  gauge(sums, M.CLUSTER_NODES, [], nodes);
  return send(render(sums));
}

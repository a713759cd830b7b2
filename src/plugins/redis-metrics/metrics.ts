/**
 * Every metric this plugin exports, with Kong's names, help texts, labels and buckets for
 * Kong's (kong/plugins/prometheus/exporter.lua, Kong 3.x), so Kong's Grafana dashboard
 * reads them unchanged, then the suite's krs_* metrics. The exposition writes them in this
 * order.
 */

export type MetricType = "counter" | "gauge" | "histogram";

export interface MetricDef {
  name: string;
  type: MetricType;
  help: string;
  labels: string[];
  buckets?: number[];
}

/** Kong's buckets (ms). */
const KONG_LATENCY_BUCKETS = [1, 2, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 500, 750, 1000];
const UPSTREAM_LATENCY_BUCKETS = [25, 50, 80, 100, 250, 400, 700, 1000, 2000, 5000, 10000, 30000, 60000];
/** Seconds, as Prometheus names want; Redis waits are sub-millisecond on a LAN: finer at the low end. */
const REDIS_LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

function def(this: void, name: string, metricType: MetricType, help: string, labels: string[], buckets?: number[]): MetricDef {
  return { name, type: metricType, help, labels, buckets };
}

export const HTTP_REQUESTS = def("kong_http_requests_total", "counter", "HTTP status codes per consumer/service/route in Kong", ["service", "route", "code", "source", "workspace", "consumer"]);
export const KONG_LATENCY = def("kong_kong_latency_ms", "histogram", "Latency added by Kong and enabled plugins for each service/route in Kong", ["service", "route", "workspace"], KONG_LATENCY_BUCKETS);
export const UPSTREAM_LATENCY = def("kong_upstream_latency_ms", "histogram", "Latency added by upstream response for each service/route in Kong", ["service", "route", "workspace"], UPSTREAM_LATENCY_BUCKETS);
export const REQUEST_LATENCY = def("kong_request_latency_ms", "histogram", "Total latency incurred during requests for each service/route in Kong", ["service", "route", "workspace"], UPSTREAM_LATENCY_BUCKETS);
export const BANDWIDTH = def("kong_bandwidth_bytes", "counter", "Total bandwidth (ingress/egress) throughput in bytes", ["service", "route", "direction", "workspace", "consumer"]);

export const NGINX_CONNECTIONS = def("kong_nginx_connections_total", "gauge", "Number of connections by subsystem", ["node_id", "subsystem", "state"]);
export const NGINX_REQUESTS = def("kong_nginx_requests_total", "gauge", "Number of requests total", ["node_id", "subsystem"]);
export const NGINX_TIMERS = def("kong_nginx_timers", "gauge", "Number of nginx timers", ["state"]);
export const DATASTORE_REACHABLE = def("kong_datastore_reachable", "gauge", "Datastore reachable from Kong, 0 is unreachable", []);
export const NODE_INFO = def("kong_node_info", "gauge", "Kong Node metadata information", ["node_id", "version"]);
export const SHM_BYTES = def("kong_memory_lua_shared_dict_bytes", "gauge", "Allocated slabs in bytes in a shared_dict", ["node_id", "shared_dict", "kong_subsystem"]);
export const SHM_TOTAL_BYTES = def("kong_memory_lua_shared_dict_total_bytes", "gauge", "Total capacity in bytes of a shared_dict", ["node_id", "shared_dict", "kong_subsystem"]);
export const WORKER_VM_BYTES = def("kong_memory_workers_lua_vms_bytes", "gauge", "Allocated bytes in worker Lua VM", ["node_id", "pid", "kong_subsystem"]);
export const METRIC_ERRORS = def("kong_nginx_metric_errors_total", "counter", "Number of nginx-lua-prometheus errors", []);

export const CACHE_REQUESTS = def("krs_cache_requests_total", "counter", "Responses by the suite's cache status (X-Cache-Status: Hit, Miss, Refresh, Bypass, ...) per service/route", ["service", "route", "plugin", "status"]);
export const LIMIT_DECISIONS = def("krs_limit_decisions_total", "counter", "Rate-limit and quota decisions: admitted or rejected, decided by Redis, by the worker's memory, or let through on a Redis fault", ["service", "route", "plugin", "kind", "decision", "source"]);
export const AUTH_RESULTS = def("krs_auth_results_total", "counter", "Authentication results by plugin: ok, anonymous, missing, unknown, invalid, expired, revoked, error", ["service", "route", "plugin", "result"]);
export const ACCESS_DECISIONS = def("krs_access_decisions_total", "counter", "Requests an access plugin refused (or explicitly allowed), with its reason", ["service", "route", "plugin", "decision", "reason"]);
export const REDIS_ROUND_TRIPS = def("krs_redis_round_trips_total", "counter", "Redis round trips made for requests, by plugin", ["plugin"]);
export const REDIS_ERRORS = def("krs_redis_errors_total", "counter", "Redis calls that failed (network, timeout, open circuit, error reply) for requests, by plugin", ["plugin"]);
export const REDIS_LATENCY = def("krs_redis_latency_seconds", "histogram", "Time one request waited on Redis for one plugin", ["plugin"], REDIS_LATENCY_BUCKETS);
export const PLUGIN_ERRORS = def("krs_plugin_errors_total", "counter", "Errors the suite's plugins recorded in requests", ["plugin"]);
export const CIRCUIT_OPEN = def("krs_redis_circuit_open", "gauge", "1 while a worker's circuit breaker for this Redis is open (calls fail fast), else 0", ["redis", "worker"]);
export const PUBSUB_UP = def("krs_pubsub_subscribed", "gauge", "1 while a worker's invalidation subscriber (redis-key-auth, redis-jwt, redis-ip-access) is subscribed to this Redis, else 0: its cache may be stale meanwhile", ["plugin", "redis", "worker"]);
export const PUBSUB_SUBSCRIBES = def("krs_pubsub_subscribes_total", "counter", "Subscriptions a worker's invalidation subscriber made since it started: more than 1 means it lost one and subscribed again", ["plugin", "redis", "worker"]);
export const USAGE_BACKLOG = def("krs_usage_flush_backlog", "gauge", "redis-usage counter sets a worker holds until a flush to Redis takes them", ["worker"]);
export const USAGE_DROPPED = def("krs_usage_dropped_total", "counter", "redis-usage counter-set updates a worker dropped since it started (max_pending reached, or refused for good by Redis): those requests are not billed", ["worker"]);
export const SERIES = def("krs_metrics_series", "gauge", "Series this node keeps (each histogram bucket counts)", []);
export const SERIES_MAX = def("krs_metrics_series_max", "gauge", "The max_series cap", []);
export const SERIES_DROPPED = def("krs_metrics_series_dropped_total", "counter", "Updates dropped because their label set did not fit under max_series", []);
export const CLUSTER_NODES = def("krs_cluster_nodes", "gauge", "Nodes whose snapshot is live in Redis (cluster view only)", []);

export const ALL: MetricDef[] = [
  HTTP_REQUESTS, KONG_LATENCY, UPSTREAM_LATENCY, REQUEST_LATENCY, BANDWIDTH,
  NGINX_CONNECTIONS, NGINX_REQUESTS, NGINX_TIMERS, DATASTORE_REACHABLE, NODE_INFO,
  SHM_BYTES, SHM_TOTAL_BYTES, WORKER_VM_BYTES, METRIC_ERRORS,
  CACHE_REQUESTS, LIMIT_DECISIONS, AUTH_RESULTS, ACCESS_DECISIONS,
  REDIS_ROUND_TRIPS, REDIS_ERRORS, REDIS_LATENCY, PLUGIN_ERRORS, CIRCUIT_OPEN,
  PUBSUB_UP, PUBSUB_SUBSCRIBES, USAGE_BACKLOG, USAGE_DROPPED,
  SERIES, SERIES_MAX, SERIES_DROPPED, CLUSTER_NODES,
];

export const BY_NAME = new LuaTable<string, MetricDef>();
for (const m of ALL) BY_NAME.set(m.name, m);

/** A label value as the text format wants it: backslash, double quote and newline escaped. */
export function escapeLabel(this: void, value: string): string {
  if (string.find(value, '[\\"\n]')[0] === undefined) return value;
  return string.gsub(value, '[\\"\n]', (c: string) => (c === "\n" ? "\\n" : "\\" + c))[0];
}

/** `k1="v1",k2="v2"` for the metric's labels, values in the same order. */
export function labelText(this: void, m: MetricDef, values: string[]): string {
  const parts: string[] = [];
  for (let i = 0; i < m.labels.length; i++) parts.push(`${m.labels[i]}="${escapeLabel(values[i] ?? "")}"`);
  return table.concat(parts, ",");
}

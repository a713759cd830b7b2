/**
 * redis-metrics: Kong prometheus's request metrics under Kong's names and labels, and the
 * suite's krs_* metrics from the request facts (src/lib/facts.ts) the other plugins
 * recorded, counted in the log phase into this worker's buffer (store.ts: no shared-dict
 * lock, no Redis call per request). Priority 13, as Kong's prometheus: its log runs after
 * every plugin that records facts.
 *
 * Timers, not requests, do the rest: each worker merges its buffer into the krs_metrics
 * dict every store.FLUSH_INTERVAL and publishes its breaker states; the first worker pushes
 * the node's snapshot for the cluster view every push_interval (cluster.ts).
 */
import * as facts from "../../lib/facts";
import { endpointOfPool, isOpen, knownPools } from "../../lib/redis/breaker";
import * as subscriptions from "../../lib/redis/subscriptions";
import * as usage from "../redis-usage/meter";
import { SUITE_VERSION } from "../../lib/version";
import * as cluster from "./cluster";
import * as M from "./metrics";
import * as state from "./state";
import * as store from "./store";

const PLUGIN = "redis-metrics";
/** DB-less Kong and the local gateway have the default workspace only. */
const WORKSPACE = "default";
const DEFAULT_MAX_SERIES = 20000;
/** Seconds between two log lines about the same failing push. */
const PUSH_LOG_INTERVAL = 60;

interface MetricsConf extends cluster.ClusterConf {
  per_consumer: boolean;
  status_code_metrics: boolean;
  latency_metrics: boolean;
  bandwidth_metrics: boolean;
  upstream_health_metrics: boolean;
  suite_metrics: boolean;
  max_series: number;
}

const escape = M.escapeLabel;
const tonumber_ = tonumber;
const floor = math.floor;

function text(this: void, value: unknown): string | undefined {
  return type(value) === "string" ? (value as string) : undefined;
}

/**
 * The series names of one route (and its service) for Kong's metrics, built once per
 * route table (a config version's tables go with it): a request only looks them up.
 */
interface RouteSeries {
  /** `service="…",route="…"` */
  sr: string;
  requestLatency: string;
  upstreamLatency: string;
  kongLatency: string;
  ingress: string;
  egress: string;
  /** kong_http_requests_total without a consumer, by status and source. */
  requests: LuaTable<string, string>;
  /** The krs_* series of this route, by their label values (see factSeries). */
  facts: SeriesTree;
}

/**
 * Series names by their label values, one level per label (values are strings; a
 * boolean label is given as its text): a request walks the tree instead of building the
 * name. What it holds is bounded by the label values the suite's plugins record: plugin
 * names, fixed result names and the config's deny-list names, per route of the config.
 */
type SeriesTree = LuaTable<string, SeriesTree | string>;

function child(this: void, node: SeriesTree, key: string): SeriesTree {
  let c = node.get(key) as SeriesTree | undefined;
  if (c === undefined) {
    c = new LuaTable();
    node.set(key, c);
  }
  return c;
}

/** `def{sr,<label>="<value>",...}` for the label values after service and route. */
function buildSeries(this: void, def: M.MetricDef, sr: string, a: string, b: string, c?: string, d?: string): string {
  const values = [a, b];
  if (c !== undefined) values.push(c);
  if (d !== undefined) values.push(d);
  const labels = [sr];
  for (let i = 0; i < values.length; i++) labels.push(def.labels[i + 2] + '="' + escape(values[i]) + '"');
  return def.name + "{" + table.concat(labels, ",") + "}";
}

function leaf(this: void, node: SeriesTree, key: string, def: M.MetricDef, sr: string, a: string, b: string, c?: string, d?: string): string {
  let series = node.get(key) as string | undefined;
  if (series === undefined) {
    series = buildSeries(def, sr, a, b, c, d);
    node.set(key, series);
  }
  return series;
}

/** The series of `def` in route tree `tree` for the label values a, b (c, d when it has them). */
function factSeries(this: void, tree: SeriesTree, def: M.MetricDef, sr: string, a: string, b: string, c?: string, d?: string): string {
  let node = child(child(tree, def.name), a);
  if (c === undefined) return leaf(node, b, def, sr, a, b);
  node = child(node, b);
  if (d === undefined) return leaf(node, c, def, sr, a, b, c);
  return leaf(child(node, c), d, def, sr, a, b, c, d);
}

/** The per-plugin Redis series (krs_redis_*, krs_plugin_errors_total), built once per plugin name. */
interface PluginSeries {
  roundTrips: string;
  errors: string;
  latency: string;
  pluginErrors: string;
}
const seriesByPlugin = new LuaTable<string, PluginSeries>();

function pluginSeries(this: void, plugin: string): PluginSeries {
  let s = seriesByPlugin.get(plugin);
  if (s === undefined) {
    const labels = '{plugin="' + escape(plugin) + '"}';
    s = { roundTrips: M.REDIS_ROUND_TRIPS.name + labels, errors: M.REDIS_ERRORS.name + labels, latency: M.REDIS_LATENCY.name + labels, pluginErrors: M.PLUGIN_ERRORS.name + labels };
    seriesByPlugin.set(plugin, s);
  }
  return s;
}
const seriesByRoute = setmetatable(new LuaTable<object, RouteSeries>(), { __mode: "k" });
/** The key for requests that matched no route. */
const NO_ROUTE = {};

/** Kong's labels: the service's name (else host), the route's name (else id), "" when none. */
function serviceRouteLabels(this: void, service: KongService | undefined, route: KongRoute | undefined): string {
  const serviceName = service !== undefined ? text(service.name) ?? text(service.host) ?? "" : "";
  const routeName = route !== undefined ? text(route.name) ?? text(route.id) ?? "" : "";
  return 'service="' + escape(serviceName) + '",route="' + escape(routeName) + '"';
}

function routeSeries(this: void): RouteSeries {
  const route = kong.router.get_route();
  const service = kong.router.get_service();
  const key: object = route ?? service ?? NO_ROUTE;
  let s = seriesByRoute.get(key);
  if (s !== undefined) return s;
  const sr = serviceRouteLabels(service, route);
  const latency = "{" + sr + ',workspace="' + WORKSPACE + '"}';
  s = {
    sr,
    requestLatency: M.REQUEST_LATENCY.name + latency,
    upstreamLatency: M.UPSTREAM_LATENCY.name + latency,
    kongLatency: M.KONG_LATENCY.name + latency,
    ingress: M.BANDWIDTH.name + "{" + sr + ',direction="ingress",workspace="' + WORKSPACE + '",consumer=""}',
    egress: M.BANDWIDTH.name + "{" + sr + ',direction="egress",workspace="' + WORKSPACE + '",consumer=""}',
    requests: new LuaTable(),
    facts: new LuaTable(),
  };
  seriesByRoute.set(key, s);
  return s;
}

/**
 * Upstream latency (ms) as Kong's serializer reports it (ctx.KONG_WAITING_TIME, which Kong
 * and the local gateway set before header_filter), -1 when nothing was proxied; from
 * $upstream_response_time where no runloop set it.
 */
function upstreamLatency(this: void): number {
  const waiting = ngx.ctx["KONG_WAITING_TIME"];
  if (type(waiting) === "number") return waiting as number;
  const responseTime = ngx.var["upstream_response_time"];
  if (responseTime === undefined) return -1;
  const seconds = tonumber_(responseTime);
  if (seconds !== undefined) return floor(seconds * 1000 + 0.5);
  // Several tries: "0.001, 0.002"; the request waited for all of them.
  let total = 0;
  for (const [t] of string.gmatch(responseTime, "[%d.]+")) total += tonumber_(t as string) ?? 0;
  return floor(total * 1000 + 0.5);
}

function requestsSeries(this: void, s: RouteSeries, status: number, source: string, consumer: string): string {
  if (consumer !== "") {
    return M.HTTP_REQUESTS.name + "{" + s.sr + ',code="' + status + '",source="' + source + '",workspace="' + WORKSPACE + '",consumer="' + escape(consumer) + '"}';
  }
  const key = status * 2 + (source === "service" ? 1 : 0);
  let series = s.requests.get(key as unknown as string);
  if (series === undefined) {
    series = M.HTTP_REQUESTS.name + "{" + s.sr + ',code="' + status + '",source="' + source + '",workspace="' + WORKSPACE + '",consumer=""}';
    s.requests.set(key as unknown as string, series);
  }
  return series;
}

function bandwidthSeries(this: void, s: RouteSeries, direction: "ingress" | "egress", consumer: string): string {
  if (consumer === "") return direction === "ingress" ? s.ingress : s.egress;
  return M.BANDWIDTH.name + "{" + s.sr + ',direction="' + direction + '",workspace="' + WORKSPACE + '",consumer="' + escape(consumer) + '"}';
}

function recordKong(this: void, conf: MetricsConf, s: RouteSeries): void {
  let consumer = "";
  if (conf.per_consumer) consumer = text(kong.client.get_consumer()?.username) ?? "";
  if (conf.status_code_metrics) {
    const source = kong.response.get_source() === "service" ? "service" : "kong";
    store.incSeries(M.HTTP_REQUESTS, requestsSeries(s, ngx.status, source, consumer), 1);
  }
  if (conf.bandwidth_metrics) {
    const ingress = tonumber_(ngx.var["request_length"]) ?? 0;
    if (ingress > 0) store.incSeries(M.BANDWIDTH, bandwidthSeries(s, "ingress", consumer), ingress);
    const egress = tonumber_(ngx.var["bytes_sent"]) ?? 0;
    if (egress > 0) store.incSeries(M.BANDWIDTH, bandwidthSeries(s, "egress", consumer), egress);
  }
  if (conf.latency_metrics) {
    // nginx's $request_time, without the variable lookup: both read nginx's cached clock.
    const requestMs = floor((ngx.now() - ngx.req.start_time()) * 1000 + 0.5);
    const upstreamMs = upstreamLatency();
    store.observeSeries(M.REQUEST_LATENCY, s.requestLatency, requestMs);
    if (upstreamMs >= 0) store.observeSeries(M.UPSTREAM_LATENCY, s.upstreamLatency, upstreamMs);
    store.observeSeries(M.KONG_LATENCY, s.kongLatency, upstreamMs >= 0 ? math.max(requestMs - upstreamMs, 0) : requestMs);
  }
}

/** The krs_* metrics from what the suite's plugins recorded in this request. */
function recordFacts(this: void, s: RouteSeries): void {
  const f = facts.get();
  if (f === undefined) return;
  const tree = s.facts;
  const sr = s.sr;
  const cache = f.cache;
  if (cache !== undefined) store.incSeries(M.CACHE_REQUESTS, factSeries(tree, M.CACHE_REQUESTS, sr, cache.plugin, cache.status), 1);
  const limits = f.limits;
  if (limits !== undefined) {
    for (const d of limits) {
      store.incSeries(M.LIMIT_DECISIONS, factSeries(tree, M.LIMIT_DECISIONS, sr, d.plugin, d.kind, d.admitted ? "admitted" : "rejected", d.source), 1);
    }
  }
  const auth = f.auth;
  if (auth !== undefined) store.incSeries(M.AUTH_RESULTS, factSeries(tree, M.AUTH_RESULTS, sr, auth.plugin, auth.result), 1);
  const access = f.access;
  if (access !== undefined) {
    store.incSeries(M.ACCESS_DECISIONS, factSeries(tree, M.ACCESS_DECISIONS, sr, access.plugin, access.allowed ? "allowed" : "refused", access.reason ?? ""), 1);
  }
  for (const [plugin, redis] of pairs(f.redis_by_plugin)) {
    const ps = pluginSeries(plugin as string);
    if (redis.round_trips > 0) store.incSeries(M.REDIS_ROUND_TRIPS, ps.roundTrips, redis.round_trips);
    if (redis.errors > 0) store.incSeries(M.REDIS_ERRORS, ps.errors, redis.errors);
    store.observeSeries(M.REDIS_LATENCY, ps.latency, redis.time_ms / 1000);
  }
  const errors = f.errors;
  if (errors !== undefined) for (const e of errors) store.incSeries(M.PLUGIN_ERRORS, pluginSeries(e.plugin).pluginErrors, 1);
}

/** This worker's breaker states, as gauges that die with the worker. */
function publishWorkerGauges(this: void): void {
  const worker = tostring(ngx.worker.id() ?? 0);
  for (const pool of knownPools()) {
    const series = M.CIRCUIT_OPEN.name + '{redis="' + escape(endpointOfPool(pool)) + '",worker="' + worker + '"}';
    store.setWorkerGauge(series, isOpen(pool) ? 1 : 0);
  }
  for (const s of subscriptions.all()) {
    const labels = '{plugin="' + escape(s.plugin) + '",redis="' + escape(s.redis) + '",worker="' + worker + '"}';
    store.setWorkerGauge(M.PUBSUB_UP.name + labels, s.up);
    store.setWorkerGauge(M.PUBSUB_SUBSCRIBES.name + labels, s.subscribes);
  }
  const [backlog, dropped] = usage.health();
  store.setWorkerGauge(M.USAGE_BACKLOG.name + '{worker="' + worker + '"}', backlog);
  store.setWorkerGauge(M.USAGE_DROPPED.name + '{worker="' + worker + '"}', dropped);
}

function onFlushTimer(this: void, premature: boolean): void {
  if (premature) return;
  store.flush();
  publishWorkerGauges();
}

let lastPushLogAt = 0;

function schedulePush(this: void, delay: number): void {
  const [ok, err] = ngx.timer.at(delay, onPushTimer);
  if (ok === undefined && !ngx.worker.exiting()) ngx.log(ngx.ERR, `[${PLUGIN}] could not schedule the cluster push: ${err}`);
}

function onPushTimer(this: void, premature: boolean): void {
  if (premature) return;
  const conf = state.clusterConf();
  if (conf !== undefined) {
    const [ok, err] = pcall(cluster.push, conf);
    const failure = !ok ? tostring(err) : err;
    if (failure !== undefined) {
      ngx.update_time();
      if (ngx.now() - lastPushLogAt >= PUSH_LOG_INTERVAL) {
        lastPushLogAt = ngx.now();
        ngx.log(ngx.ERR, `[${PLUGIN}] could not push this node's metrics to redis at ${conf.redis.host}:${conf.redis.port}: ${failure}`);
      }
    }
  }
  schedulePush(conf !== undefined ? conf.push_interval : 1);
}

const handler: KongPluginHandler<MetricsConf> = {
  PRIORITY: 13,
  VERSION: SUITE_VERSION,

  init_worker() {
    if (store.dict() === undefined) {
      ngx.log(ngx.ERR, `[${PLUGIN}] ngx shared dict '${store.DICT}' not found: add 'lua_shared_dict ${store.DICT} 16m' (Kong: KONG_NGINX_HTTP_LUA_SHARED_DICT)`);
      return;
    }
    store.bootId();
    ngx.timer.every(store.FLUSH_INTERVAL, onFlushTimer);
    // One pusher per node: the snapshot is the node's, whichever worker counted.
    if (ngx.worker.id() === 0) schedulePush(1);
  },

  configure(configs) {
    let maxSeries = 0;
    let pusher: MetricsConf | undefined;
    let readsFacts = false;
    if (configs !== undefined) {
      for (const c of configs) {
        if (c.suite_metrics) readsFacts = true;
        maxSeries = math.max(maxSeries, c.max_series);
        if (c.push_interval > 0 && (pusher === undefined || c.push_interval < pusher.push_interval)) pusher = c;
      }
    }
    store.setMaxSeries(maxSeries > 0 ? maxSeries : DEFAULT_MAX_SERIES);
    state.setClusterConf(pusher);
    // The other plugins record their request facts only while a reader is configured.
    facts.setReader(PLUGIN, readsFacts);
  },

  log(conf) {
    const s = routeSeries();
    recordKong(conf, s);
    if (conf.suite_metrics) recordFacts(s);
  },
};

export = handler;

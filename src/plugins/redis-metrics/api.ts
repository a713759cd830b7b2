/**
 * redis-metrics's Admin API, in Kong's api.lua shape:
 *
 *   GET /redis-metrics           this node's metrics, Prometheus text format 0.0.4
 *   GET /redis-metrics/cluster   every live node's counters summed (needs push_interval)
 */
import { clusterWide, local } from "./scrape";

const api = {
  "/redis-metrics": { GET: local },
  "/redis-metrics/cluster": { GET: clusterWide },
};

export = api;

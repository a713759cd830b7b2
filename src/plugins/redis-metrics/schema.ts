/**
 * redis-metrics's configuration: Kong prometheus's fields (per_consumer,
 * status_code_metrics, latency_metrics, bandwidth_metrics, upstream_health_metrics; all
 * off by default, as in Kong 3.x), plus the suite's own metrics, the series cap and the
 * cluster-wide push.
 */
import * as typedefs from "kong.db.schema.typedefs";
import { redisRecord } from "../../lib/redis/schema";

function flag(this: void, dflt: boolean, description: string): SchemaField {
  return { type: "boolean", required: true, default: dflt, description };
}

const schema: KongPluginSchema = {
  name: "redis-metrics",
  fields: [
    { protocols: typedefs.protocols_http },
    {
      config: {
        type: "record",
        description: "Kong's Prometheus metrics under Kong's names, the suite's krs_* metrics, per node at GET /redis-metrics and summed over every node at GET /redis-metrics/cluster.",
        fields: [
          { per_consumer: flag(false, "Label kong_http_requests_total and kong_bandwidth_bytes with the consumer's username (as Kong). Each consumer is a new series: max_series bounds them.") },
          { status_code_metrics: flag(false, "Export kong_http_requests_total (status codes per service, route, source, consumer).") },
          { latency_metrics: flag(false, "Export kong_kong_latency_ms, kong_upstream_latency_ms and kong_request_latency_ms (histograms with Kong's buckets).") },
          { bandwidth_metrics: flag(false, "Export kong_bandwidth_bytes (ingress and egress bytes per service, route, consumer).") },
          { upstream_health_metrics: flag(false, "Kong's field, accepted for compatibility: the local gateway has no upstream entities or health checks, so nothing is exported for it.") },
          { suite_metrics: flag(true, "Export the krs_* metrics filled from what the suite's plugins did in each request (cache, limits, auth, access, Redis round trips, errors and latency).") },
          {
            max_series: {
              type: "integer",
              required: true,
              default: 20000,
              between: [100, 10000000],
              description: "Series (as Prometheus counts them: each histogram bucket is one) this node keeps. Updates to a series past the cap are dropped and counted in krs_metrics_series_dropped_total. Each series costs about 200 bytes of the krs_metrics shared dict.",
            },
          },
          {
            push_interval: {
              type: "number",
              required: true,
              default: 0,
              between: [0, 3600],
              description: "Seconds between two snapshots of this node's counters pushed to Redis for GET /redis-metrics/cluster; 0 turns the push off. A snapshot lives 3 intervals, so a stopped node drops out of the cluster view after that.",
            },
          },
          { redis: redisRecord() },
        ],
      },
    },
  ],
};

export = schema;

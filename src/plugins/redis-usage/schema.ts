/**
 * redis-usage's configuration: what is metered (per consumer or its fallback, per route,
 * per service), what a request costs, how the worker buffer flushes, and the quotas.
 */
import * as typedefs from "kong.db.schema.typedefs";
import { faultTolerantField, redisRecord } from "../../lib/redis/schema";
import { FALLBACKS, MAX_COST, QUOTA_MODES, QUOTA_UNITS } from "./conf";

function described(this: void, base: SchemaField, description: string): SchemaField {
  const field: LuaTable<string, unknown> = new LuaTable();
  for (const [k, v] of pairs(base as unknown as LuaTable<string, unknown>)) field.set(k, v);
  field.set("description", description);
  return field as unknown as SchemaField;
}

function quotaField(this: void, period: string): SchemaField {
  return {
    type: "integer",
    between: [0, 1000000000000],
    description: `Default quota per UTC ${period} for each consumer (in quota_unit); a per-consumer override set through the Admin API or \`krs usage quota set\` wins. Unset: no ${period} quota.`,
  };
}

const schema: KongPluginSchema = {
  name: "redis-usage",
  fields: [
    { protocols: typedefs.protocols_http },
    {
      config: {
        type: "record",
        description: "Usage metering for billing and quotas: per consumer, route and service, in UTC day and month buckets in Redis, buffered in each worker off the request path.",
        fields: [
          { fallback: { type: "string", required: true, default: "ip", one_of: FALLBACKS, description: "Whom a request without an identified consumer is metered to: its client IP, its credential, or nobody (its route and service are still metered)." } },
          { cost: { type: "integer", required: true, default: 1, between: [0, MAX_COST], description: "Cost of one request; also the cost counted when cost_header is missing or not a valid number." } },
          { cost_header: described(typedefs.header_name, "A response header the upstream sets with the request's cost (a whole number from 0 to 10^9), e.g. X-Usage-Cost. Takes precedence over cost_per_kb.") },
          { hide_cost_header: { type: "boolean", required: true, default: true, description: "Remove cost_header from the response before the client sees it." } },
          { cost_per_kb: { type: "integer", between: [0, MAX_COST], description: "Cost per started KiB of response body actually sent (chunked bodies included), instead of the fixed cost." } },
          { daily_retention_days: { type: "integer", required: true, default: 35, between: [1, 3660], description: "Days a day bucket is kept after the day ends." } },
          { monthly_retention_months: { type: "integer", required: true, default: 13, between: [1, 120], description: "Months a month bucket is kept after the month ends." } },
          { flush_interval: { type: "integer", required: true, default: 1000, between: [10, 60000], description: "Milliseconds between two flushes of a worker's pending counts to Redis (one pipelined round trip)." } },
          { flush_batch: { type: "integer", required: true, default: 1000, between: [1, 100000], description: "Flush as soon as this many counter sets (one subject's one bucket) are pending, before flush_interval has passed." } },
          { max_pending: { type: "integer", required: true, default: 20000, between: [1, 1000000], description: "Most counter sets a worker holds while Redis is unreachable; counts for new ones past it are dropped, counted and logged." } },
          { quota_day: quotaField("day") },
          { quota_month: quotaField("month") },
          { quota_unit: { type: "string", required: true, default: "requests", one_of: QUOTA_UNITS, description: "What the quotas count: admitted requests, or their cost." } },
          { quota_mode: { type: "string", required: true, default: "batched", one_of: QUOTA_MODES, description: "batched: decided on the worker's view of the count, refreshed by each flush (no Redis call per request; overshoot at most one flush interval of traffic across all nodes). exact: one atomic script call per request, never over quota." } },
          { quota_status: { type: "integer", required: true, default: 429, between: [400, 599], description: "Status of a request over quota (e.g. 402)." } },
          { quota_message: { type: "string", required: true, default: "API quota exceeded", description: "Message of a request over quota, in Kong's `{\"message\": ...}` body." } },
          { fault_tolerant: faultTolerantField(true) },
          { redis: redisRecord() },
        ],
      },
    },
  ],
};

export = schema;

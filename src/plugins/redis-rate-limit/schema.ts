/**
 * redis-rate-limit's configuration: Kong's rate-limiting field names where Kong has the
 * field (second … year, limit_by, header_name, path, hide_client_headers, error_code,
 * error_message, fault_tolerant, redis), plus `algorithm`.
 */
import * as typedefs from "kong.db.schema.typedefs";
import { faultTolerantField, redisRecord } from "../../lib/redis/schema";
import { ALGORITHMS, LIMIT_BY, MAX_LIMIT, SYNCS } from "./conf";
import { WINDOWS } from "./windows";

/** Kong's rule: a longer window may not have a lower limit than a shorter one. */
function validateWindowOrder(this: void, config: LuaTable<string, unknown>): LuaMultiReturn<[true | undefined, string | undefined]> {
  for (let i = 0; i < WINDOWS.length; i++) {
    const shorter = config.get(WINDOWS[i].name);
    for (let j = i + 1; j < WINDOWS.length && type(shorter) === "number"; j++) {
      const longer = config.get(WINDOWS[j].name);
      if (type(longer) === "number" && (longer as number) < (shorter as number)) {
        return $multi(undefined, string.format("The limit for %s(%.1f) cannot be lower than the limit for %s(%.1f)",
          WINDOWS[j].name, longer as number, WINDOWS[i].name, shorter as number));
      }
    }
  }
  return $multi(true, undefined);
}

/** Kong types limits as `number` (gt 0); requests are counted whole, so here they are integers. */
function limitField(this: void, window: string): SchemaField {
  return {
    type: "integer",
    between: [1, MAX_LIMIT],
    description: `The most requests admitted per ${window} for one identifier: a whole number from 1 to 10^10 (Kong's rate-limiting also takes fractions).`,
  };
}

function described(this: void, base: SchemaField, description: string): SchemaField {
  const field: LuaTable<string, unknown> = new LuaTable();
  for (const [k, v] of pairs(base as unknown as LuaTable<string, unknown>)) field.set(k, v);
  field.set("description", description);
  return field as unknown as SchemaField;
}

const schema: KongPluginSchema = {
  name: "redis-rate-limit",
  fields: [
    { protocols: typedefs.protocols_http },
    {
      config: {
        type: "record",
        description: "Exact rate limiting in Redis: every window is decided and counted in one atomic script call, per lease of admissions (sync lease) or per request (sync exact). Rejected requests do not consume quota.",
        fields: [
          { second: limitField("second") },
          { minute: limitField("minute") },
          { hour: limitField("hour") },
          { day: limitField("day (00:00 to 24:00 UTC)") },
          { month: limitField("calendar month (UTC)") },
          { year: limitField("calendar year (UTC)") },
          {
            algorithm: {
              type: "string",
              required: true,
              default: "sliding-window",
              one_of: ALGORITHMS,
              description: "sliding-window: the previous window's count, weighted by how much of it still overlaps the last window length, plus the current window's. fixed-window: the current window's count only.",
            },
          },
          {
            sync: {
              type: "string",
              required: true,
              default: "lease",
              one_of: SYNCS,
              description: "lease: each worker reserves a batch of admissions (a lease) in one script call and admits from it locally; Redis counts leased admissions as used, so no limit is ever exceeded, and what a worker does not use goes back within lease_ttl. Leases grow with the worker's observed rate (up to lease_max) and shrink to one admission as the room left shrinks. exact: one script call per request.",
            },
          },
          {
            lease_ttl: {
              type: "number",
              required: true,
              default: 1,
              between: [0.05, 60],
              description: "With sync lease: seconds a worker may admit from a lease; then, or when a window of the lease ends, or when the worker exits, what is left goes back to Redis. It bounds how long admissions can sit unused in one worker while another refuses requests.",
            },
          },
          {
            lease_max: {
              type: "integer",
              required: true,
              default: 100,
              between: [1, 1000000],
              description: "With sync lease: the most admissions one lease reserves (a lease never takes more than 1/8 of the room left either). 1 makes every admission its own script call, as exact.",
            },
          },
          {
            limit_by: {
              type: "string",
              required: true,
              default: "consumer",
              one_of: LIMIT_BY,
              description: "What one counter set belongs to: the consumer (else its credential), the credential, the client IP, the service, the route, a request header's value (header_name), or one request path (path). When it is missing, the client IP is used.",
            },
          },
          { header_name: described(typedefs.header_name, "The header whose value identifies the client, with limit_by header.") },
          { path: described(typedefs.path, "With limit_by path: requests to exactly this path share one counter set; other requests are counted by client IP.") },
          { hide_client_headers: { type: "boolean", required: true, default: false, description: "Do not send the X-RateLimit-*, RateLimit-* and Retry-After headers." } },
          { error_code: { type: "integer", required: true, default: 429, between: [400, 599], description: "Status of a rejected request." } },
          { error_message: { type: "string", required: true, default: "API rate limit exceeded", description: "Message of a rejected request, in Kong's `{\"message\": ...}` body." } },
          { fault_tolerant: faultTolerantField(true) },
          { redis: redisRecord() },
        ],
        custom_validator: validateWindowOrder,
      },
    },
  ],
  entity_checks: [
    { at_least_one_of: ["config.second", "config.minute", "config.hour", "config.day", "config.month", "config.year"] },
    { conditional: { if_field: "config.limit_by", if_match: { eq: "header" }, then_field: "config.header_name", then_match: { required: true } } },
    { conditional: { if_field: "config.limit_by", if_match: { eq: "path" }, then_field: "config.path", then_match: { required: true } } },
  ],
};

export = schema;

/**
 * redis-key-auth's configuration: Kong key-auth's field names (key_names, key_in_header,
 * key_in_query, key_in_body, hide_credentials, anonymous, run_on_preflight, realm), plus
 * the worker cache TTLs, fault_tolerant (false: an auth plugin fails closed) and redis.
 */
import * as typedefs from "kong.db.schema.typedefs";
import { faultTolerantField, redisRecord } from "../../lib/redis/schema";
import { STALE_GRACE, STALE_GRACE_FAULT_TOLERANT } from "./util";

/** A day: longer cache lifetimes would make a lost revocation message matter for too long. */
const MAX_CACHE_TTL = 86400;

function faultTolerant(this: void): SchemaField {
  const field = faultTolerantField(false);
  field.description = `When Redis fails for a key it must be asked about: false answers 500 (fail closed); true lets the request through unauthenticated (as anonymous when set). Either way, a key in the worker cache still authenticates until cache_ttl + ${STALE_GRACE} s after Redis last confirmed it (cache_ttl + ${STALE_GRACE_FAULT_TOLERANT} s with true).`;
  return field;
}

function atLeastOnePlace(this: void, config: LuaTable<string, unknown>): LuaMultiReturn<[true | undefined, string | undefined]> {
  if (config.get("key_in_header") === false && config.get("key_in_query") === false && config.get("key_in_body") === false) {
    return $multi(undefined, "at least one of key_in_header, key_in_query and key_in_body must be true");
  }
  return $multi(true, undefined);
}

const schema: KongPluginSchema = {
  name: "redis-key-auth",
  fields: [
    { consumer: typedefs.no_consumer },
    { protocols: typedefs.protocols_http },
    {
      config: {
        type: "record",
        description: "API keys checked against their SHA-256 in Redis, mapped to Kong consumers, cached per worker and revoked on every node through Redis pub/sub.",
        fields: [
          {
            key_names: {
              type: "array",
              required: true,
              elements: typedefs.header_name,
              default: ["apikey"],
              len_min: 1,
              description: "Names of the header, query argument or body field that carry the key; the first name found wins. Kong's default: `apikey` only.",
            },
          },
          { key_in_header: { type: "boolean", required: true, default: true, description: "Look for the key in the request headers." } },
          { key_in_query: { type: "boolean", required: true, default: true, description: "Look for the key in the query string." } },
          { key_in_body: { type: "boolean", required: true, default: false, description: "Look for the key in the body (application/x-www-form-urlencoded or application/json)." } },
          { hide_credentials: { type: "boolean", required: true, default: false, description: "Remove the key from the header, query string or body (form or JSON; any other body goes upstream as sent) before proxying." } },
          {
            anonymous: {
              type: "string",
              len_min: 1,
              description: "Consumer id or username used when a request has no valid key; it then goes on with `X-Anonymous-Consumer: true`. Unset: such requests get 401.",
            },
          },
          { run_on_preflight: { type: "boolean", required: true, default: true, description: "Authenticate OPTIONS (CORS preflight) requests too; false lets them through unauthenticated." } },
          {
            realm: {
              type: "string",
              description: "Realm of the `WWW-Authenticate` header sent with every 401: `Key realm=\"<realm>\"` when set, `Key` when unset (as Kong's key-auth).",
            },
          },
          {
            cache_ttl: {
              type: "number",
              required: true,
              default: 10,
              between: [0, MAX_CACHE_TTL],
              description: `Seconds a valid key stays in the worker cache (0: no cache). Also the longest a revoked key can work should its invalidation message be lost; while Redis is unreachable, a cached key works at most ${STALE_GRACE} s longer (${STALE_GRACE_FAULT_TOLERANT} s with fault_tolerant).`,
            },
          },
          {
            negative_cache_ttl: {
              type: "number",
              required: true,
              default: 1,
              between: [0, MAX_CACHE_TTL],
              description: "Seconds an unknown, expired or revoked key stays in the worker cache as unknown (0: no cache).",
            },
          },
          { fault_tolerant: faultTolerant() },
          { redis: redisRecord() },
        ],
        entity_checks: [{ custom_entity_check: { field_sources: ["key_in_header", "key_in_query", "key_in_body"], fn: atLeastOnePlace } }],
      },
    },
  ],
};

export = schema;

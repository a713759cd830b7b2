/**
 * redis-cache's configuration: Kong proxy-cache's field names where Kong has the field
 * (request_method, response_code, content_type, cache_ttl, cache_control, vary_headers,
 * vary_query_params, ignore_uri_case), plus the worker cache (l1_*), the stampede lock,
 * refresh-ahead, sliding TTL, encryption and the shared Redis settings.
 */
import * as typedefs from "kong.db.schema.typedefs";
import { faultTolerantField, redisRecord } from "../../lib/redis/schema";
import { METHODS, PLUGIN_NAME } from "./conf";
import { parseMediaType } from "./policy";

function hasStar(this: void, text: string): boolean {
  return string.find(text, "*", 1, true)[0] !== undefined;
}

/** "type/subtype", "type/*" or "*", optionally with parameters ("; name=value"). */
function validateContentType(this: void, value: string): LuaMultiReturn<[true | undefined, string | undefined]> {
  const [major, minor] = parseMediaType(value);
  // "*" stands for a whole subtype, or for everything: "*" + "/json" or "text/x*" mean nothing.
  const wildcardsOk = major === "*" ? minor === "*" : major !== undefined && !hasStar(major) && (minor === "*" || (minor !== undefined && !hasStar(minor)));
  if (wildcardsOk) return $multi(true, undefined);
  return $multi(undefined, `invalid content type '${value}': expected type/subtype, type/* or *, optionally with parameters (; name=value)`);
}

const schema: KongPluginSchema = {
  name: PLUGIN_NAME,
  fields: [
    { protocols: typedefs.protocols_http },
    {
      config: {
        type: "record",
        description: "Response cache shared by every node through Redis, with a per-worker cache in front, a stampede lock, refresh-ahead and optional encryption.",
        fields: [
          {
            request_method: {
              type: "array",
              required: true,
              default: ["GET", "HEAD"],
              elements: { type: "string", one_of: METHODS },
              description: "Request methods whose responses may be cached. The request body is not part of the cache key. HEAD responses are never stored (as in Kong), so HEAD requests always reach the upstream.",
            },
          },
          {
            response_code: {
              type: "array",
              required: true,
              default: [200, 301, 404],
              len_min: 1,
              elements: { type: "integer", between: [100, 900] },
              description: "Upstream response status codes that may be cached.",
            },
          },
          {
            content_type: {
              type: "array",
              required: true,
              default: ["text/plain", "application/json"],
              elements: { type: "string", custom_validator: validateContentType },
              description: "Upstream response content types that may be cached. An entry without parameters matches on type/subtype whatever parameters the response has (`application/json` matches `application/json; charset=utf-8`); an entry with parameters, as in Kong, only a response with exactly those parameters and values. `type/*` and `*` match more.",
            },
          },
          {
            cache_ttl: {
              type: "integer",
              required: true,
              default: 300,
              gt: 0,
              description: "Seconds an entry is kept (with cache_control, when the response sets no max-age).",
            },
          },
          {
            cache_control: {
              type: "boolean",
              required: true,
              default: false,
              description: "Honour Cache-Control: on requests no-store and no-cache (bypass, refetch), max-age and min-fresh (refetch an entry too old or expiring too soon) and only-if-cached (a stored response or 504, never the upstream); on responses no-store, no-cache, private (not stored), s-maxage and max-age (the TTL).",
            },
          },
          {
            vary_headers: {
              type: "array",
              elements: { type: "string" },
              description: "Request headers whose values are part of the cache key. A response's own Vary header is honoured as well.",
            },
          },
          {
            vary_query_params: {
              type: "array",
              elements: { type: "string" },
              description: "Query arguments that are part of the cache key. Unset: all of them.",
            },
          },
          {
            ignore_uri_case: {
              type: "boolean",
              required: true,
              default: false,
              description: "Treat paths that differ only in letter case as the same resource.",
            },
          },
          {
            cache_per_consumer: {
              type: "boolean",
              required: true,
              default: true,
              description: "Keep an authenticated consumer's responses apart from everyone else's. A request with an Authorization header is cached only when a credential identified its consumer (not as an anonymous consumer). When false, requests with an Authorization header are not cached.",
            },
          },
          {
            max_body_size: {
              type: "integer",
              required: true,
              default: 1048576,
              between: [0, 2147483647],
              description: "Largest response body, in bytes, that is cached; larger responses stream through uncached.",
            },
          },
          {
            l1_ttl: {
              type: "number",
              required: true,
              default: 5,
              between: [0, 86400],
              description: "Seconds a worker keeps an entry in its own memory (L1) before asking Redis again; 0 disables L1.",
            },
          },
          {
            l1_size: {
              type: "integer",
              required: true,
              default: 1000,
              between: [1, 1000000],
              description: "Entries each worker keeps in L1 for this instance (least recently used go first); l1_max_bytes bounds their bytes.",
            },
          },
          {
            l1_max_bytes: {
              type: "integer",
              required: true,
              default: 16777216,
              between: [0, 2147483647],
              description: "Bytes of responses (bodies and headers, plus 256 bytes per entry) all redis-cache instances together keep in one worker's L1; the least recently used entry leaves first. The smallest value among the enabled instances that use L1 applies to the worker. 0 keeps nothing in L1.",
            },
          },
          {
            lock_timeout: {
              type: "integer",
              required: true,
              default: 3000,
              between: [1, 600000],
              description: "Milliseconds a request waits for another request that is filling the same entry, before going upstream itself.",
            },
          },
          {
            refresh_ahead: {
              type: "number",
              required: true,
              default: 0.2,
              between: [0, 1],
              description: "Fraction of the TTL at the end of an entry's life in which one request refreshes it from the upstream while the others are served the cached copy; 0 disables refresh-ahead.",
            },
          },
          {
            sliding_ttl: {
              type: "boolean",
              required: true,
              default: false,
              description: "When true, every hit restarts the entry's TTL in Redis.",
            },
          },
          {
            encryption_key: {
              type: "string",
              len_min: 16,
              referenceable: true,
              encrypted: true,
              description: "When set, new entries are stored in Redis encrypted with AES-256-GCM under SHA-256 of this secret (a fresh nonce per entry). Entries sealed under a key this node does not have are misses that are left in place; entries that fail authentication are misses that are replaced.",
            },
          },
          {
            decryption_keys: {
              type: "array",
              encrypted: true,
              elements: { type: "string", len_min: 16, referenceable: true },
              description: "Key rotation: further secrets whose entries are also read (never used to seal). Rotate by adding the new secret here on every node, then making it encryption_key (the old one moves here) on every node, then removing the old one.",
            },
          },
          { fault_tolerant: faultTolerantField(true) },
          { redis: redisRecord() },
        ],
      },
    },
  ],
};

export = schema;

/**
 * redis-jwt's configuration: Kong jwt's field names and defaults (uri_param_names,
 * cookie_names, header_names, key_claim_name, secret_is_base64, claims_to_verify,
 * maximum_expiration, anonymous, run_on_preflight, realm), plus clock_skew, the worker
 * cache, the key HMAC secrets are sealed with, how long revocations without an expiry
 * are kept, fault_tolerant and redis.
 */
import * as typedefs from "kong.db.schema.typedefs";
import { faultTolerantField, redisRecord } from "../../lib/redis/schema";
import { DEFAULT_REVOCATION_MAX_TTL, STALE_GRACE } from "./util";

const MAX_CACHE_TTL = 86400;
/** Kong's bound for maximum_expiration: a year. */
const MAX_EXPIRATION = 31536000;
const MAX_SKEW = 3600;

/** Kong's rule: a maximum expiration means nothing unless `exp` is verified. */
function expirationVerified(this: void, config: LuaTable<string, unknown>): LuaMultiReturn<[true | undefined, string | undefined]> {
  const maximum = config.get("maximum_expiration");
  if (type(maximum) !== "number" || (maximum as number) <= 0) return $multi(true, undefined);
  const claims = config.get("claims_to_verify");
  if (type(claims) === "table") for (const c of claims as string[]) if (c === "exp") return $multi(true, undefined);
  return $multi(undefined, "maximum_expiration needs 'exp' in claims_to_verify");
}

const schema: KongPluginSchema = {
  name: "redis-jwt",
  fields: [
    { consumer: typedefs.no_consumer },
    { protocols: typedefs.protocols_http },
    {
      config: {
        type: "record",
        description: "JWT verification as Kong's jwt plugin, with the credentials and revocations in Redis, cached per worker and invalidated on every node through Redis pub/sub.",
        fields: [
          { uri_param_names: { type: "set", elements: { type: "string" }, default: ["jwt"], description: "Query arguments the token may come in." } },
          { cookie_names: { type: "set", elements: { type: "string" }, default: [], description: "Cookies the token may come in." } },
          { header_names: { type: "set", elements: { type: "string" }, default: ["authorization"], description: "Headers the token may come in, as `Bearer <token>` (`Bearer` in any case)." } },
          { key_claim_name: { type: "string", default: "iss", description: "The claim (or, failing it, the header field) that names the credential." } },
          { secret_is_base64: { type: "boolean", required: true, default: false, description: "HS* secrets are stored base64-encoded and decoded before use." } },
          {
            claims_to_verify: {
              type: "set",
              elements: { type: "string", one_of: ["exp", "nbf"] },
              description: "Registered claims checked: `exp` (the token has not expired) and `nbf` (it is already valid), each with `clock_skew` leeway. Unset: neither (as Kong).",
            },
          },
          { anonymous: { type: "string", len_min: 1, description: "Consumer id or username used when a request has no valid token; it then goes on with `X-Anonymous-Consumer: true`. Unset: 401." } },
          { run_on_preflight: { type: "boolean", required: true, default: true, description: "Authenticate OPTIONS (CORS preflight) requests too." } },
          {
            maximum_expiration: {
              type: "number",
              default: 0,
              between: [0, MAX_EXPIRATION],
              description: "When above 0, tokens must have an `exp` at most this many seconds ahead (requires `exp` in claims_to_verify).",
            },
          },
          { realm: { type: "string", description: "Realm of the `WWW-Authenticate` header sent with every 401: `Bearer realm=\"<realm>\"`; unset: `Bearer`." } },
          { clock_skew: { type: "number", required: true, default: 0, between: [0, MAX_SKEW], description: "Seconds of leeway for `exp` and `nbf`, and kept on top of `exp` by a token's revocation." } },
          {
            cache_ttl: {
              type: "number",
              required: true,
              default: 60,
              between: [0, MAX_CACHE_TTL],
              description: `Seconds a credential stays in the worker cache (0: no cache), and the longest a verified token is trusted without being verified again. Changes reach every worker through pub/sub at once; this bounds a lost message. While Redis is unreachable, cached answers work ${STALE_GRACE} s longer.`,
            },
          },
          {
            credential_encryption_key: {
              type: "string",
              len_min: 16,
              referenceable: true,
              encrypted: true,
              description: "The secret HS* credentials are sealed with in Redis (AES-256-GCM under its SHA-256). Without it, HS* credentials cannot be created or used; RS/PS/ES/EdDSA need none. Give every node (and `krs jwt`, through KRS_JWT_ENCRYPTION_KEY) the same value.",
            },
          },
          {
            revocation_max_ttl: {
              type: "integer",
              required: true,
              default: DEFAULT_REVOCATION_MAX_TTL,
              between: [1, 2147483647],
              description: "Seconds a revocation is kept when it has no expiry of its own: a token without `exp`, a `jti` revoked without its `exp`, and every subject or consumer marker.",
            },
          },
          { fault_tolerant: faultTolerantField(false) },
          { redis: redisRecord() },
        ],
        entity_checks: [{ custom_entity_check: { field_sources: ["maximum_expiration", "claims_to_verify"], fn: expirationVerified } }],
      },
    },
  ],
};

export = schema;

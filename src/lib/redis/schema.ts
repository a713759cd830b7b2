/**
 * The `config.redis` record every Redis-backed plugin shares, with Kong 3.x's field names
 * (as in the bundled rate-limiting and proxy-cache-advanced plugins), and the
 * `fault_tolerant` field. One definition, so the plugins cannot drift apart.
 */

/** The Redis connection settings after schema validation (defaults filled). */
export interface RedisConf {
  host: string;
  port: number;
  /** Connect, send and read timeout in milliseconds. */
  timeout: number;
  username?: string;
  password?: string;
  database: number;
  ssl: boolean;
  ssl_verify: boolean;
  server_name?: string;
  keepalive_pool_size: number;
  /** Milliseconds an idle pooled connection is kept. */
  keepalive_timeout: number;
}

export function redisRecord(this: void): SchemaField {
  return {
    type: "record",
    required: true,
    description: "How to reach Redis. Field names as Kong's bundled plugins.",
    fields: [
      { host: { type: "string", required: true, default: "127.0.0.1", description: "Redis host name or IP address." } },
      { port: { type: "integer", required: true, default: 6379, between: [0, 65535], description: "Redis port." } },
      { timeout: { type: "integer", required: true, default: 2000, between: [1, 2147483646], description: "Connect, send and read timeout, in milliseconds." } },
      { username: { type: "string", referenceable: true, description: "ACL user name (Redis 6+); leave unset to authenticate with the password alone." } },
      { password: { type: "string", referenceable: true, encrypted: true, len_min: 0, description: "Redis password (AUTH); empty or unset sends no AUTH, as Kong. Never logged." } },
      { database: { type: "integer", required: true, default: 0, between: [0, 2147483647], description: "Database number (SELECT)." } },
      { ssl: { type: "boolean", required: true, default: false, description: "Connect with TLS." } },
      { ssl_verify: { type: "boolean", required: true, default: false, description: "Verify the server certificate against lua_ssl_trusted_certificate." } },
      { server_name: { type: "string", description: "SNI and certificate name to verify; defaults to host." } },
      { keepalive_pool_size: { type: "integer", required: true, default: 256, between: [1, 2147483646], description: "Connections each worker keeps idle per pool." } },
      { keepalive_timeout: { type: "integer", required: true, default: 60000, between: [0, 2147483646], description: "Milliseconds an idle pooled connection is kept." } },
    ],
  };
}

/** `fault_tolerant`: what a Redis failure does to the request. */
export function faultTolerantField(this: void, dflt: boolean): SchemaField {
  return {
    type: "boolean",
    required: true,
    default: dflt,
    description: dflt
      ? "When Redis fails, let the request through and log the failure (once per interval). False: answer 500."
      : "When Redis fails, answer 500 (fail closed). True: let the request through and log the failure.",
  };
}

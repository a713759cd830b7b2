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
  /** Redis Cluster: the seed nodes (any of the cluster's nodes); set = cluster mode. Unset: ngx.null or nil. */
  cluster_nodes?: ClusterNode[] | NgxNull;
  /** MOVED/ASK redirections one call follows before it fails. */
  cluster_max_redirections: number;
  /** Sentinel: the monitored master's name; set = sentinel mode. */
  sentinel_master?: string | NgxNull;
  sentinel_role?: SentinelRole | NgxNull;
  sentinel_nodes?: SentinelNode[] | NgxNull;
  sentinel_username?: string | NgxNull;
  sentinel_password?: string | NgxNull;
}

export interface ClusterNode {
  ip: string;
  port: number;
}
export interface SentinelNode {
  host: string;
  port: number;
}
export const SENTINEL_ROLES = ["master", "slave", "any"] as const;
export type SentinelRole = (typeof SENTINEL_ROLES)[number];

const SENTINEL_FIELDS = ["sentinel_master", "sentinel_role", "sentinel_nodes"];

function nonEmptyList(this: void, value: unknown): boolean {
  return type(value) === "table" && (value as unknown[]).length > 0;
}

/** Redis Cluster has database 0 only: a config that selects another one would never work. */
function clusterDatabase(this: void, redis: RedisConf): LuaMultiReturn<[true | undefined, string | undefined]> {
  if (nonEmptyList(redis.cluster_nodes) && redis.database !== 0) {
    return $multi(undefined, "'database' must be 0 with 'cluster_nodes': Redis Cluster has only database 0");
  }
  return $multi(true, undefined);
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
      {
        cluster_nodes: {
          type: "array",
          len_min: 1,
          description: "Redis Cluster nodes to discover the cluster from (any of them; the slot map is read from CLUSTER SLOTS). Setting it means Redis Cluster: host and port are then unused.",
          elements: {
            type: "record",
            fields: [
              { ip: { type: "string", required: true, default: "127.0.0.1", description: "A cluster node's IP address or host name." } },
              { port: { type: "integer", required: true, default: 6379, between: [0, 65535], description: "That node's port." } },
            ],
          },
        },
      },
      { cluster_max_redirections: { type: "integer", required: true, default: 5, between: [0, 100], description: "MOVED/ASK redirections one Redis Cluster call follows before it fails." } },
      { sentinel_master: { type: "string", description: "Sentinel: the name of the monitored master. Setting the sentinel fields means Redis Sentinel: host and port are then unused." } },
      { sentinel_role: { type: "string", one_of: [...SENTINEL_ROLES], description: "Sentinel: which server to use: the master, a replica (slave; read-only: the suite's plugins write) or any." } },
      {
        sentinel_nodes: {
          type: "array",
          len_min: 1,
          description: "Sentinel: the sentinels to ask for the master's address, tried in order.",
          elements: {
            type: "record",
            fields: [
              { host: { type: "string", required: true, default: "127.0.0.1", description: "A sentinel's host name or IP address." } },
              { port: { type: "integer", required: true, default: 6379, between: [0, 65535], description: "That sentinel's port." } },
            ],
          },
        },
      },
      { sentinel_username: { type: "string", referenceable: true, description: "Sentinel ACL user name (Redis 6.2+); unset: the password alone." } },
      { sentinel_password: { type: "string", referenceable: true, encrypted: true, len_min: 0, description: "Sentinel password (AUTH to the sentinels); unset: no AUTH. Never logged." } },
    ],
    entity_checks: [
      { mutually_required: SENTINEL_FIELDS },
      { mutually_exclusive_sets: { set1: SENTINEL_FIELDS, set2: ["cluster_nodes"] } },
      { custom_entity_check: { field_sources: ["cluster_nodes", "database"], fn: clusterDatabase } },
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

export type RedisMode = "standalone" | "cluster" | "sentinel";

/** Which Redis `conf` describes: the schema allows cluster or sentinel fields, never both. */
export function modeOf(this: void, conf: RedisConf): RedisMode {
  if (nonEmptyList(conf.cluster_nodes)) return "cluster";
  if (type(conf.sentinel_master) === "string" && nonEmptyList(conf.sentinel_nodes)) return "sentinel";
  return "standalone";
}

/** "redis HOST:PORT/DB", "redis cluster IP:PORT,…" or "redis sentinel MASTER (role)": for log lines, never a password. */
export function endpointOf(this: void, conf: RedisConf): string {
  const mode = modeOf(conf);
  if (mode === "cluster") {
    const seeds: string[] = [];
    for (const node of conf.cluster_nodes as ClusterNode[]) seeds.push(`${node.ip}:${node.port}`);
    return `redis cluster ${table.concat(seeds, ",")}`;
  }
  if (mode === "sentinel") return `redis sentinel ${conf.sentinel_master as string} (${tostring(conf.sentinel_role)})/${conf.database}`;
  return `redis ${conf.host}:${conf.port}/${conf.database}`;
}

/**
 * A spec's Redis as a parameter: `single` (one redis-server) or `cluster` (3 masters and
 * 3 replicas, started once per spec file however many describe blocks ask for it), so
 * one spec body runs against both (`describe.each(BACKENDS)`). Each gives the
 * `config.redis` fields naming it, and an ioredis client (Redis or Cluster) for the
 * test's own reads and writes, plus what a test needs to look at every node: its
 * masters, summed INFO commandstats, keys by pattern over every master, subscribers
 * over every node. `KRS_REDIS_BACKENDS=single` (or `cluster`) narrows a run to one.
 */
import { Cluster, Redis } from "ioredis";
import { onStop, redisCli, startRedis, startRedisCluster, type RedisClusterSetup, type RedisServer } from "./services.js";

export type BackendKind = "single" | "cluster";

function backendsFromEnv(): BackendKind[] {
  const wanted = process.env.KRS_REDIS_BACKENDS;
  if (wanted === undefined || wanted === "") return ["single", "cluster"];
  const kinds = wanted.split(",").map((k) => k.trim());
  for (const k of kinds) if (k !== "single" && k !== "cluster") throw new Error(`KRS_REDIS_BACKENDS: expected single and/or cluster, got '${k}'`);
  return kinds as BackendKind[];
}

/** The backends every parameterized spec runs on. */
export const BACKENDS: BackendKind[] = backendsFromEnv();

export interface RedisBackend {
  kind: BackendKind;
  /** The `config.redis` fields that name this Redis (spread the test's own next to them). */
  redis: { port: number } | { cluster_nodes: { ip: string; port: number }[] };
  /** For the test's own reads and writes: ioredis routes each command to its slot's master. */
  client: Redis | Cluster;
  /** The one server (single), or the cluster's processes. */
  server?: RedisServer;
  cluster?: RedisClusterSetup;
  /** One client per master (the one server when single), for per-node commands. */
  masters(): Redis[];
  /** Calls of the given commands (INFO commandstats, e.g. "evalsha") summed over the masters. */
  commandCalls(commands: string[]): Promise<number>;
  /** CONFIG RESETSTAT on every master. */
  resetStats(): Promise<void>;
  /** Every key matching `pattern` (SCAN on every master). */
  keys(pattern: string): Promise<string[]>;
  /** PUBSUB NUMSUB of `channel`, summed over every node, replicas included (a cluster forwards PUBLISH to each). */
  subscribers(channel: string): Promise<number>;
}

const started = new Map<string, Promise<RedisBackend>>();

async function scanAll(node: Redis, pattern: string): Promise<string[]> {
  const out: string[] = [];
  let cursor = "0";
  do {
    const [next, batch] = await node.scan(cursor, "MATCH", pattern, "COUNT", 1000);
    out.push(...batch);
    cursor = next;
  } while (cursor !== "0");
  return out;
}

function common(kind: BackendKind, client: Redis | Cluster, masters: () => Redis[], allPorts: () => number[]): Omit<RedisBackend, "redis" | "server" | "cluster"> {
  return {
    kind,
    client,
    masters,
    commandCalls: async (commands) => {
      let total = 0;
      for (const node of masters()) {
        const info = await node.info("commandstats");
        for (const c of commands) {
          const m = new RegExp(`^cmdstat_${c}:calls=(\\d+)`, "m").exec(info);
          if (m !== null) total += Number(m[1]);
        }
      }
      return total;
    },
    resetStats: async () => {
      for (const node of masters()) await node.config("RESETSTAT");
    },
    keys: async (pattern) => (await Promise.all(masters().map((n) => scanAll(n, pattern)))).flat(),
    subscribers: async (channel) => {
      let n = 0;
      for (const port of allPorts()) {
        const reply = await redisCli(["-p", String(port), "pubsub", "numsub", channel]).catch(() => undefined);
        if (reply !== undefined) n += Number(reply.trim().split("\n")[1] ?? 0);
      }
      return n;
    },
  };
}

async function startSingle(extraArgs: string[]): Promise<RedisBackend> {
  const server = await startRedis(extraArgs);
  const client = new Redis({ port: server.port });
  // A spec may stop the server on purpose: its commands fail then, the reconnects need no log.
  client.on("error", () => undefined);
  onStop(async () => client.disconnect());
  return { ...common("single", client, () => [client], () => [server.port]), redis: { port: server.port }, server };
}

async function startCluster(): Promise<RedisBackend> {
  const cluster = await startRedisCluster();
  const client = new Cluster(cluster.seeds.map((s) => ({ host: s.ip, port: s.port })), { maxRedirections: 16 });
  onStop(async () => client.disconnect());
  await new Promise<void>((res, rej) => {
    client.once("ready", () => res());
    client.once("error", rej);
  });
  client.on("error", () => undefined);
  return {
    ...common("cluster", client, () => client.nodes("master"), () => cluster.nodes.map((n) => n.port)),
    redis: { cluster_nodes: cluster.seeds },
    cluster,
  };
}

/**
 * The spec file's Redis of that kind, started on first use and shared by every later
 * call with the same arguments (stopped by stopAll()). `extraArgs` (single only) go to
 * redis-server.
 */
export function redisBackend(kind: BackendKind, extraArgs: string[] = []): Promise<RedisBackend> {
  if (kind === "cluster" && extraArgs.length > 0) throw new Error("redisBackend: extra redis-server args are for a single server");
  const id = `${kind}:${extraArgs.join(" ")}`;
  let backend = started.get(id);
  if (backend === undefined) {
    backend = kind === "single" ? startSingle(extraArgs) : startCluster();
    started.set(id, backend);
    onStop(async () => {
      started.delete(id);
    });
  }
  return backend;
}

/**
 * The krs CLI on a real Redis Cluster (3 masters, 3 replicas) and a real Sentinel setup
 * (master, replica, 3 sentinels), all started here on loopback: a key made with
 * `krs keys create --redis-cluster` authenticates at a gateway on the cluster; `krs
 * inspect` counts the keys of every master; `krs purge` removes one plugin's keys from
 * every master (keys of many slots, no CROSSSLOT) and leaves the others; the same through
 * `--redis-sentinel`; the Redis flags exclude each other in one usage line; `krs doctor
 * --config` reaches a config's cluster and sentinel deployments as the plugins would.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Cluster, Redis } from "ioredis";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { redisFor } from "../../src/cli/redis.js";
import { runKrs } from "../helpers/krs-main.js";
import { freePort, gateway, startRedisCluster, startRedisSentinel, stopAll, tempDir, upstream, type RedisClusterSetup, type RedisSentinelSetup, type TestGateway } from "../helpers/services.js";

let cluster: RedisClusterSetup;
let sentinel: RedisSentinelSetup;
let control: Cluster;
let sentinelControl: Redis;
let gw: TestGateway;
let clusterFlag: string;
let sentinelFlags: string[];

const clusterConf = () => ({ cluster_nodes: cluster.seeds, timeout: 2000 });
const sentinelConf = () => ({ sentinel_master: sentinel.masterName, sentinel_role: "master" as const, sentinel_nodes: sentinel.sentinelNodes, timeout: 2000 });

/** The key `krs keys create` printed last (it is shown once). */
function createdKey(out: string): string {
  return out.trim().split("\n").at(-1)!;
}

const CACHE_ENTRIES = 240;
const cacheKey = (i: number) => `krs:redis-cache:v1:{7.${i.toString(16).padStart(64, "0")}}:entry`;
const usageKey = (i: number) => `krs:redis-usage:v1:{ip:10.0.0.${i}}:d:20261201`;

/** Keys per master whose name starts with `prefix`, by SCAN on each master. */
async function perMaster(prefix: string): Promise<number[]> {
  const counts: number[] = [];
  for (const node of control.nodes("master")) {
    let cursor = "0";
    let n = 0;
    do {
      const [next, keys] = await node.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
      cursor = next;
      n += keys.length;
    } while (cursor !== "0");
    counts.push(n);
  }
  return counts;
}

beforeAll(async () => {
  [cluster, sentinel] = await Promise.all([startRedisCluster(), startRedisSentinel()]);
  control = redisFor(clusterConf()) as Cluster;
  sentinelControl = redisFor(sentinelConf()) as Redis;
  clusterFlag = cluster.seeds.slice(0, 2).map((s) => `${s.ip}:${s.port}`).join(",");
  sentinelFlags = ["--redis-sentinel", sentinel.sentinelNodes.map((n) => `${n.host}:${n.port}`).join(","), "--sentinel-master", sentinel.masterName];
  const up = await upstream();
  gw = await gateway({
    _format_version: "3.0",
    services: [{
      name: "svc",
      url: `http://127.0.0.1:${up.port}/anything`,
      routes: [
        { name: "ckeys", paths: ["/ckeys"], plugins: [{ name: "redis-key-auth", config: { redis: clusterConf() } }] },
        { name: "skeys", paths: ["/skeys"], plugins: [{ name: "redis-key-auth", config: { redis: sentinelConf() } }] },
      ],
    }],
    consumers: [{ username: "alice" }, { username: "bob" }],
  });
}, 60_000);

afterAll(async () => {
  control?.disconnect();
  sentinelControl?.disconnect();
  await stopAll();
});

describe("krs on a Redis Cluster", () => {
  it("a key made with krs keys create --redis-cluster authenticates at a gateway on the cluster, and krs keys revoke ends it", async () => {
    const created = await runKrs("keys", "create", "--consumer", "alice", "--redis-cluster", clusterFlag);
    expect(created.err).toBe("");
    expect(created.code).toBe(0);
    const key = createdKey(created.out);
    expect((await fetch(`${gw.proxyUrl}/ckeys`, { headers: { apikey: key } })).status).toBe(200);
    expect((await fetch(`${gw.proxyUrl}/ckeys`, { headers: { apikey: `${key}x` } })).status).toBe(401);
    const listed = await runKrs("keys", "list", "--json", "--redis-cluster", clusterFlag);
    expect(JSON.parse(listed.out).map((k: { consumer: { username: string } }) => k.consumer.username)).toContain("alice");
    expect((await runKrs("keys", "revoke", key, "--redis-cluster", clusterFlag)).code).toBe(0);
    // The invalidation reaches the gateway's subscriber (PUBLISH on a cluster reaches every node).
    const deadline = Date.now() + 5000;
    let status = 200;
    while (status === 200 && Date.now() < deadline) {
      status = (await fetch(`${gw.proxyUrl}/ckeys`, { headers: { apikey: key } })).status;
      if (status === 200) await new Promise((r) => setTimeout(r, 50));
    }
    expect(status).toBe(401);
  });

  it("krs inspect counts the keys of all 3 masters", async () => {
    const writes: Promise<unknown>[] = Array.from({ length: CACHE_ENTRIES }, (_, i) => control.set(cacheKey(i), "x", "EX", 600));
    writes.push(...Array.from({ length: 30 }, (_, i) => control.hset(usageKey(i), "requests", 1).then(() => control.expire(usageKey(i), 600))));
    await Promise.all(writes);
    const spread = await perMaster("krs:redis-cache:");
    // The test means something only when every master holds some of them.
    expect(spread).toHaveLength(3);
    expect(spread.every((n) => n > 0)).toBe(true);
    const r = await runKrs("inspect", "--json", "--redis-cluster", clusterFlag, "--max-ops-per-sec", "0");
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out);
    const count = (plugin: string, kind: string) => report.kinds.find((k: { plugin: string; kind: string }) => k.plugin === plugin && k.kind === kind)?.count;
    expect(count("redis-cache", "entry")).toBe(CACHE_ENTRIES);
    expect(count("redis-usage", "day")).toBe(30);
    expect(report.complete).toBe(true);
    const dbsizes = await Promise.all(control.nodes("master").map((n) => n.dbsize()));
    expect(report.dbsize).toBe(dbsizes.reduce((a, b) => a + b, 0));
    expect(report.scanned).toBe(report.dbsize);
  });

  it("krs purge --plugin removes that plugin's keys on every master and leaves the others", async () => {
    const dry = await runKrs("purge", "--plugin", "redis-cache", "--dry-run", "--json", "--redis-cluster", clusterFlag, "--max-ops-per-sec", "0", "--batch", "50");
    expect(dry.code).toBe(0);
    expect(JSON.parse(dry.out).total).toBe(CACHE_ENTRIES);
    expect((await perMaster("krs:redis-cache:")).reduce((a, b) => a + b, 0)).toBe(CACHE_ENTRIES);
    const r = await runKrs("purge", "--plugin", "redis-cache", "--json", "--redis-cluster", clusterFlag, "--max-ops-per-sec", "0", "--batch", "50");
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out);
    expect(report.total).toBe(CACHE_ENTRIES);
    expect(report.removed).toEqual({ entry: CACHE_ENTRIES });
    expect(await perMaster("krs:redis-cache:")).toEqual([0, 0, 0]);
    expect((await perMaster("krs:redis-usage:")).reduce((a, b) => a + b, 0)).toBe(30);
  });

  it("the Redis flags exclude each other, in one usage line", async () => {
    for (const argv of [
      ["keys", "list", "--redis-cluster", clusterFlag, ...sentinelFlags],
      ["inspect", "--redis-cluster", clusterFlag, ...sentinelFlags],
    ]) {
      const r = await runKrs(...argv);
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/^krs( inspect)?: --redis-cluster and --redis-sentinel exclude each other: give one$/);
    }
    const noMaster = await runKrs("purge", "--plugin", "redis-cache", "--redis-sentinel", sentinelFlags[1]);
    expect(noMaster.code).toBe(2);
    expect(noMaster.err).toMatch(/--redis-sentinel needs --sentinel-master NAME/);
    const badNode = await runKrs("keys", "list", "--redis-cluster", "127.0.0.1");
    expect(badNode.code).toBe(2);
    expect(badNode.err).toMatch(/--redis-cluster: expected HOST:PORT, got '127\.0\.0\.1'/);
  });
});

describe("krs through Sentinel", () => {
  it("keys create --redis-sentinel writes to the master the gateway's sentinel config resolves; inspect and purge go there too", async () => {
    const created = await runKrs("keys", "create", "--consumer", "bob", ...sentinelFlags);
    expect(created.err).toBe("");
    expect(created.code).toBe(0);
    const key = createdKey(created.out);
    expect((await fetch(`${gw.proxyUrl}/skeys`, { headers: { apikey: key } })).status).toBe(200);
    expect(await sentinelControl.hlen("krs:redis-key-auth:v1:{k}:ids")).toBe(1);
    await Promise.all(Array.from({ length: 20 }, (_, i) => sentinelControl.set(cacheKey(i), "x", "EX", 600)));
    const inspected = JSON.parse((await runKrs("inspect", "--json", ...sentinelFlags, "--max-ops-per-sec", "0")).out);
    expect(inspected.kinds.find((k: { plugin: string; kind: string }) => k.plugin === "redis-cache" && k.kind === "entry")?.count).toBe(20);
    expect(inspected.redis).toBe(`sentinel master ${sentinel.masterName} via ${sentinelFlags[1]}`);
    const purged = await runKrs("purge", "--plugin", "redis-cache", "--json", ...sentinelFlags, "--max-ops-per-sec", "0");
    expect(JSON.parse(purged.out).total).toBe(20);
    expect(await sentinelControl.exists(cacheKey(0))).toBe(0);
    expect(await sentinelControl.hlen("krs:redis-key-auth:v1:{k}:ids")).toBe(1);
  });
});

describe("krs doctor on cluster and sentinel configs", () => {
  it("connects through the plugins' cluster_nodes / sentinel_* fields and checks every master; a dead cluster is an error", async () => {
    const dead = await freePort();
    const config = {
      _format_version: "3.0",
      services: [{
        name: "svc",
        url: "http://127.0.0.1:9/",
        routes: [
          { name: "c", paths: ["/c"], plugins: [{ name: "redis-key-auth", config: { redis: clusterConf() } }] },
          { name: "s", paths: ["/s"], plugins: [{ name: "redis-key-auth", config: { redis: sentinelConf() } }] },
          { name: "d", paths: ["/d"], plugins: [{ name: "redis-key-auth", config: { redis: { cluster_nodes: [{ ip: "127.0.0.1", port: dead }], timeout: 500 } } }] },
        ],
      }],
    };
    const file = join(tempDir("doctor-cluster"), "kong.yml");
    writeFileSync(file, stringify(config));
    const r = await runKrs("doctor", "--config", file, "--json");
    const findings = JSON.parse(r.out).findings as { level: string; message: string }[];
    const of = (re: RegExp) => findings.filter((f) => re.test(f.message));
    expect(of(/route c\): Redis redis-cluster:\/\/.* reachable with its settings/).map((f) => f.level)).toEqual(["ok"]);
    expect(of(new RegExp(`route s\\): Redis redis-sentinel://.*/${sentinel.masterName} reachable with its settings`)).map((f) => f.level)).toEqual(["ok"]);
    expect(of(/route d\): Redis redis-cluster:\/\/127\.0\.0\.1:\d+: could not connect/).map((f) => f.level)).toEqual(["error"]);
    const masterPorts = (await cluster.masterPorts()).sort();
    const versionChecked = of(/^Redis redis-cluster:.*\(master 127\.0\.0\.1:\d+\): version /).map((f) => Number(/:(\d+)\): version/.exec(f.message)![1])).sort();
    expect(versionChecked).toEqual(masterPorts);
    expect(of(new RegExp(`^Redis redis-sentinel://.*\\(master 127\\.0\\.0\\.1:${await sentinel.masterPort()}\\): version `))).toHaveLength(1);
    expect(r.code).toBe(2);
  });
});

describe("the gateway on the cluster and the sentinel", () => {
  it("logs no error while the CLI changed its Redis", () => {
    expect(gw.unexpectedErrors()).toEqual([]);
  });
});

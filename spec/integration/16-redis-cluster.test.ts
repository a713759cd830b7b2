/**
 * The suite on a real Redis Cluster (3 masters, 3 replicas, started here on loopback):
 * the key slot agrees across the Lua client, ioredis and CLUSTER KEYSLOT; the plugins'
 * key behaviours hold on the cluster (rate-limit counters spread over the masters,
 * redis-cache's purge-all; key-auth's revocations, the cache stampede lock and
 * ip-access's list changes on a healthy cluster are in 05-redis-key-auth,
 * 07-redis-cache and 09-redis-ip-access, which run them on both backends; key-auth's
 * again here after a failover); the
 * slots of live counters move mid-traffic (MIGRATING/IMPORTING, MIGRATE, SETSLOT: ASK
 * then MOVED) with no failed request and no over-admission; and a replica takes over a
 * master (CLUSTER FAILOVER, then a killed master) mid-traffic, the gateways recovering
 * without a restart (the time is measured and printed). A hung node opens the circuit
 * breaker of that node only.
 */
import { spawnSync } from "node:child_process";
import { Agent, request as httpRequest } from "node:http";
import { join } from "node:path";
import { Cluster, Redis } from "ioredis";
import calculateSlot from "cluster-key-slot";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { redisFor } from "../../src/cli/redis.js";
import { ROOT, clusterMasters, gateway, getJson, redisCli, startRedisCluster, stopAll, upstream, type RedisClusterSetup, type TestGateway } from "../helpers/services.js";

const agent = new Agent({ keepAlive: true, maxSockets: 256 });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function hit(url: string, headers: Record<string, string> = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers, agent }, (r) => {
      let body = "";
      r.setEncoding("utf8");
      r.on("data", (c: string) => (body += c));
      r.on("end", () => resolve({ status: r.statusCode ?? 0, headers: r.headers, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    if (await check()) return Date.now() - started;
    await sleep(25);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

let cluster: RedisClusterSetup;
let control: Cluster;
let gwA: TestGateway;
let gwB: TestGateway;
let demoHits: () => Promise<Record<string, number>>;
let seq = 0;
const client = () => `c${++seq}-${Date.now()}`;

function redisConf() {
  return { cluster_nodes: cluster.seeds, timeout: 1000 };
}

function limitRoute(name: string, config: Record<string, unknown>) {
  return { name, paths: [`/${name}`], plugins: [{ name: "redis-rate-limit", config: { limit_by: "header", header_name: "X-Client", redis: redisConf(), ...config } }] };
}

beforeAll(async () => {
  cluster = await startRedisCluster();
  control = redisFor(redisConf()) as Cluster;
  const demo = await upstream();
  demoHits = async () => (await (await fetch(`http://127.0.0.1:${demo.port}/__hits`)).json()) as Record<string, number>;
  const url = `http://127.0.0.1:${demo.port}`;
  const config = {
    _format_version: "3.0",
    services: [
      {
        name: "svc",
        url: `${url}/anything`,
        routes: [
          // sync lease (the default) here; the routes below count one script call per request (sync exact)
          limitRoute("exact-sliding", { hour: 37 }),
          limitRoute("exact-fixed", { hour: 37, algorithm: "fixed-window" }),
          limitRoute("moving", { hour: 100000, fault_tolerant: false, sync: "exact" }),
          // A manual failover pauses the old master's writers until the replica is elected
          // (seconds on a loaded machine): a timeout above that lets them wait for the new
          // master instead of failing.
          limitRoute("failover", { hour: 100000, fault_tolerant: false, sync: "exact", redis: { ...redisConf(), timeout: 5000 } }),
          limitRoute("shard", { hour: 100000, sync: "exact", redis: { ...redisConf(), timeout: 300 } }),
          { name: "keys", paths: ["/keys"], plugins: [{ name: "redis-key-auth", config: { cache_ttl: 300, redis: redisConf() } }] },
        ],
      },
      { name: "demo", url, routes: [{ name: "stampede", paths: ["/stampede"], plugins: [{ name: "redis-cache", config: { l1_ttl: 0, redis: redisConf() } }] }] },
    ],
    consumers: [{ username: "alice" }],
  };
  gwA = await gateway(config, { workers: 2 });
  gwB = await gateway(config, { workers: 2 });
}, 90_000);

afterAll(async () => {
  agent.destroy();
  control?.disconnect();
  for (const gw of [gwA, gwB]) {
    // Only the failover tests' failures are expected: each names the failed node.
    if (gw === undefined) continue;
    const unexpected = gw.unexpectedErrors([/circuit open|redis at 127\.0\.0\.1:\d+|subscriber|CLUSTERDOWN|recv\(\) failed \(104: Connection reset by peer\)/]);
    if (unexpected.length > 0) console.log(unexpected.join("\n"));
    expect(unexpected).toEqual([]);
  }
  await stopAll();
});

describe("key slots", () => {
  it("the Lua client's slot (CRC16 of the hash tag) equals ioredis's and CLUSTER KEYSLOT's", async () => {
    const keys = [
      "foo", "", "{", "}", "{}", "{}x", "x{}y", "{a}{b}", "a{b}c{d}", "{{x}}", "{x", "x}", "ü{ä}", "\u00ff\u0000",
      "krs:redis-rate-limit:v1:{3f6c:header:alice}", "krs:redis-key-auth:v1:{k}:ids", "krs:redis-cache:v1:{ns}:generation",
      ...Array.from({ length: 300 }, (_, i) => `krs:redis-cache:v1:{${i}.${"ab".repeat(i % 40)}}:entry`),
      ...Array.from({ length: 100 }, (_, i) => `plain-key-${i * 7919}`),
    ];
    const lua = spawnSync("luajit", ["-e", `
      package.path = ${JSON.stringify(join(ROOT, "kong-plugins", "?.lua"))} .. ";" .. package.path
      local slot = require("krs.redis.slot")
      for line in io.lines() do
        io.write(slot.keySlot((line:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))), "\\n")
      end`], { input: keys.map((k) => Buffer.from(k).toString("hex").replace(/(..)/g, "%$1")).join("\n") + "\n" });
    expect(lua.status, lua.stderr.toString()).toBe(0);
    const luaSlots = lua.stdout.toString().trim().split("\n").map(Number);
    const nodeSlots = keys.map((k) => calculateSlot(k));
    const redisSlots: number[] = [];
    for (const k of keys) redisSlots.push(Number(await control.cluster("KEYSLOT", k)));
    expect(luaSlots).toHaveLength(keys.length);
    expect(luaSlots).toEqual(redisSlots);
    expect(nodeSlots).toEqual(redisSlots);
  });
});

describe("plugins on the cluster", () => {
  // Exactly 37 of 300 across 2 gateways x 2 workers on the cluster, with leases and
  // without: 06-redis-rate-limit, which runs its exactness cases on both backends.
  it("counters of different clients spread over the three masters, each on the master its slot names", async () => {
    const ids = Array.from({ length: 30 }, () => client());
    for (const id of ids) expect((await hit(`${gwA.proxyUrl}/exact-fixed`, { "X-Client": id })).status).toBe(200);
    const masters = await cluster.masterPorts();
    const perMaster = new Map<number, number>();
    for (const port of masters) {
      const keys = (await redisCli(["-p", String(port), "--scan", "--pattern", "krs:redis-rate-limit:*"])).split("\n").filter((k) => ids.some((id) => k.includes(id)));
      perMaster.set(port, keys.length);
      for (const k of keys) {
        const owner = (await redisCli(["-p", String(port), "cluster", "countkeysinslot", String(calculateSlot(k))])).trim();
        expect(Number(owner)).toBeGreaterThan(0);
      }
    }
    expect([...perMaster.values()].reduce((a, b) => a + b, 0)).toBe(ids.length);
    expect([...perMaster.values()].every((n) => n > 0)).toBe(true);
  });

  // The stampede lock on a cluster: 07-redis-cache, which runs it on both backends.
  it("cache: purge-all empties it on every node (the generation is on another slot than the entries)", async () => {
    const path = `/delay/${400 + (Date.now() % 50)}`;
    const first = await hit(`${gwA.proxyUrl}/stampede${path}`);
    expect(first.headers["x-cache-status"]).toBe("Miss");
    const cached = await Promise.all(Array.from({ length: 8 }, (_, i) => hit(`${(i % 2 === 0 ? gwA : gwB).proxyUrl}/stampede${path}`)));
    expect(cached.map((r) => r.headers["x-cache-status"])).toEqual(Array(8).fill("Hit"));
    expect((await demoHits())[path]).toBe(1);
    expect((await fetch(`${gwA.adminUrl}/redis-cache`, { method: "DELETE" })).status).toBe(204);
    // The generation lives on another slot than the entries: both gateways read it in their lookups.
    await sleep(50);
    const after = await Promise.all([hit(`${gwA.proxyUrl}/stampede${path}`), hit(`${gwB.proxyUrl}/stampede${path}`)]);
    expect(after.map((r) => r.status)).toEqual([200, 200]);
    expect((await demoHits())[path]).toBeGreaterThanOrEqual(2);
  });
});

/**
 * Key-auth subscribers over every live node: a worker that subscribed on a master stays on
 * it when it becomes a replica (a cluster forwards PUBLISH to replicas too).
 */
async function invalidationSubscribers(): Promise<number> {
  let n = 0;
  for (const node of cluster.nodes) {
    const reply = await redisCli(["-p", String(node.port), "pubsub", "numsub", "krs:redis-key-auth:v1:invalidations"]).catch(() => undefined);
    if (reply !== undefined) n += Number(reply.trim().split("\n")[1]);
  }
  return n;
}

/** A key created through gwA's Admin API, used on every worker, revoked through gwB's: refused everywhere within a second. */
async function revocationReachesEveryWorker(when: string): Promise<void> {
  const created = await getJson(`${gwA.adminUrl}/redis-key-auth/keys`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ consumer: "alice" }) });
  expect(created.status).toBe(201);
  const { key, id } = created.body as { key: string; id: string };
  const statuses = async (n: number) => (await Promise.all(Array.from({ length: n }, (_, i) => hit(`${(i % 2 === 0 ? gwA : gwB).proxyUrl}/keys`, { apikey: key })))).map((r) => r.status);
  expect(new Set(await statuses(40))).toEqual(new Set([200]));
  expect((await fetch(`${gwB.adminUrl}/redis-key-auth/keys/${id}`, { method: "DELETE" })).status).toBe(204);
  const elapsed = await waitFor("every worker to refuse the revoked key", async () => (await statuses(16)).every((s) => s === 401), 1000);
  console.log(`cluster (${when}): revocation seen by every worker of 2 gateways after ${elapsed} ms`);
  expect(new Set(await statuses(40))).toEqual(new Set([401]));
}

/** The master serving `key`'s slot, and another master. */
async function ownerOf(key: string): Promise<{ from: { port: number; id: string }; to: { port: number; id: string } }> {
  const slot = calculateSlot(key);
  const masters = clusterMasters(await redisCli(["-p", String(cluster.seeds[0].port), "cluster", "nodes"])).filter((m) => m.slots.length > 0);
  const owns = (m: (typeof masters)[number]) => m.slots.some(([a, b]) => slot >= a && slot <= b);
  const from = masters.find(owns)!;
  const to = masters.find((m) => !owns(m))!;
  return { from, to };
}

/** Sends requests one after the other for `client` until `stop()`; collects the statuses. */
function traffic(path: string, id: string, concurrency: number) {
  const statuses: { status: number; at: number; ms: number; body?: string }[] = [];
  let running = true;
  const loops = Array.from({ length: concurrency }, async (_, i) => {
    while (running) {
      const sentAt = Date.now();
      const r = await hit(`${(i % 2 === 0 ? gwA : gwB).proxyUrl}${path}`, { "X-Client": id }).catch((e: Error) => ({ status: 0, headers: {}, body: e.message }));
      statuses.push({ status: r.status, at: Date.now(), ms: Date.now() - sentAt, ...(r.status !== 200 ? { body: r.body } : {}) });
    }
  });
  return {
    statuses,
    stop: async () => {
      running = false;
      await Promise.all(loops);
      return statuses;
    },
  };
}

describe("one hung shard", () => {
  it("opens the circuit of that node only: its clients fail fast after 3 timeouts, the other shards' clients are served by Redis throughout", async () => {
    // Two clients whose counters live on different masters.
    const first = client();
    const firstKey = (await waitForKey(first, "/shard"))!;
    const { from: hung } = await ownerOf(firstKey);
    let other = "";
    for (let i = 0; i < 50 && other === ""; i++) {
      const id = client();
      const key = (await waitForKey(id, "/shard"))!;
      if ((await ownerOf(key)).from.port !== hung.port) other = id;
    }
    expect(other).not.toBe("");
    // CLIENT PAUSE: the node stops answering its clients but not its cluster bus, so no failover starts.
    await redisCli(["-p", String(hung.port), "client", "pause", "3000", "ALL"]);
    const timed = async (id: string) => {
      const started = Date.now();
      const r = await hit(`${gwA.proxyUrl}/shard`, { "X-Client": id });
      return { ms: Date.now() - started, answered: r.headers["x-ratelimit-remaining-hour"] !== undefined, status: r.status };
    };
    const burst = (id: string, n: number) => Promise.all(Array.from({ length: n }, () => timed(id)));
    // Each worker of gwA pays the timeout until it has seen 3 of them: bursts until one
    // is nearly all fast (both circuits open), at most 10.
    // nginx hands connections to workers unevenly: two such rounds in a row, so that one
    // worker's few requests in a round cannot pass for an open circuit.
    const opening: Awaited<ReturnType<typeof timed>>[] = [];
    let quietRounds = 0;
    for (let i = 0; i < 12 && quietRounds < 2; i++) {
      const round = await burst(first, 8);
      opening.push(...round);
      quietRounds = i >= 2 && round.filter((r) => r.ms >= 250).length <= 2 ? quietRounds + 1 : 0;
    }
    // Open: each worker lets one probe through at a time and refuses the rest at once,
    // while the other shards are reached as before.
    const [hungSide, otherSide] = await Promise.all([burst(first, 20), burst(other, 20)]);
    console.log(`hung shard: opening ${opening.map((r) => r.ms).join(",")} ms; open ${hungSide.map((r) => r.ms).join(",")} ms; other shard ${otherSide.map((r) => r.ms).join(",")} ms`);
    // fault_tolerant: every request goes through; only the other shard's carry Redis's answer.
    expect([...opening, ...hungSide].every((r) => r.status === 200 && !r.answered)).toBe(true);
    expect(otherSide.every((r) => r.status === 200 && r.answered)).toBe(true);
    // Without a breaker every one of them waits for the 300 ms timeout (none is fast). With
    // it, each worker lets one probe at a time through (and a new one 100 ms after a probe
    // failed), so a few pay the timeout, more on a loaded machine where the burst lasts
    // longer; most must fail fast.
    expect(hungSide.filter((r) => r.ms < 250).length).toBeGreaterThanOrEqual(12);
    // Once the pause ends, a probe closes the circuit.
    await waitFor("the paused node to answer again", async () => (await timed(first)).answered, 8000);
  }, 30_000);
});

describe("resharding mid-traffic", () => {
  it("the slot of a live counter moves to another master (ASK during the migration, MOVED after): no request fails, no increment is lost or doubled", async () => {
    const id = client();
    const counterKey = (await waitForKey(id, "/moving"))!;
    const slot = calculateSlot(counterKey);
    const { from, to } = await ownerOf(counterKey);
    const askingBefore = await askingCalls(to.port);
    const run = traffic("/moving", id, 6);
    await sleep(150);
    await redisCli(["-p", String(to.port), "cluster", "setslot", String(slot), "importing", from.id]);
    await redisCli(["-p", String(from.port), "cluster", "setslot", String(slot), "migrating", to.id]);
    await sleep(150);
    for (;;) {
      const keys = (await redisCli(["-p", String(from.port), "cluster", "getkeysinslot", String(slot), "100"])).trim().split("\n").filter((k) => k !== "");
      if (keys.length === 0) break;
      await redisCli(["-p", String(from.port), "migrate", "127.0.0.1", String(to.port), "", "0", "5000", "keys", ...keys]);
    }
    await sleep(150);
    for (const port of [to.port, from.port]) await redisCli(["-p", String(port), "cluster", "setslot", String(slot), "node", to.id]);
    await sleep(300);
    const statuses = await run.stop();
    const admitted = statuses.filter((s) => s.status === 200).length;
    const failed = statuses.filter((s) => s.status !== 200);
    console.log(`cluster reshard: ${statuses.length} requests while the counter's slot moved, ${failed.length} failed; counter ${await control.hget(counterKey, "hour:count")} for ${admitted + 1} admitted`);
    expect(failed).toEqual([]);
    expect(statuses.length).toBeGreaterThan(100);
    // Every admitted request counted exactly once, on whichever node the counter was.
    expect(Number(await control.hget(counterKey, "hour:count"))).toBe(admitted + 1);
    expect(Number(await redisCli(["-p", String(to.port), "cluster", "countkeysinslot", String(slot)]))).toBeGreaterThan(0);
    // The gateways followed ASK to the importing node while the key was there and the slot not yet.
    expect(await askingCalls(to.port)).toBeGreaterThan(askingBefore);
  }, 60_000);
});

async function askingCalls(port: number): Promise<number> {
  const m = /cmdstat_asking:calls=(\d+)/.exec(await redisCli(["-p", String(port), "info", "commandstats"]));
  return m ? Number(m[1]) : 0;
}

/** Sends one request for `id` and returns the counter key it created. */
async function waitForKey(id: string, path: string): Promise<string | undefined> {
  expect((await hit(`${gwA.proxyUrl}${path}`, { "X-Client": id })).status).toBe(200);
  for (const port of await cluster.masterPorts()) {
    const keys = (await redisCli(["-p", String(port), "--scan", "--pattern", `krs:redis-rate-limit:*${id}*`])).trim().split("\n").filter((k) => k !== "");
    if (keys.length > 0) return keys[0];
  }
  return undefined;
}

describe("failover mid-traffic", () => {
  it("CLUSTER FAILOVER on the replica of a live counter's master: requests recover without a gateway restart; the counter is kept", async () => {
    const id = client();
    const counterKey = (await waitForKey(id, "/failover"))!;
    const { from } = await ownerOf(counterKey);
    const replicaLine = (await redisCli(["-p", String(from.port), "cluster", "replicas", from.id])).trim().split("\n")[0];
    const replicaPort = Number(/:(\d+)@/.exec(replicaLine)![1]);
    const run = traffic("/failover", id, 4);
    await sleep(300);
    const failoverAt = Date.now();
    await redisCli(["-p", String(replicaPort), "cluster", "failover"]);
    const promotion = await waitFor("the replica to be master", async () => /role:master/.test(await redisCli(["-p", String(replicaPort), "info", "replication"])), 10_000);
    await sleep(700);
    const statuses = await run.stop();
    const failures = statuses.filter((s) => s.status !== 200);
    const lastFailure = failures.length > 0 ? failures[failures.length - 1].at : failoverAt;
    const recovery = Math.max(0, lastFailure - failoverAt);
    const slowest = Math.max(...statuses.filter((s) => s.at >= failoverAt).map((s) => s.ms));
    console.log(`cluster failover (CLUSTER FAILOVER): ${statuses.length} requests, ${failures.length} failed (last ${recovery} ms after the failover started); the slowest request took ${slowest} ms (held while the old master paused its writers); Redis promoted the replica ${promotion} ms after CLUSTER FAILOVER`);
    // A manual failover pauses the old master's writers until the replica has taken over,
    // then answers MOVED: the gateways follow it and no request fails.
    if (failures.length > 0) console.log(gwA.errorLog().concat(gwB.errorLog()).filter((l) => /\[error\]/.test(l)).slice(-6).join("\n"));
    expect(failures).toEqual([]);
    // A manual failover waits for the replica to catch up: no admitted request is lost.
    const count = await control.hget(counterKey, "hour:count");
    const admitted = statuses.filter((s) => s.status === 200).length + 1;
    expect(Number(count)).toBe(admitted);
  }, 60_000);

  it("a master killed mid-traffic: its replica takes over and requests recover without a gateway restart; the writes lost with it are counted", async () => {
    const id = client();
    const counterKey = (await waitForKey(id, "/failover"))!;
    const { from } = await ownerOf(counterKey);
    const node = cluster.nodes.find((n) => n.port === from.port)!;
    const replicaLine = (await redisCli(["-p", String(from.port), "cluster", "replicas", from.id])).trim().split("\n")[0];
    const replicaPort = Number(/:(\d+)@/.exec(replicaLine)![1]);
    const run = traffic("/failover", id, 4);
    await sleep(300);
    const killedAt = Date.now();
    await node.kill();
    // (a) Redis's own part, kill to promotion, polled on one open connection every 10 ms
    // (a redis-cli per poll would blur it by its start-up time).
    const replica = new Redis({ port: replicaPort, maxRetriesPerRequest: 1 });
    let promotedAt = 0;
    const promoted = (async () => {
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline) {
        if (/role:master/.test(await replica.info("replication").catch(() => ""))) return (promotedAt = Date.now());
        await sleep(10);
      }
      throw new Error("the replica was not promoted within 20 s");
    })();
    promoted.catch(() => undefined);
    await waitFor("requests to succeed again", async () => {
      const recent = run.statuses.filter((s) => s.at > Date.now() - 300);
      return Date.now() - killedAt > 500 && recent.length > 5 && recent.every((s) => s.status === 200);
    }, 20_000);
    // Traffic goes on a little: every request sent from now on must succeed.
    const recoveredAt = Date.now();
    await sleep(300);
    const statuses = await run.stop();
    await promoted;
    replica.disconnect();
    const failures = statuses.filter((s) => s.status !== 200);
    const lastFailure = failures.length > 0 ? failures[failures.length - 1].at : killedAt;
    const recovery = lastFailure - killedAt;
    const afterPromotion = lastFailure - promotedAt;
    const admitted = statuses.filter((s) => s.status === 200).length + 1;
    const counted = Number(await control.hget(counterKey, "hour:count"));
    // cluster-node-timeout is 1000 ms here (the spec's setting, not lowered to meet the
    // < 2 s goal): Redis needs it to mark the master failed, then 500-1000 ms of election
    // delay of its own before the replica takes over.
    console.log(`cluster failover (master killed, cluster-node-timeout 1000 ms, not lowered): ${failures.length} of ${statuses.length} requests failed; end to end ${recovery} ms = (a) kill to Redis's promotion of the replica ${promotedAt - killedAt} ms + (b) promotion to the gateways answering again ${afterPromotion} ms (negative: within the 10 ms poll of the promotion); counter ${counted} for ${admitted} admitted (${admitted - counted} increments lost with the master: what a limit can over-admit by)`);
    const sentAfter = statuses.filter((s) => s.at - s.ms >= recoveredAt);
    expect(sentAfter.length).toBeGreaterThan(5);
    expect(sentAfter.filter((s) => s.status !== 200)).toEqual([]);
    // (b) is the gateways' part: a failed node marks the slot map stale and the next call
    // reads it again (at most every 100 ms per worker), so they follow a promotion within a
    // few calls, not a periodic refresh later. 1.5 s of margin for a loaded machine.
    expect(afterPromotion).toBeLessThan(1500);
    // A request that failed may still have been counted: its script ran (and replicated)
    // before the master died or its reply timed out. Nothing else adds to the counter.
    expect(counted).toBeLessThanOrEqual(admitted + failures.length);
    // The workers that listened on the killed node subscribed again on the live ones:
    // revocations still reach every worker.
    await waitFor("the 4 workers subscribed again", async () => (await invalidationSubscribers()) >= 4, 15_000);
    await revocationReachesEveryWorker("after a failover");
    await node.restart();
    await cluster.waitHealthy();
  }, 60_000);
});

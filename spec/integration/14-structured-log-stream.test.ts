/**
 * structured-log's Redis Stream sink shared by 2 gateways x 2 workers: every request that
 * got an answer is in the stream exactly once (no loss, no duplicate) at a steady rate
 * below the queue bound, including across an nginx reload (SIGHUP) of one gateway in the
 * middle, whose old workers flush their queues as they exit (flush_interval 1 s: a
 * worker that did not would lose up to a second of lines). Also the Redis commands per
 * request (INFO commandstats): XADDs in batches, never one round trip per request. The
 * same body on one Redis and on a Redis Cluster (spec/helpers/backends.ts).
 */
import { readFileSync } from "node:fs";
import { Agent, request as httpRequest } from "node:http";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BACKENDS, redisBackend, type RedisBackend } from "../helpers/backends.js";
import { gateway, startRedis, startRedisSentinel, stopAll, upstream, type TestGateway } from "../helpers/services.js";

const STREAM = "sl-cluster";
const STREAM_KEY = `krs:structured-log:v1:{${STREAM}}:stream`;

let backend: RedisBackend;
const gateways: TestGateway[] = [];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One GET; resolves with the X-Kong-Request-Id of a 200, undefined when the connection failed (a reload closing it). */
function hit(agent: Agent, base: string, path: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const req = httpRequest(`${base}${path}`, { agent }, (r) => {
      r.resume();
      r.on("end", () => resolve(r.statusCode === 200 ? String(r.headers["x-kong-request-id"]) : undefined));
      r.on("error", () => resolve(undefined));
    });
    req.on("error", () => resolve(undefined));
    req.end();
  });
}

async function streamIds(): Promise<string[]> {
  const entries = await backend.client.xrange(STREAM_KEY, "-", "+");
  return entries.map(([, fields]) => JSON.parse(fields[1]).request_id as string);
}

const commandCalls = (name: string) => backend.commandCalls([name]);

afterAll(async () => {
  await stopAll();
});

describe.each(BACKENDS)("2 gateways x 2 workers, one stream (%s redis)", (kind) => {
  beforeAll(async () => {
    backend = await redisBackend(kind);
    const up = await upstream();
    const config = {
      _format_version: "3.0",
      services: [{ name: "svc", url: `http://127.0.0.1:${up.port}`, routes: [{ name: "r", paths: ["/"] }] }],
      plugins: [{ name: "structured-log", config: { sink: "redis-stream", stream_key: STREAM, flush_interval: 1, max_queue: 10000, redis: backend.redis } }],
    };
    gateways.length = 0;
    for (let i = 0; i < 2; i++) gateways.push(await gateway(config, { workers: 2 }));
  }, 90_000);

  afterAll(async () => {
    await Promise.all(gateways.map((gw) => gw.stop()));
  });

  it("every answered request exactly once, across a reload of one gateway in the middle", async () => {
    await backend.resetStats();
    const agent = new Agent({ keepAlive: true, maxSockets: 8 });
    const answered: string[] = [];
    const TOTAL = 600;
    const CONCURRENCY = 8;
    let sent = 0;
    let reloaded = false;
    const worker = async () => {
      while (sent < TOTAL) {
        const n = sent++;
        if (n === TOTAL / 2 && !reloaded) {
          reloaded = true;
          const pid = Number(readFileSync(join(gateways[0].prefix, "logs", "nginx.pid"), "utf8").trim());
          process.kill(pid, "SIGHUP");
        }
        const id = await hit(agent, gateways[n % 2].proxyUrl, `/anything?n=${n}`);
        if (id !== undefined) answered.push(id);
        // A steady rate: well below what a worker's queue (10,000) holds per flush.
        if (n % CONCURRENCY === 0) await sleep(5);
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    agent.destroy();
    expect(answered.length).toBeGreaterThan(TOTAL * 0.9);

    let ids: string[] = [];
    for (let i = 0; i < 100; i++) {
      ids = await streamIds();
      if (answered.every((id) => ids.includes(id))) break;
      await sleep(100);
    }
    // Lines still queued in a live worker wait at most flush_interval (1 s).
    await sleep(1200);
    ids = await streamIds();
    const missing = answered.filter((id) => !ids.includes(id));
    expect(missing).toEqual([]);
    expect(new Set(ids).size).toBe(ids.length);
    // Requests the client saw fail may still have been logged (nginx answered, the
    // connection broke): nothing else is in the stream.
    expect(ids.length).toBeLessThanOrEqual(TOTAL);
    const reloadedWorkers = gateways[0].errorLog().filter((l) => /signal 1 \(SIGHUP\) received|reconfiguring/.test(l));
    expect(reloadedWorkers.length).toBeGreaterThan(0);

    // Batched: far fewer pipelines than requests (one XADD per line, one EXPIRE per batch).
    const xadds = await commandCalls("xadd");
    const expires = await commandCalls("expire");
    expect(xadds).toBe(ids.length);
    expect(expires).toBeLessThan(ids.length / 2);
    // The batch's script renews the stream's lifetime.
    expect(await backend.client.ttl(STREAM_KEY)).toBeGreaterThan(0);
    for (const gw of gateways) expect(gw.unexpectedErrors()).toEqual([]);
  }, 60_000);
});

describe("two Redis deployments behind the same host:port field", () => {
  it("each instance's lines go to its own deployment (a Sentinel config whose unused host/port equal a standalone's)", async () => {
    const standalone = await startRedis();
    const sentinel = await startRedisSentinel("sl-master");
    const up = await upstream();
    const stream = "sl-split";
    const logTo = (redis: object) => [{ name: "structured-log", config: { sink: "redis-stream", stream_key: stream, flush_interval: 0.05, redis } }];
    const gw = await gateway({
      _format_version: "3.0",
      services: [{
        name: "svc",
        url: `http://127.0.0.1:${up.port}`,
        routes: [
          { name: "plain", paths: ["/plain"], plugins: logTo({ port: standalone.port }) },
          {
            name: "sentinel",
            paths: ["/sentinel"],
            // host/port are unused in Sentinel mode; an operator may leave any value there.
            plugins: logTo({ port: standalone.port, sentinel_master: sentinel.masterName, sentinel_role: "master", sentinel_nodes: sentinel.sentinelNodes }),
          },
        ],
      }],
    }, { workers: 1 });
    const agent = new Agent({ keepAlive: true });
    const sent = { plain: [] as string[], sentinel: [] as string[] };
    for (let n = 0; n < 6; n++) {
      const route = n % 2 === 0 ? "plain" : "sentinel";
      const id = await hit(agent, gw.proxyUrl, `/${route}/anything?n=${n}`);
      expect(id).toBeDefined();
      sent[route].push(id!);
    }
    agent.destroy();
    const plain = new Redis({ port: standalone.port, lazyConnect: true });
    const master = new Redis({ port: await sentinel.masterPort(), lazyConnect: true });
    await plain.connect();
    await master.connect();
    const key = `krs:structured-log:v1:{${stream}}:stream`;
    const idsIn = async (r: Redis) => (await r.xrange(key, "-", "+")).map(([, f]) => JSON.parse(f[1]).request_id as string).sort();
    let got = { plain: [] as string[], sentinel: [] as string[] };
    for (let i = 0; i < 60 && got.plain.length + got.sentinel.length < 6; i++) {
      await sleep(100);
      got = { plain: await idsIn(plain), sentinel: await idsIn(master) };
    }
    plain.disconnect();
    master.disconnect();
    expect(got.plain).toEqual(sent.plain.sort());
    expect(got.sentinel).toEqual(sent.sentinel.sort());
  }, 60_000);
});

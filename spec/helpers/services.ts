/**
 * Real services for the integration specs, each on a free loopback port and stopped by
 * `stopAll()` (call it in afterAll): redis-server, the demo upstream, the local gateway.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { stringify as toYaml } from "yaml";
import { startGateway, stopGateway } from "../../src/cli/gateway.js";
import { startUpstream, type UpstreamServer } from "../../src/cli/upstream.js";

export const ROOT = resolve(import.meta.dirname, "..", "..");
/** Test-only plugins (spec/fixtures/lua/kong/plugins/*), never shipped. */
export const FIXTURE_PLUGINS = ["krs-test-first", "krs-test-second", "krs-test-auth", "krs-test-redis"];
export const FIXTURE_LUA_PATH = join(ROOT, "spec", "fixtures", "lua", "?.lua");

const stops: (() => Promise<void>)[] = [];

/** Runs `stop` in stopAll() (last registered, first run): for what a helper builds on these services. */
export function onStop(stop: () => Promise<void>): void {
  stops.push(stop);
}

export async function stopAll(): Promise<void> {
  while (stops.length > 0) await stops.pop()!().catch(() => undefined);
}

/**
 * A port on 127.0.0.1 that is free now, for a server a test is about to start. Picked at
 * random below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768+ by
 * default), where the outgoing connections of the tests, the gateways and Redis take their
 * source ports: a port the kernel hands out with listen(0) comes from that range, and on a
 * busy machine an outgoing connection could take it between this check and the server's
 * bind (a gateway that "did not answer"). Two test files picking the same random port at
 * the same moment is the remaining, far smaller, chance.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = PORT_LOW + Math.floor(Math.random() * (ephemeralLow() - PORT_LOW));
    if (handedOut.has(port)) continue;
    if (await canListen(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no free port found in ${PORT_LOW}..${ephemeralLow() - 1}`);
}

const PORT_LOW = 20000;
/** Ports this process handed out already (its servers may not have bound them yet). */
const handedOut = new Set<number>();
let ephemeralStart: number | undefined;

function ephemeralLow(): number {
  if (ephemeralStart === undefined) {
    let low = 32768;
    try {
      const first = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
      if (Number.isInteger(first) && first > PORT_LOW + 1000) low = first;
    } catch {
      // not Linux: keep the IANA default's start
    }
    ephemeralStart = low;
  }
  return ephemeralStart;
}

function canListen(port: number): Promise<boolean> {
  return new Promise((res) => {
    const srv = createServer();
    srv.once("error", () => res(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => res(true)));
  });
}

export function tempDir(label: string): string {
  const dir = mkdtempSync(join(tmpdir(), `krs-${label}-`));
  stops.push(async () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// ---------------------------------------------------------------- redis

export interface RedisServer {
  port: number;
  process: ChildProcess;
  stop(): Promise<void>;
}

/** Starts redis-server with no persistence; extra args are passed through (e.g. --requirepass). */
export async function startRedis(extraArgs: string[] = [], fixedPort?: number): Promise<RedisServer> {
  const port = fixedPort ?? (await freePort());
  const dir = tempDir("redis");
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, ...extraArgs], { stdio: "ignore" });
  const stop = () => new Promise<void>((res) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return res();
    proc.once("exit", () => res());
    proc.kill("SIGKILL");
  });
  stops.push(stop);
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (await canConnect(port)) return { port, process: proc, stop };
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`redis-server did not start on ${port}`);
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      res(true);
    });
    s.once("error", () => res(false));
  });
}

// ---------------------------------------------------------------- upstream

export async function upstream(): Promise<UpstreamServer> {
  const server = await startUpstream({ host: "127.0.0.1", port: 0 });
  stops.push(() => server.close());
  return server;
}

// ---------------------------------------------------------------- gateway

export interface TestGateway {
  proxyUrl: string;
  adminUrl: string;
  prefix: string;
  /** Every line of the gateway's error log so far. */
  errorLog(): string[];
  /** [error]/[alert]/[crit]/[emerg] lines not matched by an expected pattern. */
  unexpectedErrors(expected?: RegExp[]): string[];
  stop(): Promise<void>;
}

export interface GatewayOptions {
  workers?: number;
  plugins?: string[];
  logLevel?: string;
  /** PEM bundle for cosocket TLS verification (KONG_LUA_SSL_TRUSTED_CERTIFICATE). */
  trustedCertificate?: string;
  /** KONG_TRUSTED_IPS, KONG_REAL_IP_HEADER, KONG_REAL_IP_RECURSIVE. */
  trustedIps?: string;
  realIpHeader?: string;
  realIpRecursive?: string;
  /** Real Kong only: run it on Postgres (Admin API writes) instead of DB-less. The local gateway always takes writes. */
  database?: boolean;
}

/** `npm run test:kong` sets KRS_TARGET=kong: gateway() then starts real Kong (spec/kong/target.ts). */
export const ON_KONG = process.env.KRS_TARGET === "kong";

/** Starts a local gateway with a declarative config given as an object (written as YAML). */
export async function gateway(config: object, opts: GatewayOptions = {}): Promise<TestGateway> {
  const prefix = tempDir("gw");
  const file = join(prefix, "kong.yml");
  writeFileSync(file, toYaml(config));
  if (ON_KONG) {
    const { kongGateway } = await import("../kong/target.js");
    const kong = await kongGateway(file, prefix, opts, FIXTURE_PLUGINS, join(ROOT, "spec", "fixtures", "lua"));
    stops.push(kong.stop);
    return kong;
  }
  const [proxyPort, adminPort] = [await freePort(), await freePort()];
  const gw = await startGateway({
    config: file,
    prefix,
    proxy: `127.0.0.1:${proxyPort}`,
    admin: `127.0.0.1:${adminPort}`,
    workers: opts.workers ?? 2,
    plugins: ["bundled", ...(opts.plugins ?? FIXTURE_PLUGINS)].join(","),
    luaPackagePath: FIXTURE_LUA_PATH,
    logLevel: opts.logLevel ?? "notice",
    trustedCertificate: opts.trustedCertificate,
    trustedIps: opts.trustedIps,
    realIpHeader: opts.realIpHeader,
    realIpRecursive: opts.realIpRecursive,
  });
  const stop = async () => {
    await stopGateway(prefix);
  };
  stops.push(stop);
  const errorLog = () => readFileSync(join(prefix, "logs", "error.log"), "utf8").split("\n").filter((l) => l !== "");
  return {
    proxyUrl: gw.proxyUrl,
    adminUrl: gw.adminUrl,
    prefix,
    errorLog,
    unexpectedErrors: (expected = []) => errorLog().filter((l) => /\[(error|alert|crit|emerg)\]/.test(l) && !expected.some((re) => re.test(l))),
    stop,
  };
}

/** The service entry for the demo upstream. */
export function serviceFor(up: UpstreamServer, name = "svc"): { name: string; url: string } {
  return { name, url: `http://127.0.0.1:${up.port}` };
}

export async function getJson(url: string, init?: RequestInit): Promise<{ status: number; headers: Headers; body: any }> {
  const res = await fetch(url, init);
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, headers: res.headers, body };
}

/** fetch() will not send a custom Host header; node:http will. */
export function requestWithHost(url: string, host: string): Promise<{ status: number; body: string }> {
  return new Promise((res, rej) => {
    const req = httpRequest(url, { headers: { host } }, (r) => {
      let body = "";
      r.setEncoding("utf8");
      r.on("data", (c: string) => (body += c));
      r.on("end", () => res({ status: r.statusCode ?? 0, body }));
    });
    req.on("error", rej);
    req.end();
  });
}

// ---------------------------------------------------------------- redis cluster and sentinel

/** One redis-server of a cluster or sentinel setup, which a test may kill and start again. */
export interface RedisNode {
  port: number;
  /** Kills it (SIGKILL: no goodbye to its peers). */
  kill(): Promise<void>;
  /** Starts it again on the same port, with the same files (its cluster config survives). */
  restart(): Promise<void>;
}

function spawnRedis(args: string[]): { proc: () => ChildProcess; start: () => void; kill: () => Promise<void> } {
  let proc: ChildProcess | undefined;
  const kill = () => new Promise<void>((res) => {
    const p = proc;
    if (p === undefined || p.exitCode !== null || p.signalCode !== null) return res();
    p.once("exit", () => res());
    p.kill("SIGKILL");
  });
  stops.push(kill);
  return { proc: () => proc!, start: () => (proc = spawn("redis-server", args, { stdio: "ignore" })), kill };
}

async function waitForPort(port: number, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (await canConnect(port)) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${what} did not start on ${port}`);
}

/** A free port whose cluster bus port (+10000) is free too. */
async function freeClusterPort(taken: Set<number>): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = await freePort();
    if (port > 55000 || taken.has(port) || taken.has(port + 10000) || taken.has(port - 10000)) continue;
    if (!(await portFree(port + 10000))) continue;
    taken.add(port);
    return port;
  }
  throw new Error("no free port pair for a cluster node");
}

function portFree(port: number): Promise<boolean> {
  return new Promise((res) => {
    const srv = createServer();
    srv.once("error", () => res(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => res(true)));
  });
}

/** Runs redis-cli with `args`; resolves with its stdout, rejects on a non-zero exit. */
export function redisCli(args: string[], timeoutMs = 30000): Promise<string> {
  return new Promise((res, rej) => {
    const proc = spawn("redis-cli", args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    proc.stdout!.on("data", (c: Buffer) => (out += c.toString()));
    proc.stderr!.on("data", (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
    proc.once("exit", (code) => {
      clearTimeout(timer);
      if (code === 0) res(out);
      else rej(new Error(`redis-cli ${args.join(" ")} exited ${code}: ${err || out}`));
    });
  });
}

/** The live masters in a CLUSTER NODES reply: id, port and slot ranges ([first, last]). */
export function clusterMasters(nodes: string): { id: string; port: number; slots: [number, number][] }[] {
  return nodes.trim().split("\n").map((l) => l.split(" ")).filter((f) => f.length >= 8 && f[2].split(",").includes("master") && !/fail/.test(f[2])).map((f) => ({
    id: f[0],
    port: Number(/:(\d+)@/.exec(f[1])![1]),
    slots: f.slice(8).filter((r) => !r.startsWith("[")).map((r) => { const [a, b] = r.split("-").map(Number); return [a, b ?? a] as [number, number]; }),
  }));
}

export interface RedisClusterSetup {
  nodes: RedisNode[];
  /** `config.redis.cluster_nodes` for this cluster. */
  seeds: { ip: string; port: number }[];
  /** Ports of the current masters, from CLUSTER NODES. */
  masterPorts(): Promise<number[]>;
  /** Waits until every live node says cluster_state:ok and agrees on the slots, and every replica is in sync. */
  waitHealthy(timeoutMs?: number): Promise<void>;
}

/**
 * A Redis Cluster of 3 masters and 3 replicas on free loopback ports
 * (`redis-server --cluster-enabled yes` × 6, `redis-cli --cluster create … --cluster-replicas 1`),
 * with a short node timeout so a failover takes about a second.
 */
export async function startRedisCluster(nodeTimeoutMs = 1000): Promise<RedisClusterSetup> {
  const taken = new Set<number>();
  const nodes: RedisNode[] = [];
  for (let i = 0; i < 6; i++) {
    const port = await freeClusterPort(taken);
    const dir = tempDir(`cluster-${port}`);
    const proc = spawnRedis(["--port", String(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file", join(dir, "nodes.conf"),
      "--cluster-node-timeout", String(nodeTimeoutMs), "--save", "", "--appendonly", "no", "--dir", dir]);
    proc.start();
    nodes.push({
      port,
      kill: proc.kill,
      restart: async () => {
        proc.start();
        await waitForPort(port, "redis cluster node");
      },
    });
  }
  for (const node of nodes) await waitForPort(node.port, "redis cluster node");
  await redisCli(["--cluster", "create", ...nodes.map((n) => `127.0.0.1:${n.port}`), "--cluster-replicas", "1", "--cluster-yes"]);
  const setup: RedisClusterSetup = {
    nodes,
    seeds: nodes.slice(0, 3).map((n) => ({ ip: "127.0.0.1", port: n.port })),
    masterPorts: async () => {
      for (const node of nodes) {
        const out = await redisCli(["-p", String(node.port), "cluster", "nodes"]).catch(() => undefined);
        if (out === undefined) continue;
        return clusterMasters(out).filter((m) => m.slots.length > 0).map((m) => m.port);
      }
      throw new Error("no cluster node answers");
    },
    waitHealthy: async (timeoutMs = 20000) => {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        const infos = await Promise.all(nodes.map((n) => redisCli(["-p", String(n.port), "cluster", "info"]).catch(() => "down")));
        const live = infos.filter((i) => i !== "down");
        // A replica still loading its first sync cannot take over: wait for every link.
        const links = await Promise.all(nodes.map((n, j) => infos[j] === "down" ? "" : redisCli(["-p", String(n.port), "info", "replication"]).catch(() => "")));
        const synced = links.every((l) => !/role:slave/.test(l) || /master_link_status:up/.test(l));
        if (synced && live.length > 0 && live.every((i) => /cluster_state:ok/.test(i) && /cluster_slots_ok:16384/.test(i))) {
          const check = await redisCli(["--cluster", "check", `127.0.0.1:${nodes.find((_, j) => infos[j] !== "down")!.port}`]).catch(() => "");
          if (/All 16384 slots covered/.test(check) && !/\[WARNING\]|\[ERR\]/.test(check)) return;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error("the redis cluster did not become healthy");
    },
  };
  await setup.waitHealthy();
  return setup;
}

export interface RedisSentinelSetup {
  masterName: string;
  /** [0] is the initial master, [1] its replica. */
  servers: RedisNode[];
  sentinels: RedisNode[];
  /** `config.redis.sentinel_nodes` for this setup. */
  sentinelNodes: { host: string; port: number }[];
  /** The master's port as the sentinels see it now. */
  masterPort(): Promise<number>;
}

/** A master, one replica and 3 sentinels (quorum 2, down after 1 s) on free loopback ports. */
export async function startRedisSentinel(masterName = "krs-master"): Promise<RedisSentinelSetup> {
  const servers: RedisNode[] = [];
  const masterPortNow = await freePort();
  for (let i = 0; i < 2; i++) {
    const port = i === 0 ? masterPortNow : await freePort();
    const dir = tempDir(`sentinel-data-${port}`);
    const replicaOf = i === 0 ? [] : ["--replicaof", "127.0.0.1", String(masterPortNow)];
    const proc = spawnRedis(["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, ...replicaOf]);
    proc.start();
    servers.push({ port, kill: proc.kill, restart: async () => { proc.start(); await waitForPort(port, "redis"); } });
    await waitForPort(port, "redis");
  }
  const sentinels: RedisNode[] = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    const dir = tempDir(`sentinel-${port}`);
    const file = join(dir, "sentinel.conf");
    writeFileSync(file, [
      `port ${port}`, "bind 127.0.0.1", `dir ${dir}`,
      `sentinel monitor ${masterName} 127.0.0.1 ${masterPortNow} 2`,
      `sentinel down-after-milliseconds ${masterName} 1000`,
      `sentinel failover-timeout ${masterName} 5000`,
      `sentinel parallel-syncs ${masterName} 1`, "",
    ].join("\n"));
    const proc = spawnRedis([file, "--sentinel"]);
    proc.start();
    sentinels.push({ port, kill: proc.kill, restart: async () => { proc.start(); await waitForPort(port, "redis sentinel"); } });
    await waitForPort(port, "redis sentinel");
  }
  // Ready once every sentinel knows the replica and the two other sentinels.
  const deadline = Date.now() + 20000;
  for (;;) {
    const states = await Promise.all(sentinels.map((s) => redisCli(["-p", String(s.port), "sentinel", "master", masterName]).catch(() => "")));
    if (states.every((s) => /num-slaves\n1\n/.test(s) && /num-other-sentinels\n2\n/.test(s))) break;
    if (Date.now() > deadline) throw new Error("the sentinels did not discover each other and the replica");
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    masterName,
    servers,
    sentinels,
    sentinelNodes: sentinels.map((s) => ({ host: "127.0.0.1", port: s.port })),
    masterPort: async () => Number((await redisCli(["-p", String(sentinels[0].port), "sentinel", "get-master-addr-by-name", masterName])).trim().split("\n")[1]),
  };
}

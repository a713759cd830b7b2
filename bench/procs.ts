// The processes a benchmark run starts (nginx upstream, redis-server, the gateway) and
// the cleanup that stops every one of them, also on Ctrl-C or an error.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";

/** A failure the harness explains in one message and exits non-zero for. */
export class BenchError extends Error {}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---- cleanup ---------------------------------------------------------------------------

const cleanups: { what: string; fn: () => Promise<void> }[] = [];

export function onCleanup(what: string, fn: () => Promise<void>): void {
  cleanups.push({ what, fn });
}

/** How many cleanups are registered: a mark to pass to runCleanups later. */
export function cleanupMark(): number {
  return cleanups.length;
}

/** Runs the cleanups registered after `mark` (all by default) once, newest first;
 *  failures are reported, not thrown. */
export async function runCleanups(mark = 0): Promise<void> {
  while (cleanups.length > mark) {
    const c = cleanups.pop();
    if (c === undefined) break;
    try {
      await c.fn();
    } catch (e) {
      console.error(`bench: cleanup of ${c.what} failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
}

/** Runs `fn`, then the cleanups it registered (also when it throws): what one scenario
 *  started (its gateway, its redis-server, its Redis Cluster's six nodes) is stopped
 *  before the next scenario runs, so it cannot take CPU from the later measurements. */
export async function withOwnCleanups<R>(fn: () => Promise<R>): Promise<R> {
  const mark = cleanupMark();
  try {
    return await fn();
  } finally {
    await runCleanups(mark);
  }
}

// ---- helpers ---------------------------------------------------------------------------

/** Finds an executable: an explicit path, then the usual place, then $PATH. */
export function findExecutable(name: string, preferred: string[]): string | undefined {
  for (const p of preferred) if (existsSync(p)) return p;
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (dir !== "" && existsSync(path.join(dir, name))) return path.join(dir, name);
  }
  return undefined;
}

/** A free TCP port on 127.0.0.1 (the kernel picks it; we release it right away). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface HttpReply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export function httpRequest(
  url: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string; timeoutMs?: number } = {},
): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? "GET", headers: opts.headers, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on("error", reject);
    });
    req.setTimeout(opts.timeoutMs ?? 5000, () => req.destroy(new Error(`timeout on ${url}`)));
    req.on("error", reject);
    req.end(opts.body);
  });
}

/** Polls until `probe` resolves true, the child exits, or the deadline passes. */
async function waitUntil(
  probe: () => Promise<boolean>,
  timeoutMs: number,
  child?: ChildProcess,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child !== undefined && child.exitCode !== null) return false;
    if (await probe().catch(() => false)) return true;
    await sleep(100);
  }
  return false;
}

/** Stops a child: SIGTERM, then SIGKILL when it has not exited after a grace period. */
async function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.kill("SIGTERM");
  const done = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
  if (!done) {
    child.kill("SIGKILL");
    await exited;
  }
}

function tail(file: string, lines = 20): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}

/** Collects a child's output so a failed start can show it. */
function collect(child: ChildProcess): () => string {
  let out = "";
  child.stdout?.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (out += d.toString()));
  return () => out.trim();
}

// ---- nginx upstream --------------------------------------------------------------------

export function nginxVersion(nginx: string): string {
  const r = spawnSync(nginx, ["-v"], { encoding: "utf8" });
  const m = /nginx version: (\S+)/.exec(`${r.stderr}${r.stdout}`);
  return m?.[1] ?? "unknown";
}

export interface Upstream {
  url: string;
  port: number;
}

/** Starts a separate nginx instance with its own prefix under `dir`, from `template`. */
export async function startNginxUpstream(nginx: string, template: string, dir: string, vars: Record<string, string> = {}): Promise<Upstream> {
  const port = await freePort();
  mkdirSync(path.join(dir, "logs"), { recursive: true });
  mkdirSync(path.join(dir, "tmp"), { recursive: true });
  // When the harness runs as root, nginx's workers run as `nobody`: they must be able to
  // reach the prefix to write the proxy_cache files (the run's temp dir is 0700).
  chmodSync(path.dirname(dir), 0o711);
  let conf = readFileSync(template, "utf8").replaceAll("{{LISTEN}}", `127.0.0.1:${port}`);
  for (const [name, value] of Object.entries(vars)) conf = conf.replaceAll(`{{${name}}}`, value);
  writeFileSync(path.join(dir, "nginx.conf"), conf);

  const child = spawn(nginx, ["-p", dir, "-e", "logs/error.log", "-c", "nginx.conf", "-g", "daemon off;"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output = collect(child);
  onCleanup("nginx upstream", () => stopChild(child));
  const spawnFailed = new Promise<Error>((r) => child.once("error", r));

  const url = `http://127.0.0.1:${port}`;
  const ready = await Promise.race([
    waitUntil(async () => (await httpRequest(`${url}/`, { timeoutMs: 1000 })).status === 200, 10_000, child),
    spawnFailed.then((e) => {
      throw new BenchError(`cannot run ${nginx}: ${e.message}`);
    }),
  ]);
  if (!ready) {
    const log = tail(path.join(dir, "logs", "error.log"));
    throw new BenchError(`the nginx upstream did not start on ${url}\n${output()}\n${log}`.trimEnd());
  }
  return { url, port };
}

// ---- redis-server ----------------------------------------------------------------------

function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect(port, "127.0.0.1");
    let reply = "";
    sock.setTimeout(1000, () => sock.destroy());
    sock.on("connect", () => sock.write("PING\r\n"));
    sock.on("data", (d: Buffer) => {
      reply += d.toString();
      if (reply.includes("\r\n")) {
        sock.end();
        resolve(reply.startsWith("+PONG"));
      }
    });
    sock.on("error", () => resolve(false));
    sock.on("close", () => resolve(false));
  });
}

export async function startRedis(redisServer: string, dir: string): Promise<number> {
  const port = await freePort();
  mkdirSync(dir, { recursive: true });
  const child = spawn(
    redisServer,
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const output = collect(child);
  onCleanup("redis-server", () => stopChild(child));
  const spawnFailed = new Promise<Error>((r) => child.once("error", r));
  const ready = await Promise.race([
    waitUntil(() => redisPing(port), 10_000, child),
    spawnFailed.then((e) => {
      throw new BenchError(`cannot run ${redisServer}: ${e.message}`);
    }),
  ]);
  if (!ready) throw new BenchError(`redis-server did not start on port ${port}\n${output()}`.trimEnd());
  return port;
}

/** A free port whose cluster bus port (+10000) is free too. */
async function freeClusterPort(taken: Set<number>): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = await freePort();
    if (port > 55000 || taken.has(port) || taken.has(port + 10000) || taken.has(port - 10000)) continue;
    const busFree = await new Promise<boolean>((res) => {
      const srv = net.createServer();
      srv.once("error", () => res(false));
      srv.listen(port + 10000, "127.0.0.1", () => srv.close(() => res(true)));
    });
    if (!busFree) continue;
    taken.add(port);
    return port;
  }
  throw new BenchError("no free port pair for a redis cluster node");
}

/** A Redis Cluster of 3 masters and 3 replicas on loopback; returns the nodes (`cluster_nodes`). */
export async function startRedisCluster(redisServer: string, dir: string): Promise<{ ip: string; port: number }[]> {
  const taken = new Set<number>();
  const ports: number[] = [];
  for (let i = 0; i < 6; i++) {
    const port = await freeClusterPort(taken);
    const nodeDir = path.join(dir, String(port));
    mkdirSync(nodeDir, { recursive: true });
    const child = spawn(redisServer, ["--port", String(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file", path.join(nodeDir, "nodes.conf"), "--save", "", "--appendonly", "no", "--dir", nodeDir], { stdio: ["ignore", "pipe", "pipe"] });
    collect(child);
    onCleanup("redis-server (cluster node)", () => stopChild(child));
    if (!(await waitUntil(() => redisPing(port), 10_000, child))) throw new BenchError(`redis cluster node did not start on port ${port}`);
    ports.push(port);
  }
  const created = spawnSync("redis-cli", ["--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`), "--cluster-replicas", "1", "--cluster-yes"], { encoding: "utf8", timeout: 30_000 });
  if (created.status !== 0) throw new BenchError(`redis-cli --cluster create failed: ${created.stderr || created.stdout}`);
  const ready = await waitUntil(async () => ports.every((p) => /cluster_state:ok/.test(spawnSync("redis-cli", ["-p", String(p), "cluster", "info"], { encoding: "utf8" }).stdout ?? "")), 20_000);
  if (!ready) throw new BenchError("the redis cluster did not become healthy");
  return ports.slice(0, 3).map((port) => ({ ip: "127.0.0.1", port }));
}

// ---- the gateway -----------------------------------------------------------------------

export interface GatewayOptions {
  repoRoot: string;
  configFile: string;
  prefix: string;
  workers: number;
}

export interface Gateway {
  proxyUrl: string;
  adminUrl: string;
}

/** The krs CLI script: bin/krs.mjs, or BENCH_KRS (e.g. a stand-in while testing the harness). */
function krsCli(repoRoot: string): string {
  const explicit = process.env.BENCH_KRS;
  return explicit !== undefined && explicit !== "" ? path.resolve(explicit) : path.join(repoRoot, "bin", "krs.mjs");
}

function runCli(repoRoot: string, args: string[], timeoutMs: number): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [krsCli(repoRoot), ...args], {
      cwd: repoRoot,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const output = collect(child);
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      resolve({ code: -1, output: e.message });
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal === "SIGKILL" ? -2 : -1), output: output() });
    });
  });
}

/** Files named *<suffix> under dir, a few levels deep (the gateway's prefix layout is its own). */
function filesEndingIn(dir: string, suffix: string, depth = 3): string[] {
  if (depth < 0 || !existsSync(dir)) return [];
  const found: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) found.push(...filesEndingIn(p, suffix, depth - 1));
    else if (e.name.endsWith(suffix)) found.push(p);
  }
  return found;
}

/** pid files the gateway left under its prefix, for a last-resort stop. */
const pidFiles = (prefix: string): string[] => filesEndingIn(prefix, ".pid");
const logFiles = (prefix: string): string[] => filesEndingIn(prefix, ".log");

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function stopGateway(repoRoot: string, prefix: string): Promise<void> {
  const r = await runCli(repoRoot, ["gateway", "stop", "--prefix", prefix], 30_000);
  // The gateway is ours (its prefix is our temp dir); if `stop` could not end it, end it here.
  const leftovers = pidFiles(prefix)
    .map((f) => Number(readFileSync(f, "utf8").trim()))
    .filter((pid) => Number.isInteger(pid) && pid > 1 && alive(pid));
  for (const pid of leftovers) process.kill(pid, "SIGTERM");
  if (leftovers.length > 0) {
    await sleep(1000);
    for (const pid of leftovers) if (alive(pid)) process.kill(pid, "SIGKILL");
  }
  if (r.code !== 0 && leftovers.length > 0) {
    console.error(`bench: \`krs gateway stop\` failed (${r.output}); stopped pid ${leftovers.join(", ")} directly`);
  }
}

/** Starts the local gateway through its CLI; registers its stop before starting it. */
export async function startGateway(opts: GatewayOptions): Promise<Gateway> {
  const cli = krsCli(opts.repoRoot);
  if (!existsSync(cli)) throw new BenchError(`the gateway CLI ${cli} does not exist`);
  const [proxyPort, adminPort] = [await freePort(), await freePort()];
  mkdirSync(opts.prefix, { recursive: true });
  onCleanup(`gateway (${opts.prefix})`, () => stopGateway(opts.repoRoot, opts.prefix));
  const args = [
    "gateway",
    "start",
    "--config",
    opts.configFile,
    "--prefix",
    opts.prefix,
    "--proxy",
    `127.0.0.1:${proxyPort}`,
    "--admin",
    `127.0.0.1:${adminPort}`,
    "--workers",
    String(opts.workers),
  ];
  const r = await runCli(opts.repoRoot, args, 120_000);
  if (r.code !== 0) {
    const logs = logFiles(opts.prefix)
      .map((f) => ({ f, text: tail(f) }))
      .filter((l) => l.text !== "")
      .map((l) => `--- ${l.f} (last lines)\n${l.text}`);
    throw new BenchError(
      [
        `the gateway did not start (\`krs ${args.join(" ")}\` exited with ${r.code})${r.output === "" ? "" : `:\n${r.output}`}`,
        ...logs,
        process.env.BENCH_KEEP_TMP === "1" ? "" : "(BENCH_KEEP_TMP=1 keeps the config and the gateway prefix)",
      ]
        .filter((l) => l !== "")
        .join("\n"),
    );
  }
  // `start` returns once the gateway answers; this only guards against a CLI that does not wait.
  const proxyUrl = `http://127.0.0.1:${proxyPort}`;
  const answers = await waitUntil(async () => (await httpRequest(`${proxyUrl}/`, { timeoutMs: 1000 })).status > 0, 10_000);
  if (!answers) throw new BenchError(`the gateway started but its proxy ${proxyUrl} does not answer`);
  return { proxyUrl, adminUrl: `http://127.0.0.1:${adminPort}` };
}

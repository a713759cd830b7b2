// `make bench`: starts an nginx upstream, the local gateway (and redis-server when a
// scenario needs it) on free loopback ports, loads each scenario with wrk, compares it
// with its baseline, and writes bench/results/<timestamp>.json and latest.md.
//
//   npx tsx bench/run.ts [--only NAME[,NAME...]] [--duration S] [--warmup S] [--list]
//
// Environment: BENCH_DURATION, BENCH_WARMUP, BENCH_ONLY (same as the flags),
// BENCH_KEEP_TMP=1 keeps the temp dir (configs, logs) for a look afterwards;
// BENCH_WRK, BENCH_NGINX, BENCH_REDIS_SERVER name the tools when not in the usual place;
// BENCH_KRS names the krs CLI script (default bin/krs.mjs).

import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import {
  BenchError,
  findExecutable,
  httpRequest,
  nginxVersion,
  onCleanup,
  runCleanups,
  startGateway,
  startNginxUpstream,
  startRedis,
  startRedisCluster,
  withOwnCleanups,
} from "./procs.js";
import {
  commandDelta,
  compare,
  consoleTable,
  flagsFor,
  NOTE,
  parseCommandStats,
  verdictLines,
  verdicts,
  writeLatest,
  type Report,
  type ScenarioResult,
  type Settings,
} from "./report.js";
import { SCENARIOS, type BenchEnv, type Scenario } from "./scenarios.js";
import { runWrk, stopRunningWrk, wrkRequestScript } from "./wrk.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const BENCH_DIR = path.join(REPO_ROOT, "bench");
const RESULTS_DIR = path.join(BENCH_DIR, "results");
const THREADS = 2;
const CONNECTIONS = 32;
const GATEWAY_WORKERS = 2;

const USAGE = `usage: npx tsx bench/run.ts [--only NAME[,NAME...]] [--duration SECONDS] [--warmup SECONDS] [--list]
  --only      run these scenarios (and their baselines); env BENCH_ONLY
  --duration  seconds of load per scenario (default 10); env BENCH_DURATION
  --warmup    seconds of warm-up before each scenario (default 2); env BENCH_WARMUP
  --list      print the scenarios and exit`;

interface Options {
  only?: string[];
  durationS: number;
  warmupS: number;
  list: boolean;
}

function seconds(value: string, what: string, min: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new BenchError(`${what} must be a whole number of seconds >= ${min}, not "${value}"`);
  return n;
}

function parseOptions(argv: string[]): Options | "help" {
  const env = process.env;
  const opts: Options = {
    durationS: seconds(env.BENCH_DURATION ?? "10", "BENCH_DURATION", 1),
    warmupS: seconds(env.BENCH_WARMUP ?? "2", "BENCH_WARMUP", 0),
    list: false,
  };
  if (env.BENCH_ONLY !== undefined && env.BENCH_ONLY !== "") opts.only = env.BENCH_ONLY.split(",");
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    const eq = arg.indexOf("=");
    const name = eq >= 0 ? arg.slice(0, eq) : arg;
    const value = (): string => {
      const v = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
      if (v === undefined || v === "") throw new BenchError(`${name} needs a value\n${USAGE}`);
      return v;
    };
    switch (name) {
      case "--help":
      case "-h":
        return "help";
      case "--list":
        opts.list = true;
        break;
      case "--only":
        opts.only = value().split(",");
        break;
      case "--duration":
        opts.durationS = seconds(value(), "--duration", 1);
        break;
      case "--warmup":
        opts.warmupS = seconds(value(), "--warmup", 0);
        break;
      default:
        throw new BenchError(`unknown argument: ${arg}\n${USAGE}`);
    }
  }
  return opts;
}

/** The scenarios to run, in list order, with the baselines of the chosen ones added. */
function selectScenarios(only: string[] | undefined): Scenario[] {
  const byName = new Map(SCENARIOS.map((s) => [s.name, s]));
  if (only === undefined) return SCENARIOS;
  const wanted = new Set<string>();
  const add = (name: string): void => {
    const s = byName.get(name);
    if (s === undefined) {
      throw new BenchError(`unknown scenario "${name}"; known: ${SCENARIOS.map((x) => x.name).join(", ")}`);
    }
    if (wanted.has(name)) return;
    wanted.add(name);
    if (s.baseline !== undefined) add(s.baseline);
  };
  for (const name of only) add(name.trim());
  return SCENARIOS.filter((s) => wanted.has(s.name));
}

/** Finds a tool; `BENCH_<NAME>` (e.g. BENCH_NGINX=/opt/nginx/sbin/nginx) names it exactly. */
function requireTool(name: string, preferred: string[], pkg: string): string {
  const envName = `BENCH_${name.toUpperCase().replaceAll("-", "_")}`;
  const explicit = process.env[envName];
  if (explicit !== undefined && explicit !== "") {
    if (!existsSync(explicit)) throw new BenchError(`${envName}=${explicit}: no such file`);
    return explicit;
  }
  const found = findExecutable(name, preferred);
  if (found === undefined) {
    throw new BenchError(
      `${name} is not installed (looked in ${preferred.join(", ")} and $PATH); on Debian/Ubuntu: apt-get install ${pkg}`,
    );
  }
  return found;
}

function wrkVersion(wrk: string): string {
  const r = spawnSync(wrk, ["--version"], { encoding: "utf8" });
  const m = /^wrk (\S+)/m.exec(`${r.stdout}${r.stderr}`);
  return m === null ? "wrk (unknown version)" : `wrk ${m[1]}`;
}

function timestamp(date: Date): string {
  return date.toISOString().replace(/\.\d+Z$/, "Z").replaceAll(":", "-");
}

async function runScenario(
  s: Scenario,
  ctx: { wrk: string; nginx: string; tmp: string; upstreamUrl: string; upstreamPort: number; redisServer: string | undefined; opts: Options },
): Promise<ScenarioResult> {
  const result: ScenarioResult = {
    name: s.name,
    description: s.description,
    target: s.target,
    path: s.path,
    status: "ok",
    flags: [],
    ...(s.baseline !== undefined ? { baseline: s.baseline } : {}),
  };
  const dir = path.join(ctx.tmp, s.name);
  mkdirSync(dir, { recursive: true });
  const env: BenchEnv = { upstreamUrl: ctx.upstreamUrl };
  if (s.needsRedis === true) {
    if (ctx.redisServer === undefined) throw new BenchError("redis-server is needed but was not looked up");
    env.redisPort = await startRedis(ctx.redisServer, path.join(dir, "redis"));
  }
  if (s.needsRedisCluster === true) {
    if (ctx.redisServer === undefined) throw new BenchError("redis-server is needed but was not looked up");
    env.clusterNodes = await startRedisCluster(ctx.redisServer, path.join(dir, "redis-cluster"));
  }

  let baseUrl = ctx.upstreamUrl;
  /** Every node's base URL (more than one with `nodes: 2`). */
  const baseUrls: string[] = [];
  if (s.target === "gateway") {
    const configFile = path.join(dir, "kong.yml");
    writeFileSync(configFile, stringify(s.config(env)));
    for (let node = 0; node < (s.nodes ?? 1); node++) {
      const prefix = path.join(dir, node === 0 ? "gateway" : `gateway-${node + 1}`);
      const gw = await startGateway({ repoRoot: REPO_ROOT, configFile, prefix, workers: GATEWAY_WORKERS });
      baseUrls.push(gw.proxyUrl);
    }
    baseUrl = baseUrls[0]!;
  } else if (s.target === "plain-proxy") {
    const proxy = await startNginxUpstream(ctx.nginx, path.join(BENCH_DIR, "nginx-plain-proxy.conf"), path.join(dir, "plain-proxy"), {
      UPSTREAM: `127.0.0.1:${ctx.upstreamPort}`,
    });
    baseUrl = proxy.url;
  }
  if (s.setup !== undefined) await s.setup(env);

  const startedAt = Date.now();
  const url = `${baseUrl}${s.path}`;
  const expectStatus = s.expectStatus ?? 200;
  const check = await httpRequest(url, {
    method: s.method ?? "GET",
    ...(s.headers !== undefined ? { headers: s.headers } : {}),
    ...(s.body !== undefined ? { body: s.body } : {}),
  }).catch((e: unknown) => e as Error);
  if (check instanceof Error || check.status !== expectStatus) {
    result.status = "failed";
    result.flags.push(
      check instanceof Error
        ? `check request to ${url} failed: ${check.message}`
        : `check request got ${check.status}, expected ${expectStatus}: ${check.body.slice(0, 200).trim()}`,
    );
    if (!(check instanceof Error)) result.checkStatus = check.status;
    return result;
  }
  result.checkStatus = check.status;

  let script: string | undefined;
  if (s.method !== undefined || s.body !== undefined || s.wrkLua !== undefined) {
    script = path.join(dir, "wrk.lua");
    writeFileSync(script, wrkRequestScript(s.method, s.body, s.wrkLua));
  }
  const load = {
    wrk: ctx.wrk,
    url,
    threads: THREADS,
    connections: CONNECTIONS,
    ...(s.headers !== undefined ? { headers: s.headers } : {}),
    ...(script !== undefined ? { script } : {}),
  };
  let measured: Awaited<ReturnType<typeof runWrk>>;
  let admitted = check.status < 300 ? 1 : 0;
  const nodes = baseUrls.length > 1 ? baseUrls : [baseUrl];
  // One wrk per node at the same time, sharing the threads and connections.
  const runLoad = async (durationS: number): Promise<Awaited<ReturnType<typeof runWrk>>> => {
    const runs = await Promise.all(nodes.map((base) => runWrk({
      ...load,
      url: `${base}${s.path}`,
      threads: Math.max(1, Math.floor(THREADS / nodes.length)),
      connections: Math.floor(CONNECTIONS / nodes.length),
      durationS,
    })));
    for (const r of runs) admitted += r.result.requests - r.result.non2xx3xx;
    return runs.length === 1 ? runs[0]! : mergeRuns(runs);
  };
  try {
    if (ctx.opts.warmupS > 0 && s.noWarmup !== true) await runLoad(ctx.opts.warmupS);
    const before = env.redisPort !== undefined ? await commandStats(env.redisPort) : undefined;
    measured = await runLoad(ctx.opts.durationS);
    if (before !== undefined && env.redisPort !== undefined) {
      const delta = commandDelta(before, await commandStats(env.redisPort));
      result.redisCommands = delta;
      const total = Object.values(delta).reduce((a, b) => a + b, 0);
      result.redisCommandsPerRequest = measured.result.requests > 0 ? total / measured.result.requests : 0;
    }
  } catch (e) {
    result.status = "failed";
    result.flags.push(e instanceof Error ? e.message.split("\n")[0] ?? e.message : String(e));
    return result;
  }
  const { raw, result: wrk } = measured;
  result.wrk = wrk;
  result.wrkOutput = raw;
  result.flags.push(...flagsFor(wrk, s.rejectionsExpected === true ? 429 : expectStatus));
  if (s.verify !== undefined) result.flags.push(...(await s.verify(env, { admitted, startedAt, endedAt: Date.now() })));
  if (result.flags.length > 0) result.status = "flagged";
  return result;
}

/** The wrk runs of several nodes at the same time, as one: counts summed, each latency percentile the highest node's. */
function mergeRuns(runs: Awaited<ReturnType<typeof runWrk>>[]): Awaited<ReturnType<typeof runWrk>> {
  const results = runs.map((r) => r.result);
  const sum = (f: (r: (typeof results)[number]) => number) => results.reduce((a, r) => a + f(r), 0);
  const max = (f: (r: (typeof results)[number]) => number) => Math.max(...results.map(f));
  return {
    raw: runs.map((r, i) => `--- node ${i + 1}\n${r.raw}`).join("\n"),
    result: {
      requestsPerSec: sum((r) => r.requestsPerSec),
      requests: sum((r) => r.requests),
      durationS: max((r) => r.durationS),
      latencyMs: {
        avg: max((r) => r.latencyMs.avg),
        p50: max((r) => r.latencyMs.p50),
        p75: max((r) => r.latencyMs.p75),
        p90: max((r) => r.latencyMs.p90),
        p99: max((r) => r.latencyMs.p99),
        max: max((r) => r.latencyMs.max),
      },
      non2xx3xx: sum((r) => r.non2xx3xx),
      socketErrors: {
        connect: sum((r) => r.socketErrors.connect),
        read: sum((r) => r.socketErrors.read),
        write: sum((r) => r.socketErrors.write),
        timeout: sum((r) => r.socketErrors.timeout),
      },
    },
  };
}

/** INFO commandstats of the scenario's redis-server: calls per command so far. */
async function commandStats(port: number): Promise<Record<string, number>> {
  const { Redis } = await import("ioredis");
  const redis = new Redis({ port, lazyConnect: true, enableOfflineQueue: false });
  try {
    await redis.connect();
    return parseCommandStats(await redis.info("commandstats"));
  } finally {
    redis.disconnect();
  }
}

async function main(argv: string[]): Promise<number> {
  const parsed = parseOptions(argv);
  if (parsed === "help") {
    console.log(USAGE);
    return 0;
  }
  const opts = parsed;
  const scenarios = selectScenarios(opts.only);
  if (opts.list) {
    for (const s of SCENARIOS) {
      console.log(`${s.name.padEnd(24)} ${s.description}${s.baseline !== undefined ? ` (baseline: ${s.baseline})` : ""}`);
    }
    return 0;
  }

  const wrk = requireTool("wrk", ["/usr/bin/wrk"], "wrk");
  const nginx = requireTool("nginx", ["/usr/sbin/nginx"], "nginx-extras");
  const redisServer = scenarios.some((s) => s.needsRedis === true || s.needsRedisCluster === true)
    ? requireTool("redis-server", ["/usr/bin/redis-server"], "redis-server")
    : undefined;

  const tmp = mkdtempSync(path.join(os.tmpdir(), "krs-bench-"));
  const keepTmp = process.env.BENCH_KEEP_TMP === "1";
  onCleanup("temp dir", async () => {
    if (keepTmp) console.log(`bench: kept ${tmp}`);
    else rmSync(tmp, { recursive: true, force: true });
  });

  const machine = {
    cores: os.cpus().length,
    cpuModel: os.cpus()[0]?.model.trim() ?? "unknown",
    platform: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    nginx: nginxVersion(nginx),
    wrk: wrkVersion(wrk),
  };
  const settings: Settings = {
    durationS: opts.durationS,
    warmupS: opts.warmupS,
    threads: THREADS,
    connections: CONNECTIONS,
    gatewayWorkers: GATEWAY_WORKERS,
  };
  console.log(
    `bench: ${scenarios.length} scenario(s), ${opts.durationS} s each after ${opts.warmupS} s warm-up; ` +
      `${machine.cores} cores, ${machine.nginx}, ${machine.wrk}`,
  );

  const upstream = await startNginxUpstream(nginx, path.join(BENCH_DIR, "nginx-upstream.conf"), path.join(tmp, "upstream"));
  const ctx = {
    wrk,
    tmp,
    nginx,
    upstreamUrl: upstream.url,
    upstreamPort: upstream.port,
    opts,
    redisServer,
  };

  const date = new Date();
  const results: ScenarioResult[] = [];
  for (const s of scenarios) {
    process.stdout.write(`bench: ${s.name} ... `);
    // A scenario's gateway and Redis processes are its own, stopped before the next one starts.
    const r = await withOwnCleanups(() => runScenario(s, ctx));
    results.push(r);
    console.log(
      r.wrk === undefined
        ? r.flags.join("; ")
        : `${Math.round(r.wrk.requestsPerSec)} req/s, p50 ${r.wrk.latencyMs.p50.toFixed(3)} ms${r.status === "ok" ? "" : ` (${r.status})`}`,
    );
  }
  compare(results);

  const goals = Object.fromEntries(SCENARIOS.map((s) => [s.name, { goal: s.goal, maxRedisPerRequest: s.maxRedisPerRequest }]));
  const verdictList = verdicts(results, goals);
  const report: Report = { date: date.toISOString(), machine, settings, note: NOTE, scenarios: results, verdicts: verdictList };
  mkdirSync(RESULTS_DIR, { recursive: true });
  const jsonFile = path.join(RESULTS_DIR, `${timestamp(date)}.json`);
  writeFileSync(jsonFile, `${JSON.stringify(report, null, 2)}\n`);
  await writeLatest(report, RESULTS_DIR);

  console.log(`\n${consoleTable(results)}\n`);
  if (verdictList.length > 0) console.log(`Goals (issue 15 and earlier; ratios of this run):\n${verdictLines(verdictList).join("\n")}\n`);
  console.log(`${NOTE}\n`);
  console.log(`bench: wrote ${path.relative(process.cwd(), jsonFile)} and ${path.relative(process.cwd(), path.join(RESULTS_DIR, "latest.md"))} (+ latest.svg)`);

  const failed = results.filter((r) => r.status === "failed");
  const flagged = results.filter((r) => r.status === "flagged");
  if (flagged.length > 0) console.warn(`bench: flagged (measured with errors): ${flagged.map((r) => r.name).join(", ")}`);
  if (failed.length > 0) {
    console.error(`bench: failed (not measured): ${failed.map((r) => r.name).join(", ")}`);
    return 1;
  }
  return 0;
}

let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(signal, () => {
    if (interrupted) return;
    interrupted = true;
    console.error(`\nbench: ${signal}, stopping everything it started`);
    stopRunningWrk();
    void runCleanups().finally(() => process.exit(130));
  });
}

let code: number;
try {
  code = await main(process.argv.slice(2));
} catch (e) {
  if (interrupted) {
    // The signal handler reports and exits; this error is only the interrupted work.
  } else if (e instanceof BenchError) {
    console.error(`\nbench: ${e.message}`);
  } else {
    console.error("\nbench: unexpected error:", e);
  }
  code = 1;
}
if (!interrupted) {
  await runCleanups();
  process.exit(code);
}

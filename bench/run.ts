// `make bench`: starts an nginx upstream, the local gateway (and redis-server when a
// scenario needs it) on free loopback ports, loads each scenario with wrk in paired,
// interleaved rounds with its baseline (B S B S ... B, bench/paired.ts), and writes
// bench/results/<timestamp>.json, latest.md and latest.svg.
//
//   npx tsx bench/run.ts [--only NAME[,NAME...]] [--rounds N] [--duration S] [--warmup S] [--list]
//
// Environment: BENCH_ROUNDS, BENCH_DURATION, BENCH_WARMUP, BENCH_ONLY (same as the flags),
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
} from "./procs.js";
import {
  commandDelta,
  compare,
  consoleTable,
  median,
  NOTE,
  parseCommandStats,
  roundRatios,
  verdictLines,
  verdicts,
  writeLatest,
  type Report,
  type ScenarioResult,
  type Settings,
} from "./report.js";
import { plannedLoadSeconds, runAll, type Driver, type Measured, type Started } from "./paired.js";
import { SCENARIOS, type BenchEnv, type Scenario } from "./scenarios.js";
import { runWrk, stopRunningWrk, wrkRequestScript } from "./wrk.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const BENCH_DIR = path.join(REPO_ROOT, "bench");
const RESULTS_DIR = path.join(BENCH_DIR, "results");
const THREADS = 2;
const CONNECTIONS = 32;
const GATEWAY_WORKERS = 2;

const USAGE = `usage: npx tsx bench/run.ts [--only NAME[,NAME...]] [--rounds N] [--duration SECONDS] [--warmup SECONDS] [--list]
  --only      run these scenarios (and their baselines); env BENCH_ONLY
  --rounds    runs of each scenario, each between two runs of its baseline: B S B S ... B;
              the ratio is the median of the rounds' (default 3); env BENCH_ROUNDS
  --duration  seconds of load per measurement, i.e. per run of a scenario or of its
              baseline (default 4); env BENCH_DURATION
  --warmup    seconds of warm-up, once per process (a baseline's: once per run) (default 2); env BENCH_WARMUP
  --list      print the scenarios and exit`;

interface Options {
  only?: string[];
  rounds: number;
  durationS: number;
  warmupS: number;
  list: boolean;
}

function seconds(value: string, what: string, min: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new BenchError(`${what} must be a whole number of seconds >= ${min}, not "${value}"`);
  return n;
}

function count(value: string, what: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new BenchError(`${what} must be a whole number >= 1, not "${value}"`);
  return n;
}

function parseOptions(argv: string[]): Options | "help" {
  const env = process.env;
  const opts: Options = {
    rounds: count(env.BENCH_ROUNDS ?? "3", "BENCH_ROUNDS"),
    durationS: seconds(env.BENCH_DURATION ?? "4", "BENCH_DURATION", 1),
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
      case "--rounds":
        opts.rounds = count(value(), "--rounds");
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

interface Context {
  wrk: string;
  nginx: string;
  tmp: string;
  upstreamUrl: string;
  upstreamPort: number;
  redisServer: string | undefined;
}

/** A scenario's running processes: where wrk sends its load, and what its verify needs. */
interface Target {
  env: BenchEnv;
  dir: string;
  /** Every node's base URL (more than one with `nodes: 2`). */
  nodes: string[];
  /** 2xx responses seen from the check request on, every wrk run of this target included. */
  admitted: number;
  startedAt: number;
}

/** Starts a scenario's processes (each registers its own stop), runs its setup and its check request. */
async function startTarget(s: Scenario, ctx: Context): Promise<Started<Target>> {
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

  const nodes: string[] = [];
  if (s.target === "gateway") {
    const configFile = path.join(dir, "kong.yml");
    writeFileSync(configFile, stringify(s.config(env)));
    for (let node = 0; node < (s.nodes ?? 1); node++) {
      const prefix = path.join(dir, node === 0 ? "gateway" : `gateway-${node + 1}`);
      const gw = await startGateway({ repoRoot: REPO_ROOT, configFile, prefix, workers: GATEWAY_WORKERS });
      nodes.push(gw.proxyUrl);
    }
  } else if (s.target === "plain-proxy") {
    const proxy = await startNginxUpstream(ctx.nginx, path.join(BENCH_DIR, "nginx-plain-proxy.conf"), path.join(dir, "plain-proxy"), {
      UPSTREAM: `127.0.0.1:${ctx.upstreamPort}`,
    });
    nodes.push(proxy.url);
  } else {
    nodes.push(ctx.upstreamUrl);
  }
  if (s.setup !== undefined) await s.setup(env);

  const startedAt = Date.now();
  const url = `${nodes[0]}${s.path}`;
  const expectStatus = s.expectStatus ?? 200;
  const check = await httpRequest(url, {
    method: s.method ?? "GET",
    ...(s.headers !== undefined ? { headers: s.headers } : {}),
    ...(s.body !== undefined ? { body: s.body } : {}),
  }).catch((e: unknown) => e as Error);
  if (check instanceof Error || check.status !== expectStatus) {
    return {
      ok: false,
      flags: [
        check instanceof Error
          ? `check request to ${url} failed: ${check.message}`
          : `check request got ${check.status}, expected ${expectStatus}: ${check.body.slice(0, 200).trim()}`,
      ],
      ...(check instanceof Error ? {} : { checkStatus: check.status }),
    };
  }
  return { ok: true, checkStatus: check.status, target: { env, dir, nodes, admitted: check.status < 300 ? 1 : 0, startedAt } };
}

/** Names every wrk run of the invocation (the scripts' `bench_run`). */
let wrkRuns = 0;

/** One load on every node of the target at the same time (one wrk per node, sharing the threads and connections). */
async function loadTarget(t: Target, s: Scenario, durationS: number, role: "warmup" | "scenario" | "baseline", ctx: Context): Promise<Measured> {
  const run = `r${++wrkRuns}`;
  let script: string | undefined;
  if (s.method !== undefined || s.body !== undefined || s.wrkLua !== undefined) {
    script = path.join(t.dir, `wrk-${run}.lua`);
    writeFileSync(script, wrkRequestScript(s.method, s.body, s.wrkLua, run));
  }
  const countRedis = role === "scenario" && t.env.redisPort !== undefined;
  const before = countRedis ? await commandStats(t.env.redisPort!) : undefined;
  const runs = await Promise.all(t.nodes.map((base) => runWrk({
    wrk: ctx.wrk,
    url: `${base}${s.path}`,
    threads: Math.max(1, Math.floor(THREADS / t.nodes.length)),
    connections: Math.floor(CONNECTIONS / t.nodes.length),
    durationS,
    ...(s.headers !== undefined ? { headers: s.headers } : {}),
    ...(script !== undefined ? { script } : {}),
  })));
  const redisCommands = before !== undefined ? commandDelta(before, await commandStats(t.env.redisPort!)) : undefined;
  for (const r of runs) t.admitted += r.result.requests - r.result.non2xx3xx;
  const merged = runs.length === 1 ? runs[0]! : mergeRuns(runs);
  return { result: merged.result, raw: merged.raw, ...(redisCommands !== undefined ? { redisCommands } : {}) };
}

function benchDriver(ctx: Context): Driver<Target> {
  return {
    start: (s) => startTarget(s, ctx),
    load: (t, s, durationS, role) => loadTarget(t, s, durationS, role, ctx),
    verify: async (t, s) => (s.verify === undefined ? [] : s.verify(t.env, { admitted: t.admitted, startedAt: t.startedAt, endedAt: Date.now() })),
  };
}

/** The console line once a scenario is measured: its median req/s and its ratio with the rounds' spread. */
function progressLine(r: ScenarioResult): string {
  if (r.wrk === undefined) return r.flags.join("; ");
  let ratio = "";
  if (r.rounds !== undefined && r.baselineRounds !== undefined && r.baselineRounds.length === r.rounds.length + 1) {
    const ratios = roundRatios(r.rounds.map((w) => w.requestsPerSec), r.baselineRounds.map((w) => w.requestsPerSec));
    ratio = `, ${median(ratios).toFixed(3)}x ${r.baseline} (rounds ${ratios.map((x) => x.toFixed(3)).join(", ")})`;
  }
  const n = r.rounds?.length ?? 1;
  return `${Math.round(r.wrk.requestsPerSec)} req/s${n > 1 ? ` (median of ${n})` : ""}, p50 ${r.wrk.latencyMs.p50.toFixed(3)} ms${ratio}${r.status === "ok" ? "" : ` (${r.status}: ${r.flags.join("; ")})`}`;
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
      console.log(`${s.name.padEnd(24)} ${s.description}${s.baseline !== undefined ? ` (baseline: ${s.baseline})` : ""}${s.rounds === 1 ? " (1 round)" : ""}`);
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
    rounds: opts.rounds,
    warmupS: opts.warmupS,
    threads: THREADS,
    connections: CONNECTIONS,
    gatewayWorkers: GATEWAY_WORKERS,
  };
  const loadS = plannedLoadSeconds(scenarios, opts);
  console.log(
    `bench: ${scenarios.length} scenario(s), each as B S B S ... B with its baseline: ${opts.rounds} round(s) of ${opts.durationS} s ` +
      `per measurement, one ${opts.warmupS} s warm-up per process (${Math.round(loadS / 6) / 10} min of load, plus start-ups); ` +
      `${machine.cores} cores, ${machine.nginx}, ${machine.wrk}`,
  );

  const upstream = await startNginxUpstream(nginx, path.join(BENCH_DIR, "nginx-upstream.conf"), path.join(tmp, "upstream"));
  const ctx: Context = { wrk, tmp, nginx, upstreamUrl: upstream.url, upstreamPort: upstream.port, redisServer };

  const date = new Date();
  const started = Date.now();
  // A scenario's gateway and Redis processes are its own, stopped before the next one
  // starts; a baseline's stay up until the end (runAll).
  const results = await runAll(scenarios, opts, {
    ...benchDriver(ctx),
    progress: {
      start: (s) => process.stdout.write(`bench: ${s.name} ... `),
      done: (r) => console.log(progressLine(r)),
    },
  });
  compare(results);
  const minutes = (Date.now() - started) / 60_000;

  const goals = Object.fromEntries(SCENARIOS.map((s) => [s.name, { goal: s.goal, maxRedisPerRequest: s.maxRedisPerRequest }]));
  const verdictList = verdicts(results, goals);
  const report: Report = { date: date.toISOString(), machine, settings, note: NOTE, scenarios: results, verdicts: verdictList };
  mkdirSync(RESULTS_DIR, { recursive: true });
  const jsonFile = path.join(RESULTS_DIR, `${timestamp(date)}.json`);
  writeFileSync(jsonFile, `${JSON.stringify(report, null, 2)}\n`);
  await writeLatest(report, RESULTS_DIR);

  console.log(`\n${consoleTable(results)}\n`);
  if (verdictList.length > 0) {
    console.log(`Goals (issue 15 and earlier; the median round ratio of this run, the rounds' min–max in brackets):\n${verdictLines(verdictList).join("\n")}\n`);
  }
  console.log(`${NOTE}\n`);
  console.log(`bench: measured in ${minutes.toFixed(1)} min`);
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

// Instructions per request, counted by valgrind's callgrind: one nginx process (the
// gateway with `master_process off`), keep-alive requests one after another from one
// client, counted after a warm-up. Unlike req/s on a shared 2-core machine this is
// repeatable (the same binary, config and requests give the same count whatever else runs),
// so it is the figure to compare before and after a hot-path change. It counts user-space
// instructions of nginx and its Lua only: no syscalls' kernel time, no wrk, no upstream.
//
//   npx tsx bench/callgrind.ts [--only NAME[,NAME...]] [--requests N] [--warmup N] [--annotate] [--keep DIR]
//
// Scenarios whose requests vary (a wrk Lua script) or that are not served by nginx are left
// out. `--annotate` also prints callgrind_annotate's top functions (inclusive) of each
// scenario; LuaJIT's compiled traces show as `???` there (LuaJIT's own profiler names them).
// `--keep DIR` leaves each scenario's callgrind dump there (DIR/NAME.callgrind.out) for
// callgrind_annotate's exclusive view.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import {
  BenchError,
  findExecutable,
  freePort,
  onCleanup,
  runCleanups,
  startGateway,
  startNginxUpstream,
  startRedis,
  startRedisCluster,
  withOwnCleanups,
} from "./procs.js";
import { SCENARIOS, type BenchEnv, type Scenario } from "./scenarios.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const BENCH_DIR = path.join(REPO_ROOT, "bench");
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Options {
  only?: string[];
  requests: number;
  warmup: number;
  annotate: boolean;
  keep?: string;
}

function parseOptions(argv: string[]): Options {
  const opts: Options = { requests: 2000, warmup: 300, annotate: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    const next = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new BenchError(`${arg} needs a value`);
      return v;
    };
    if (arg === "--only") opts.only = next().split(",").map((s) => s.trim());
    else if (arg === "--requests") opts.requests = Number(next());
    else if (arg === "--warmup") opts.warmup = Number(next());
    else if (arg === "--annotate") opts.annotate = true;
    else if (arg === "--keep") opts.keep = next();
    else throw new BenchError(`unknown argument: ${arg}`);
  }
  if (!Number.isInteger(opts.requests) || opts.requests < 1) throw new BenchError("--requests must be a whole number >= 1");
  if (!Number.isInteger(opts.warmup) || opts.warmup < 0) throw new BenchError("--warmup must be a whole number >= 0");
  return opts;
}

function countable(s: Scenario): boolean {
  return (s.target === "gateway" || s.target === "plain-proxy") && s.wrkLua === undefined;
}

/** The scenarios to count: the chosen ones (all countable by default) with their countable baselines. */
function selectScenarios(only: string[] | undefined): Scenario[] {
  const byName = new Map(SCENARIOS.map((s) => [s.name, s]));
  const wanted = new Set<string>();
  const add = (name: string): void => {
    const s = byName.get(name);
    if (s === undefined) throw new BenchError(`unknown scenario "${name}"`);
    if (!countable(s)) throw new BenchError(`scenario "${name}" cannot be counted (its requests vary, or nginx does not serve it)`);
    wanted.add(name);
    const base = s.baseline !== undefined ? byName.get(s.baseline) : undefined;
    if (base !== undefined && countable(base)) wanted.add(base.name);
  };
  for (const name of only ?? SCENARIOS.filter(countable).map((s) => s.name)) add(name);
  return SCENARIOS.filter((s) => wanted.has(s.name));
}

/** One keep-alive connection, requests strictly one after another. */
async function sendRequests(url: string, s: Scenario, n: number, agent: http.Agent): Promise<number[]> {
  const statuses: number[] = [];
  for (let i = 0; i < n; i++) {
    statuses.push(
      await new Promise<number>((resolve, reject) => {
        const req = http.request(url, { method: s.method ?? "GET", headers: s.headers ?? {}, agent }, (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
        });
        req.on("error", reject);
        req.end(s.body);
      }),
    );
  }
  return statuses;
}

/** Rewrites a rendered nginx.conf so one process serves everything in the foreground. */
function singleProcess(confFile: string): void {
  let conf = readFileSync(confFile, "utf8");
  // One worker's worth of listening sockets too: with `reuseport`, nginx opens one per worker
  // and a single process would never accept on the others.
  conf = conf
    .replace(/^\s*daemon\s+\w+;\s*$/m, "")
    .replace(/^\s*master_process\s+\w+;\s*$/m, "")
    .replace(/^\s*worker_processes\s+\w+;\s*$/m, "worker_processes 1;");
  writeFileSync(confFile, `daemon off;\nmaster_process off;\n${conf}`);
}

async function waitForHttp(url: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new BenchError(`nginx under valgrind exited (${child.exitCode})`);
    const ok = await new Promise<boolean>((resolve) => {
      const req = http.get(url, (res) => {
        res.resume();
        resolve(true);
      });
      req.on("error", () => resolve(false));
      req.setTimeout(2000, () => {
        req.destroy();
        resolve(false);
      });
    });
    if (ok) return;
    await sleep(300);
  }
  throw new BenchError(`nginx under valgrind did not answer on ${url} within ${timeoutMs / 1000} s`);
}

function callgrindControl(args: string[], pid: number): void {
  const r = spawnSync("callgrind_control", [...args, String(pid)], { encoding: "utf8" });
  if (r.status !== 0) throw new BenchError(`callgrind_control ${args.join(" ")} failed: ${r.stderr || r.stdout}`);
}

/** The `summary:`/`totals:` Ir of a callgrind output file. */
function totalInstructions(file: string): number {
  const text = readFileSync(file, "utf8");
  const m = /^(?:summary|totals):\s+(\d+)/m.exec(text);
  if (m === null) throw new BenchError(`no totals in ${file}`);
  return Number(m[1]);
}

interface Counted {
  name: string;
  baseline?: string;
  perRequest: number;
  statuses: string;
  top?: string;
}

async function countScenario(s: Scenario, ctx: { nginx: string; valgrind: string; tmp: string; upstreamUrl: string; upstreamPort: number; redisServer?: string; opts: Options }): Promise<Counted> {
  const dir = path.join(ctx.tmp, s.name);
  mkdirSync(dir, { recursive: true });
  const env: BenchEnv = { upstreamUrl: ctx.upstreamUrl };
  if (s.needsRedis === true) env.redisPort = await startRedis(ctx.redisServer ?? "redis-server", path.join(dir, "redis"));
  if (s.needsRedisCluster === true) env.clusterNodes = await startRedisCluster(ctx.redisServer ?? "redis-server", path.join(dir, "redis-cluster"));

  // Render the config exactly as the bench does, then run that nginx.conf as one process under valgrind.
  let prefix: string;
  let proxyUrl: string;
  if (s.target === "gateway") {
    const configFile = path.join(dir, "kong.yml");
    writeFileSync(configFile, stringify(s.config(env)));
    prefix = path.join(dir, "gateway");
    const gw = await startGateway({ repoRoot: REPO_ROOT, configFile, prefix, workers: 1 });
    proxyUrl = gw.proxyUrl;
    const stop = spawnSync(process.execPath, [path.join(REPO_ROOT, "bin", "krs.mjs"), "gateway", "stop", "--prefix", prefix], { encoding: "utf8" });
    if (stop.status !== 0) throw new BenchError(`krs gateway stop failed: ${stop.stderr}`);
  } else {
    prefix = path.join(dir, "plain-proxy");
    const port = await freePort();
    mkdirSync(path.join(prefix, "logs"), { recursive: true });
    mkdirSync(path.join(prefix, "tmp"), { recursive: true });
    const conf = readFileSync(path.join(BENCH_DIR, "nginx-plain-proxy.conf"), "utf8")
      .replaceAll("{{LISTEN}}", `127.0.0.1:${port}`)
      .replaceAll("{{UPSTREAM}}", `127.0.0.1:${ctx.upstreamPort}`);
    writeFileSync(path.join(prefix, "nginx.conf"), conf);
    proxyUrl = `http://127.0.0.1:${port}`;
  }
  singleProcess(path.join(prefix, "nginx.conf"));
  const outFile = path.join(dir, "callgrind.out");
  const child = spawn(
    ctx.valgrind,
    ["--tool=callgrind", `--callgrind-out-file=${outFile}`, "--dump-instr=no", ctx.nginx, "-p", `${prefix}/`, "-c", "nginx.conf", "-e", "logs/error.log"],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let output = "";
  child.stdout?.on("data", (d: Buffer) => (output += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (output += d.toString()));
  onCleanup(`valgrind nginx (${s.name})`, async () => {
    if (child.exitCode === null) {
      child.kill("SIGTERM");
      await Promise.race([new Promise((r) => child.once("exit", r)), sleep(20_000)]);
      if (child.exitCode === null) child.kill("SIGKILL");
    }
  });
  try {
    await waitForHttp(`${proxyUrl}/`, child, 120_000);
  } catch (e) {
    throw new BenchError(`${(e as Error).message}\n${output.slice(-2000)}`);
  }
  if (s.setup !== undefined) await s.setup(env);

  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const url = `${proxyUrl}${s.path}`;
  await sendRequests(url, s, ctx.opts.warmup, agent);
  const pid = child.pid ?? 0;
  callgrindControl(["--zero"], pid);
  const statuses = await sendRequests(url, s, ctx.opts.requests, agent);
  for (const f of readdirSync(dir)) if (f.startsWith("callgrind.out.")) rmSync(path.join(dir, f));
  callgrindControl(["--dump"], pid);
  agent.destroy();
  const dumps = readdirSync(dir).filter((f) => f.startsWith("callgrind.out."));
  if (dumps.length === 0) throw new BenchError(`callgrind wrote no dump in ${dir}`);
  const dump = path.join(dir, dumps.sort().at(-1) ?? "");
  const perRequest = totalInstructions(dump) / ctx.opts.requests;
  const byStatus = new Map<number, number>();
  for (const st of statuses) byStatus.set(st, (byStatus.get(st) ?? 0) + 1);
  const counted: Counted = {
    name: s.name,
    perRequest,
    statuses: [...byStatus].map(([st, n]) => `${n}×${st}`).join(" "),
    ...(s.baseline !== undefined ? { baseline: s.baseline } : {}),
  };
  if (ctx.opts.keep !== undefined) {
    mkdirSync(ctx.opts.keep, { recursive: true });
    writeFileSync(path.join(ctx.opts.keep, `${s.name}.callgrind.out`), readFileSync(dump));
  }
  if (ctx.opts.annotate) {
    const a = spawnSync("callgrind_annotate", ["--inclusive=yes", "--threshold=100", dump], { encoding: "utf8", maxBuffer: 64 << 20 });
    counted.top = a.stdout
      .split("\n")
      .filter((l) => /^\s*[\d,]+ \(/.test(l))
      .slice(0, 60)
      .join("\n");
  }
  return counted;
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  const valgrind = findExecutable("valgrind", ["/usr/bin/valgrind"]);
  if (valgrind === undefined) throw new BenchError("valgrind is not installed (apt-get install valgrind)");
  const nginx = findExecutable("nginx", ["/usr/sbin/nginx"]);
  if (nginx === undefined) throw new BenchError("nginx is not installed (apt-get install nginx-extras)");
  const redisServer = findExecutable("redis-server", ["/usr/bin/redis-server"]);
  const scenarios = selectScenarios(opts.only);
  const tmp = mkdtempSync(path.join(os.tmpdir(), "krs-callgrind-"));
  onCleanup("temp dir", async () => {
    if (process.env.BENCH_KEEP_TMP === "1") console.log(`callgrind: kept ${tmp}`);
    else rmSync(tmp, { recursive: true, force: true });
  });
  const upstream = await startNginxUpstream(nginx, path.join(BENCH_DIR, "nginx-upstream.conf"), path.join(tmp, "upstream"));
  const results = new Map<string, Counted>();
  for (const s of scenarios) {
    process.stdout.write(`callgrind: ${s.name} ... `);
    const c = await withOwnCleanups(() =>
      countScenario(s, { nginx, valgrind, tmp, upstreamUrl: upstream.url, upstreamPort: upstream.port, ...(redisServer !== undefined ? { redisServer } : {}), opts }),
    );
    results.set(s.name, c);
    console.log(`${Math.round(c.perRequest).toLocaleString("en-US")} instructions/request (${c.statuses})`);
    if (c.top !== undefined) console.log(c.top);
  }
  console.log(`\n| scenario | instructions/request | vs baseline |\n| --- | ---: | --- |`);
  for (const c of results.values()) {
    const base = c.baseline !== undefined ? results.get(c.baseline) : undefined;
    const delta = base !== undefined ? `${c.perRequest >= base.perRequest ? "+" : ""}${Math.round(c.perRequest - base.perRequest).toLocaleString("en-US")} vs ${base.name}` : "-";
    console.log(`| ${c.name} | ${Math.round(c.perRequest).toLocaleString("en-US")} | ${delta} |`);
  }
  console.log(`\n${opts.requests} keep-alive requests per scenario after ${opts.warmup} warm-up ones; one nginx process (master_process off); user-space instructions (callgrind Ir).`);
  return 0;
}

let code = 1;
try {
  if (!existsSync(path.join(REPO_ROOT, "build", "gateway"))) throw new BenchError("build first: make build");
  code = await main();
} catch (e) {
  console.error(`\ncallgrind: ${e instanceof BenchError ? e.message : String(e)}`);
} finally {
  await runCleanups();
}
process.exit(code);

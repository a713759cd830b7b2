// The benchmark report: comparison with baselines, the console table, latest.md.

import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { WrkResult } from "./wrk.js";

export interface Comparison {
  baseline: string;
  /**
   * req/s of the scenario divided by req/s of its baseline: the median of the round ratios
   * (bench/paired.ts); in reports before paired rounds, one run of each.
   */
  rpsRatio: number;
  /** Round i's ratio, S_i / mean(B_i, B_(i+1)), in order (absent in reports before paired rounds). */
  roundRatios?: number[];
  /** The lowest and highest round ratio: the spread. */
  rpsRatioMin?: number;
  rpsRatioMax?: number;
  /** p50 (p99) of the scenario minus that of its baseline: the medians of their runs. */
  p50DeltaMs: number;
  p99DeltaMs: number;
}

export interface ScenarioResult {
  name: string;
  description: string;
  target: "upstream" | "gateway" | "plain-proxy";
  path: string;
  baseline?: string;
  /** ok: measured cleanly; flagged: measured, but with errors (see flags); failed: not measured. */
  status: "ok" | "flagged" | "failed";
  flags: string[];
  /** Status of the single check request sent before the load. */
  checkStatus?: number;
  /**
   * The scenario's figures: with several rounds, req/s and each latency percentile the
   * median of its runs' (max latency the highest), requests and errors summed (summarize).
   */
  wrk?: WrkResult;
  vsBaseline?: Comparison;
  /** wrk's raw report of each run of the scenario ("--- round i" before each, with several). */
  wrkOutput?: string;
  /** Each run of the scenario, in order (absent in reports before paired rounds). */
  rounds?: WrkResult[];
  /** The baseline's runs around them, B_1 .. B_(rounds+1) (absent without a baseline). */
  baselineRounds?: WrkResult[];
  baselineWrkOutput?: string;
  /** Redis commands the measured runs caused, per command (INFO commandstats deltas summed), for a scenario with a Redis. */
  redisCommands?: Record<string, number>;
  /** Their sum divided by the requests wrk completed in those runs (the baseline's never counted). */
  redisCommandsPerRequest?: number;
}

/** The median (the mean of the two middle values for an even count); NaN for none. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/**
 * Round i's ratio: scenario[i] / mean(baseline[i], baseline[i + 1]) (req/s). Needs one
 * more baseline run than scenario runs (B S B S B); a zero baseline gives ratio 0.
 */
export function roundRatios(scenario: readonly number[], baseline: readonly number[]): number[] {
  if (baseline.length !== scenario.length + 1) {
    throw new Error(`paired rounds need ${scenario.length + 1} baseline runs for ${scenario.length} scenario runs, got ${baseline.length}`);
  }
  return scenario.map((s, i) => {
    const b = (baseline[i]! + baseline[i + 1]!) / 2;
    return b > 0 ? s / b : 0;
  });
}

export interface Spread {
  median: number;
  min: number;
  max: number;
}

export function spread(xs: readonly number[]): Spread {
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
}

/**
 * Several wrk runs of one target as one figure: req/s and each latency percentile the
 * median of the runs' (max latency the highest), requests, errors and durations summed.
 * One run gives that run's figures.
 */
export function summarize(runs: readonly WrkResult[]): WrkResult {
  if (runs.length === 0) throw new Error("no run to summarize");
  const med = (f: (r: WrkResult) => number) => median(runs.map(f));
  const sum = (f: (r: WrkResult) => number) => runs.reduce((a, r) => a + f(r), 0);
  return {
    requestsPerSec: med((r) => r.requestsPerSec),
    requests: sum((r) => r.requests),
    durationS: sum((r) => r.durationS),
    latencyMs: {
      avg: med((r) => r.latencyMs.avg),
      p50: med((r) => r.latencyMs.p50),
      p75: med((r) => r.latencyMs.p75),
      p90: med((r) => r.latencyMs.p90),
      p99: med((r) => r.latencyMs.p99),
      max: Math.max(...runs.map((r) => r.latencyMs.max)),
    },
    non2xx3xx: sum((r) => r.non2xx3xx),
    socketErrors: {
      connect: sum((r) => r.socketErrors.connect),
      read: sum((r) => r.socketErrors.read),
      write: sum((r) => r.socketErrors.write),
      timeout: sum((r) => r.socketErrors.timeout),
    },
  };
}

/** What a scenario should reach (scenarios.ts `goal`, `maxRedisPerRequest`), and whether it did. */
export interface Verdict {
  scenario: string;
  /** e.g. ">= 0.90x gateway-no-plugins" or "<= 0.05 Redis commands/request". */
  goal: string;
  /** The figure measured, as printed. */
  figure: string;
  met: boolean;
}

export interface Goals {
  goal?: number;
  maxRedisPerRequest?: number;
}

/** One verdict per goal a scenario has; a scenario not measured (or its baseline not) misses it. */
export function verdicts(results: ScenarioResult[], goals: Record<string, Goals | undefined>): Verdict[] {
  const out: Verdict[] = [];
  for (const r of results) {
    const g = goals[r.name];
    if (g === undefined) continue;
    if (g.goal !== undefined) {
      const ratio = r.vsBaseline?.rpsRatio;
      const measured = ratio !== undefined && r.status === "ok";
      out.push({
        scenario: r.name,
        goal: `>= ${g.goal.toFixed(2)}x ${r.baseline ?? "?"}`,
        figure: ratio === undefined ? "not measured" : `${ratio.toFixed(3)}x${spreadNote(r.vsBaseline)}${r.status === "ok" ? "" : ` (${r.status})`}`,
        met: measured && ratio >= g.goal,
      });
    }
    if (g.maxRedisPerRequest !== undefined) {
      const perRequest = r.redisCommandsPerRequest;
      out.push({
        scenario: r.name,
        goal: `<= ${g.maxRedisPerRequest} Redis commands/request`,
        figure: perRequest === undefined ? "not measured" : perRequest.toFixed(4),
        met: perRequest !== undefined && r.status === "ok" && perRequest <= g.maxRedisPerRequest,
      });
    }
  }
  return out;
}

/** " (rounds 0.948–0.977)", " (1 round)", or nothing for a report before paired rounds. */
function spreadNote(c: Comparison | undefined): string {
  const n = c?.roundRatios?.length;
  if (c === undefined || n === undefined || c.rpsRatioMin === undefined || c.rpsRatioMax === undefined) return "";
  return n === 1 ? " (1 round)" : ` (rounds ${c.rpsRatioMin.toFixed(3)}–${c.rpsRatioMax.toFixed(3)})`;
}

/** The verdicts as lines: "met" or "NOT MET", the goal and the figure. */
export function verdictLines(list: Verdict[]): string[] {
  return list.map((v) => `${v.met ? "met    " : "NOT MET"}  ${v.scenario}: ${v.goal}, measured ${v.figure}`);
}

/** Sums INFO commandstats into calls per command ("cmdstat_evalsha:calls=3,..." lines). */
export function parseCommandStats(info: string): Record<string, number> {
  const calls: Record<string, number> = {};
  for (const line of info.split(/\r?\n/)) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line);
    if (m !== null && m[1] !== undefined && m[2] !== undefined) calls[m[1]] = Number(m[2]);
  }
  return calls;
}

/**
 * The commands between two commandstats snapshots, without the harness's own INFO calls;
 * scripts count once per EVALSHA/EVAL (the commands a script runs inside Redis are listed
 * too, under their names, but are not round trips: they are left out of the total).
 */
export function commandDelta(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const delta: Record<string, number> = {};
  for (const [name, n] of Object.entries(after)) {
    const d = n - (before[name] ?? 0);
    if (d > 0 && name !== "info") delta[name] = d;
  }
  return delta;
}

export interface Machine {
  cores: number;
  cpuModel: string;
  platform: string;
  node: string;
  nginx: string;
  wrk: string;
}

export interface Settings {
  /** Seconds of load per measurement (per scenario in reports before paired rounds). */
  durationS: number;
  /** Runs of each scenario (B S B S ... B); absent in reports before paired rounds. */
  rounds?: number;
  warmupS: number;
  threads: number;
  connections: number;
  gatewayWorkers: number;
}

export interface Report {
  date: string;
  machine: Machine;
  settings: Settings;
  note: string;
  scenarios: ScenarioResult[];
  /** One per goal in scenarios.ts of a scenario this run measured (older reports have none). */
  verdicts?: Verdict[];
}

export const NOTE =
  "Only ratios between scenarios of the same invocation are meaningful: wrk, the upstream " +
  "and the gateway share this machine's cores, and absolute numbers move with the machine " +
  "and its load. Do not compare absolute numbers across runs or machines.";

/** Flags what makes a measurement untrustworthy instead of letting it be averaged in. */
export function flagsFor(r: WrkResult, expectStatus: number): string[] {
  const flags: string[] = [];
  const s = r.socketErrors;
  if (s.connect + s.read + s.write + s.timeout > 0) {
    flags.push(`socket errors: connect ${s.connect}, read ${s.read}, write ${s.write}, timeout ${s.timeout}`);
  }
  if (r.non2xx3xx > 0 && expectStatus < 400) flags.push(`${r.non2xx3xx} responses with status >= 400`);
  if (r.requests === 0) flags.push("no request completed");
  return flags;
}

/**
 * Sets each scenario's comparison with its baseline. Measured in paired rounds (`rounds`
 * and `baselineRounds`): the median of the round ratios, with their min and max. Otherwise
 * (results of one run each): the scenario's req/s over its baseline's row. A scenario whose
 * baseline's own row is not clean is flagged too.
 */
export function compare(results: ScenarioResult[]): void {
  const byName = new Map(results.map((r) => [r.name, r]));
  for (const r of results) {
    const base = r.baseline === undefined ? undefined : byName.get(r.baseline);
    if (r.wrk === undefined || r.baseline === undefined) continue;
    if (r.rounds !== undefined) {
      if (r.baselineRounds === undefined || r.baselineRounds.length === 0) continue;
      const ratios = roundRatios(r.rounds.map((w) => w.requestsPerSec), r.baselineRounds.map((w) => w.requestsPerSec));
      const b = summarize(r.baselineRounds);
      const { median: mid, min, max } = spread(ratios);
      r.vsBaseline = {
        baseline: r.baseline,
        rpsRatio: mid,
        roundRatios: ratios,
        rpsRatioMin: min,
        rpsRatioMax: max,
        p50DeltaMs: r.wrk.latencyMs.p50 - b.latencyMs.p50,
        p99DeltaMs: r.wrk.latencyMs.p99 - b.latencyMs.p99,
      };
    } else {
      if (base?.wrk === undefined) continue;
      r.vsBaseline = {
        baseline: base.name,
        rpsRatio: base.wrk.requestsPerSec > 0 ? r.wrk.requestsPerSec / base.wrk.requestsPerSec : 0,
        p50DeltaMs: r.wrk.latencyMs.p50 - base.wrk.latencyMs.p50,
        p99DeltaMs: r.wrk.latencyMs.p99 - base.wrk.latencyMs.p99,
      };
    }
    if (base !== undefined && base.status !== "ok") {
      r.flags.push(`baseline ${base.name} is ${base.status}`);
      if (r.status === "ok") r.status = "flagged";
    }
  }
}

const HEAD = ["scenario", "req/s", "p50 ms", "p99 ms", "vs baseline", "p50 delta ms", "Redis cmds/req", "status"];
/** The spread column, after "vs baseline", in a report measured in paired rounds. */
const SPREAD = "rounds min–max";
const LEFT = new Set(["scenario", "status"]);

/** The columns: the spread only for results measured in rounds (older reports draw as before). */
function columns(results: ScenarioResult[]): string[] {
  if (!results.some((r) => r.vsBaseline?.roundRatios !== undefined)) return HEAD;
  const at = HEAD.indexOf("vs baseline") + 1;
  return [...HEAD.slice(0, at), SPREAD, ...HEAD.slice(at)];
}

function fmt(n: number, digits: number): string {
  return n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** "0.948–0.977 (3)": the lowest and highest round ratio and the number of rounds. */
function spreadCell(c: Comparison | undefined): string {
  const n = c?.roundRatios?.length;
  if (c === undefined || n === undefined || c.rpsRatioMin === undefined || c.rpsRatioMax === undefined) return "-";
  return n === 1 ? `${fmt(c.rpsRatioMin, 3)} (1)` : `${fmt(c.rpsRatioMin, 3)}–${fmt(c.rpsRatioMax, 3)} (${n})`;
}

function row(r: ScenarioResult, head: string[]): string[] {
  const w = r.wrk;
  const c = r.vsBaseline;
  const status = r.status === "ok" ? "ok" : `${r.status.toUpperCase()}: ${r.flags.join("; ")}`;
  const cells: Record<string, string> = {
    scenario: r.name,
    "req/s": w === undefined ? "-" : fmt(w.requestsPerSec, 0),
    "p50 ms": w === undefined ? "-" : fmt(w.latencyMs.p50, 3),
    "p99 ms": w === undefined ? "-" : fmt(w.latencyMs.p99, 3),
    "vs baseline": c === undefined ? "-" : `${fmt(c.rpsRatio, 3)}x ${c.baseline}`,
    [SPREAD]: spreadCell(c),
    "p50 delta ms": c === undefined ? "-" : `${c.p50DeltaMs >= 0 ? "+" : ""}${fmt(c.p50DeltaMs, 3)}`,
    "Redis cmds/req": r.redisCommandsPerRequest === undefined ? "-" : fmt(r.redisCommandsPerRequest, 4),
    status,
  };
  return head.map((h) => cells[h] ?? "-");
}

/** A plain-text table for the console. */
export function consoleTable(results: ScenarioResult[]): string {
  const head = columns(results);
  const rows = [head, ...results.map((r) => row(r, head))];
  const widths = head.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]): string =>
    r
      .map((cell, i) => (LEFT.has(head[i] ?? "") ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  return [line(head), widths.map((w) => "-".repeat(w)).join("  "), ...rows.slice(1).map(line)].join("\n");
}

/** The load line of latest.md: paired rounds, or (reports before them) one run per scenario. */
function loadLine(s: Settings): string {
  const wrk = `\`wrk -t${s.threads} -c${s.connections} -d${s.durationS}s --latency\``;
  const rest = `gateway with ${s.gatewayWorkers} workers; upstream: nginx, 1 worker, fixed JSON body`;
  if (s.rounds === undefined) return `- load: ${wrk} after a ${s.warmupS} s warm-up; ${rest}`;
  return (
    `- load: ${wrk} per measurement; a scenario with a baseline as B S B S … B (${s.rounds} rounds unless the scenario says 1), ` +
    `round ratio S_i / mean(B_i, B_i+1), shown: the median of the rounds, with their min–max; ` +
    `one ${s.warmupS} s warm-up per process; ${rest}`
  );
}

export function markdown(report: Report): string {
  const m = report.machine;
  const s = report.settings;
  const esc = (cell: string): string => cell.replaceAll("|", "\\|");
  const head = columns(report.scenarios);
  const lines = [
    "# Benchmark results",
    "",
    `- date: ${report.date}`,
    `- machine: ${m.cores} cores (${m.cpuModel}), ${m.platform}`,
    `- versions: ${m.nginx}, ${m.wrk}, node ${m.node}`,
    loadLine(s),
    "",
    `| ${head.join(" | ")} |`,
    `|${head.map((h) => (LEFT.has(h) ? " --- " : " ---: ")).join("|")}|`,
    ...report.scenarios.map((r) => `| ${row(r, head).map(esc).join(" | ")} |`),
    "",
    ...(report.verdicts !== undefined && report.verdicts.length > 0
      ? [s.rounds === undefined ? "Goals (ratios of this run):" : "Goals (the median round ratio of this run, the rounds' min–max in brackets):", "", ...verdictLines(report.verdicts).map((l) => `- ${esc(l)}`), ""]
      : []),
    ...report.scenarios.map((r) => `- \`${r.name}\`: ${r.description}${r.baseline !== undefined ? ` (baseline: \`${r.baseline}\`)` : ""}`),
    "",
    `${report.note}`,
    "",
  ];
  return lines.join("\n");
}

/**
 * The chart's goal per scenario (scenarios.ts). A goal is set against one baseline: a
 * report that compared the scenario with another shows none.
 */
export async function chartGoals(report: Report): Promise<Record<string, number | undefined>> {
  const { SCENARIOS } = await import("./scenarios.js");
  const baselineIn = new Map(report.scenarios.map((r) => [r.name, r.baseline]));
  return Object.fromEntries(SCENARIOS.map((s) => [s.name, baselineIn.get(s.name) === s.baseline ? s.goal : undefined]));
}

/** latest.md and latest.svg from a report (`make bench` and `npm run bench:report`). */
export async function writeLatest(report: Report, dir: string): Promise<string[]> {
  const { chartSvg } = await import("./chart.js");
  const goals = await chartGoals(report);
  const md = path.join(dir, "latest.md");
  const svg = path.join(dir, "latest.svg");
  writeFileSync(md, markdown(report));
  writeFileSync(svg, await chartSvg(report, goals));
  return [md, svg];
}

/** The newest report JSON in `dir` (file names are ISO timestamps). */
export function newestReport(dir: string): string {
  const files = readdirSync(dir).filter((f) => /^\d{4}-.*\.json$/.test(f)).sort();
  if (files.length === 0) throw new Error(`no benchmark JSON in ${dir}: run make bench`);
  return path.join(dir, files[files.length - 1]);
}

// `npm run bench:report [FILE.json]`: redraws latest.md and latest.svg from the JSON, so neither can drift from it.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), "results");
  const file = process.argv[2] ?? newestReport(dir);
  const written = await writeLatest(JSON.parse(readFileSync(file, "utf8")) as Report, dir);
  console.log(`bench:report: ${path.relative(process.cwd(), file)} -> ${written.map((w) => path.relative(process.cwd(), w)).join(", ")}`);
}

// The benchmark report: comparison with baselines, the console table, latest.md.

import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { WrkResult } from "./wrk.js";

export interface Comparison {
  baseline: string;
  /** req/s of the scenario divided by req/s of its baseline. */
  rpsRatio: number;
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
  wrk?: WrkResult;
  vsBaseline?: Comparison;
  wrkOutput?: string;
  /** Redis commands the measured load caused, per command (INFO commandstats delta), for a scenario with a Redis. */
  redisCommands?: Record<string, number>;
  /** Their sum divided by the requests wrk completed. */
  redisCommandsPerRequest?: number;
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
        figure: ratio === undefined ? "not measured" : `${ratio.toFixed(3)}x${r.status === "ok" ? "" : ` (${r.status})`}`,
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
  durationS: number;
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

export function compare(results: ScenarioResult[]): void {
  const byName = new Map(results.map((r) => [r.name, r]));
  for (const r of results) {
    const base = r.baseline === undefined ? undefined : byName.get(r.baseline);
    if (r.wrk === undefined || base?.wrk === undefined) continue;
    r.vsBaseline = {
      baseline: base.name,
      rpsRatio: base.wrk.requestsPerSec > 0 ? r.wrk.requestsPerSec / base.wrk.requestsPerSec : 0,
      p50DeltaMs: r.wrk.latencyMs.p50 - base.wrk.latencyMs.p50,
      p99DeltaMs: r.wrk.latencyMs.p99 - base.wrk.latencyMs.p99,
    };
    if (base.status !== "ok") r.flags.push(`baseline ${base.name} is ${base.status}`);
  }
}

const HEAD = ["scenario", "req/s", "p50 ms", "p99 ms", "vs baseline", "p50 delta ms", "Redis cmds/req", "status"];
/** The right-aligned (numeric) columns. */
const NUMERIC = (i: number): boolean => i >= 1 && i <= 6;

function fmt(n: number, digits: number): string {
  return n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function row(r: ScenarioResult): string[] {
  const w = r.wrk;
  const c = r.vsBaseline;
  const status = r.status === "ok" ? "ok" : `${r.status.toUpperCase()}: ${r.flags.join("; ")}`;
  return [
    r.name,
    w === undefined ? "-" : fmt(w.requestsPerSec, 0),
    w === undefined ? "-" : fmt(w.latencyMs.p50, 3),
    w === undefined ? "-" : fmt(w.latencyMs.p99, 3),
    c === undefined ? "-" : `${fmt(c.rpsRatio, 3)}x ${c.baseline}`,
    c === undefined ? "-" : `${c.p50DeltaMs >= 0 ? "+" : ""}${fmt(c.p50DeltaMs, 3)}`,
    r.redisCommandsPerRequest === undefined ? "-" : fmt(r.redisCommandsPerRequest, 4),
    status,
  ];
}

/** A plain-text table for the console. */
export function consoleTable(results: ScenarioResult[]): string {
  const rows = [HEAD, ...results.map(row)];
  const widths = HEAD.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]): string =>
    r
      .map((cell, i) => (NUMERIC(i) ? cell.padStart(widths[i] ?? 0) : cell.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  return [line(HEAD), widths.map((w) => "-".repeat(w)).join("  "), ...rows.slice(1).map(line)].join("\n");
}

export function markdown(report: Report): string {
  const m = report.machine;
  const s = report.settings;
  const esc = (cell: string): string => cell.replaceAll("|", "\\|");
  const lines = [
    "# Benchmark results",
    "",
    `- date: ${report.date}`,
    `- machine: ${m.cores} cores (${m.cpuModel}), ${m.platform}`,
    `- versions: ${m.nginx}, ${m.wrk}, node ${m.node}`,
    `- load: \`wrk -t${s.threads} -c${s.connections} -d${s.durationS}s --latency\` after a ${s.warmupS} s warm-up; gateway with ${s.gatewayWorkers} workers; upstream: nginx, 1 worker, fixed JSON body`,
    "",
    `| ${HEAD.join(" | ")} |`,
    `|${HEAD.map((_, i) => (NUMERIC(i) ? " ---: " : " --- ")).join("|")}|`,
    ...report.scenarios.map((r) => `| ${row(r).map(esc).join(" | ")} |`),
    "",
    ...(report.verdicts !== undefined && report.verdicts.length > 0
      ? ["Goals (ratios of this run):", "", ...verdictLines(report.verdicts).map((l) => `- ${esc(l)}`), ""]
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

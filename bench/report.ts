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
  target: "upstream" | "gateway";
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

const HEAD = ["scenario", "req/s", "p50 ms", "p99 ms", "vs baseline", "p50 delta ms", "status"];

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
    status,
  ];
}

/** A plain-text table for the console. */
export function consoleTable(results: ScenarioResult[]): string {
  const rows = [HEAD, ...results.map(row)];
  const widths = HEAD.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]): string =>
    r
      .map((cell, i) => (i >= 1 && i <= 5 ? cell.padStart(widths[i] ?? 0) : cell.padEnd(widths[i] ?? 0)))
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
    `|${HEAD.map((_, i) => (i >= 1 && i <= 5 ? " ---: " : " --- ")).join("|")}|`,
    ...report.scenarios.map((r) => `| ${row(r).map(esc).join(" | ")} |`),
    "",
    ...report.scenarios.map((r) => `- \`${r.name}\`: ${r.description}${r.baseline !== undefined ? ` (baseline: \`${r.baseline}\`)` : ""}`),
    "",
    `${report.note}`,
    "",
  ];
  return lines.join("\n");
}

/** latest.md and latest.svg from a report (`make bench` and `npm run bench:report`). */
export async function writeLatest(report: Report, dir: string): Promise<string[]> {
  const { chartSvg } = await import("./chart.js");
  const { SCENARIOS } = await import("./scenarios.js");
  const goals = Object.fromEntries(SCENARIOS.map((s) => [s.name, s.goal]));
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

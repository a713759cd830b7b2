// The benchmark picture: every scenario's req/s ratio to its baseline (the median of its
// rounds, their min–max as a line), with its goal, as SVG rendered headless by vega-lite +
// vega (no browser, no hand-built SVG).

import * as vega from "vega";
import { compile, type TopLevelSpec } from "vega-lite";
import type { Report } from "./report.js";

export interface ChartRow {
  scenario: string;
  baseline: string;
  ratio: number;
  goal?: number;
  status: string;
  label: string;
  /** The lowest and highest round ratio (reports measured in paired rounds); the bar is their median. */
  min?: number;
  max?: number;
}

/**
 * One row per scenario; `goals` by scenario name (bench/scenarios.ts). A scenario that is
 * nobody's comparison (a baseline itself) is 1.0 by definition; one not measured is 0.
 */
export function chartRows(report: Report, goals: Record<string, number | undefined>): ChartRow[] {
  return report.scenarios.map((s) => {
    const baseline = s.vsBaseline?.baseline ?? (s.baseline === undefined ? "(the baseline)" : `${s.baseline}, not measured`);
    const ratio = s.vsBaseline !== undefined ? s.vsBaseline.rpsRatio : s.baseline === undefined ? 1 : 0;
    const goal = goals[s.name];
    const label = `${ratio.toFixed(2)}x ${baseline}${s.status !== "ok" ? ` ${s.status.toUpperCase()}` : ""}${goal !== undefined ? ` (goal ${goal.toFixed(2)}x)` : ""}`;
    const c = s.vsBaseline;
    const spread = c?.rpsRatioMin !== undefined && c.rpsRatioMax !== undefined ? { min: c.rpsRatioMin, max: c.rpsRatioMax } : {};
    return { scenario: s.name, baseline, ratio, goal, status: s.status, label, ...spread };
  });
}

export function chartSpec(rows: ChartRow[], title: string): TopLevelSpec {
  const order = rows.map((r) => r.scenario);
  const y = { field: "scenario", type: "nominal" as const, sort: order, title: null };
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: "req/s relative to baseline (1.0 = as fast as the baseline)", subtitle: title },
    width: 520,
    data: { values: rows },
    layer: [
      {
        mark: { type: "bar", height: { band: 0.7 } },
        encoding: {
          y,
          x: { field: "ratio", type: "quantitative", title: "ratio to baseline req/s" },
          color: {
            condition: { test: "datum.goal != null && datum.ratio < datum.goal", value: "#d62728" },
            value: "#1f77b4",
          },
          tooltip: [{ field: "scenario" }, { field: "baseline" }, { field: "ratio" }, { field: "goal" }],
        },
      },
      {
        transform: [{ filter: "datum.goal != null" }],
        mark: { type: "tick", color: "#222", thickness: 3, bandSize: 22 },
        encoding: { y, x: { field: "goal", type: "quantitative" } },
      },
      // The rounds' spread, min to max, over the median's bar (only in reports measured in rounds).
      ...(rows.some((r) => r.min !== undefined)
        ? [
            {
              transform: [{ filter: "datum.min != null" }],
              mark: { type: "rule" as const, color: "#222", strokeWidth: 1.5 },
              encoding: { y, x: { field: "min", type: "quantitative" as const }, x2: { field: "max" } },
            },
          ]
        : []),
      {
        mark: { type: "text", align: "left", dx: 4 },
        encoding: { y, x: { field: "ratio", type: "quantitative" }, text: { field: "label" } },
      },
    ],
    config: { font: "sans-serif", view: { stroke: null } },
  };
}

/** The chart as an SVG document. */
export async function chartSvg(report: Report, goals: Record<string, number | undefined>): Promise<string> {
  const rounds = report.settings.rounds;
  const subtitle = `${report.date}, ${report.machine.cores} cores; goal: black tick; red bar: below its goal` +
    (rounds === undefined ? "" : `; bar: median of ${rounds} paired rounds, thin line: their min–max`);
  const spec = compile(chartSpec(chartRows(report, goals), subtitle)).spec;
  const view = new vega.View(vega.parse(spec), { renderer: "none" });
  const svg = await view.toSVG();
  view.finalize();
  return svg + "\n";
}

/**
 * The benchmark chart: a valid SVG (parsed) naming every scenario with its ratio and goal,
 * redrawn from the committed JSON byte for byte (it cannot drift), and shown in README.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { XMLParser, XMLValidator } from "fast-xml-parser";
import { beforeAll, describe, expect, it } from "vitest";
import { chartSvg } from "../../bench/chart.js";
import { chartGoals, newestReport, type Report } from "../../bench/report.js";
import { ROOT } from "../helpers/services.js";

const RESULTS = join(ROOT, "bench", "results");

function texts(node: unknown, out: string[] = []): string[] {
  if (Array.isArray(node)) for (const n of node) texts(n, out);
  else if (node !== null && typeof node === "object") {
    for (const [k, v] of Object.entries(node)) {
      if (k === "text") for (const t of Array.isArray(v) ? v : [v]) out.push(typeof t === "object" ? String((t as any)["#text"] ?? "") : String(t));
      else texts(v, out);
    }
  }
  return out;
}

describe("benchmark chart", () => {
  const report = JSON.parse(readFileSync(newestReport(RESULTS), "utf8")) as Report;
  let goals: Record<string, number | undefined> = {};
  beforeAll(async () => {
    goals = await chartGoals(report);
  });

  it("is a valid SVG naming every scenario, its ratio to its baseline and its goal", async () => {
    const svg = await chartSvg(report, goals);
    expect(XMLValidator.validate(svg)).toBe(true);
    const doc = new XMLParser({ ignoreAttributes: false }).parse(svg);
    expect(doc.svg).toBeDefined();
    const labels = texts(doc.svg);
    for (const s of report.scenarios) {
      expect(labels, s.name).toContain(s.name);
      if (s.vsBaseline !== undefined) {
        const goal = goals[s.name];
        const label = `${s.vsBaseline.rpsRatio.toFixed(2)}x ${s.vsBaseline.baseline}${goal !== undefined ? ` (goal ${goal.toFixed(2)}x)` : ""}`;
        expect(labels, s.name).toContain(label);
      }
    }
  });

  it("a scenario below its goal is drawn in red", async () => {
    const at = (ratio: number) => {
      const r = structuredClone(report);
      r.scenarios.find((s) => s.name === "key-auth-warm")!.vsBaseline!.rpsRatio = ratio;
      return r;
    };
    const red = (svg: string) => (svg.match(/fill="#d62728"/g) ?? []).length;
    // key-auth-warm's goal is 0.95x: above it the bar is not red, below it it is.
    expect(red(await chartSvg(at(0.5), goals))).toBe(red(await chartSvg(at(1.5), goals)) + 1);
  });

  it("the committed latest.svg is what npm run bench:report draws from the JSON, and README shows it", async () => {
    expect(readFileSync(join(RESULTS, "latest.svg"), "utf8"), "stale: run npm run bench:report").toBe(await chartSvg(report, goals));
    expect(readFileSync(join(ROOT, "README.md"), "utf8")).toContain("](bench/results/latest.svg)");
  });
});

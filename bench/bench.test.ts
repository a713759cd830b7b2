// Tests of the harness's own logic (wrk report parsing, flags, paired rounds and their
// median, baseline comparison, old result files); no processes are started here (the
// order of runs and scenario isolation are checked with a recording driver and the
// cleanup list).

import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { chartRows, chartSpec, chartSvg } from "./chart.js";
import { runAll, type Driver, type Measured } from "./paired.js";
import {
  chartGoals,
  commandDelta,
  compare,
  consoleTable,
  flagsFor,
  markdown,
  median,
  NOTE,
  parseCommandStats,
  roundRatios,
  summarize,
  verdictLines,
  verdicts,
  type Report,
  type ScenarioResult,
} from "./report.js";
import { onCleanup, runCleanups, withOwnCleanups } from "./procs.js";
import { SCENARIOS, oneService, type Scenario } from "./scenarios.js";
import { parseWrkOutput, parseWrkTime, wrkArgs, wrkRequestScript, type WrkResult } from "./wrk.js";

const CLEAN = `Running 10s test @ http://127.0.0.1:41234/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   400.69us  459.37us   5.87ms   92.70%
    Req/Sec    46.93k    20.68k  124.66k    85.37%
  Latency Distribution
     50%  399.00us
     75%  466.00us
     90%  662.00us
     99%    2.54ms
  1191231 requests in 10.10s, 30.27MB read
Requests/sec:  91066.02
Transfer/sec:     14.42MB
`;

const ERRORS = `Running 2s test @ http://127.0.0.1:41235/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20s   300.00ms   1.99s    70.00%
    Req/Sec     5.00      2.00    10.00     80.00%
  Latency Distribution
     50%    1.10s
     75%    1.50s
     90%    1.80s
     99%    1.99s
  20 requests in 2.00s, 3.00KB read
  Socket errors: connect 0, read 3, write 0, timeout 12
  Non-2xx or 3xx responses: 7
Requests/sec:     10.00
Transfer/sec:      1.50KB
`;

function wrk(rps: number, p50: number, p99: number): WrkResult {
  return {
    requestsPerSec: rps,
    requests: rps * 10,
    durationS: 10,
    latencyMs: { avg: p50, p50, p75: p50, p90: p99, p99, max: p99 },
    non2xx3xx: 0,
    socketErrors: { connect: 0, read: 0, write: 0, timeout: 0 },
  };
}

describe("wrk report parsing", () => {
  it("reads time values in every unit", () => {
    expect(parseWrkTime("399.00us")).toBeCloseTo(0.399);
    expect(parseWrkTime("2.54ms")).toBeCloseTo(2.54);
    expect(parseWrkTime("1.10s")).toBeCloseTo(1100);
    expect(parseWrkTime("1.00m")).toBeCloseTo(60_000);
    expect(() => parseWrkTime("fast")).toThrow(/cannot read/);
  });

  it("reads a clean run", () => {
    const r = parseWrkOutput(CLEAN);
    expect(r.requestsPerSec).toBeCloseTo(91066.02);
    expect(r.requests).toBe(1191231);
    expect(r.durationS).toBeCloseTo(10.1);
    expect(r.latencyMs.p50).toBeCloseTo(0.399);
    expect(r.latencyMs.p75).toBeCloseTo(0.466);
    expect(r.latencyMs.p90).toBeCloseTo(0.662);
    expect(r.latencyMs.p99).toBeCloseTo(2.54);
    expect(r.latencyMs.avg).toBeCloseTo(0.40069);
    expect(r.latencyMs.max).toBeCloseTo(5.87);
    expect(r.non2xx3xx).toBe(0);
    expect(r.socketErrors).toEqual({ connect: 0, read: 0, write: 0, timeout: 0 });
    expect(flagsFor(r, 200)).toEqual([]);
  });

  it("reads socket errors and error statuses, and flags them", () => {
    const r = parseWrkOutput(ERRORS);
    expect(r.socketErrors).toEqual({ connect: 0, read: 3, write: 0, timeout: 12 });
    expect(r.non2xx3xx).toBe(7);
    expect(r.latencyMs.p50).toBeCloseTo(1100);
    expect(flagsFor(r, 200)).toEqual([
      "socket errors: connect 0, read 3, write 0, timeout 12",
      "7 responses with status >= 400",
    ]);
    // A scenario that expects rejections (e.g. 429) is not flagged for them.
    expect(flagsFor(r, 429)).toEqual(["socket errors: connect 0, read 3, write 0, timeout 12"]);
  });

  it("refuses output without the numbers it needs", () => {
    expect(() => parseWrkOutput("unable to connect to 127.0.0.1:1 Connection refused\n")).toThrow(/Requests\/sec/);
  });
});

describe("wrk invocation", () => {
  it("builds the command line", () => {
    expect(
      wrkArgs({
        wrk: "/usr/bin/wrk",
        url: "http://127.0.0.1:1/x?y=1",
        threads: 2,
        connections: 32,
        durationS: 10,
        headers: { apikey: "k" },
        script: "/tmp/s.lua",
      }),
    ).toEqual(["-t2", "-c32", "-d10s", "--latency", "-H", "apikey: k", "-s", "/tmp/s.lua", "http://127.0.0.1:1/x?y=1"]);
  });

  it("writes method and body as Lua without quoting pitfalls", () => {
    const lua = wrkRequestScript("POST", 'a"]]\n', "-- extra");
    expect(lua).toBe('wrk.method = "POST"\nwrk.body = "\\97\\34\\93\\93\\10"\n-- extra\n');
  });
});

describe("report", () => {
  it("compares each scenario with its baseline", () => {
    const results: ScenarioResult[] = [
      { name: "direct", description: "d", target: "upstream", path: "/", status: "ok", flags: [], wrk: wrk(100_000, 0.3, 2) },
      {
        name: "gw",
        description: "g",
        target: "gateway",
        path: "/",
        baseline: "direct",
        status: "ok",
        flags: [],
        wrk: wrk(40_000, 0.8, 5),
      },
    ];
    compare(results);
    expect(results[0]?.vsBaseline).toBeUndefined();
    const c = results[1]?.vsBaseline;
    expect(c?.rpsRatio).toBeCloseTo(0.4);
    expect(c?.p50DeltaMs).toBeCloseTo(0.5);
    expect(c?.p99DeltaMs).toBeCloseTo(3);

    const table = consoleTable(results);
    expect(table).toMatch(/gw\s+40,000\s+0\.800\s+5\.000\s+0\.400x direct\s+\+0\.500\s+-\s+ok/);

    const md = markdown({
      date: "2025-01-01T00:00:00.000Z",
      machine: { cores: 2, cpuModel: "cpu", platform: "Linux", node: "v20", nginx: "nginx/1.22.1", wrk: "wrk 4.1.0" },
      settings: { durationS: 10, warmupS: 2, threads: 2, connections: 32, gatewayWorkers: 2 },
      note: NOTE,
      scenarios: results,
    });
    expect(md).toContain("2 cores");
    expect(md).toContain("nginx/1.22.1");
    expect(md).toContain("2025-01-01");
    expect(md).toContain("| gw | 40,000 | 0.800 | 5.000 | 0.400x direct | +0.500 | - | ok |");
    expect(md).toContain("Only ratios between scenarios of the same invocation are meaningful");
  });

  it("marks a comparison with a flagged baseline and shows flags", () => {
    const results: ScenarioResult[] = [
      {
        name: "direct",
        description: "d",
        target: "upstream",
        path: "/",
        status: "flagged",
        flags: ["socket errors: connect 0, read 1, write 0, timeout 0"],
        wrk: wrk(100, 1, 2),
      },
      { name: "gw", description: "g", target: "gateway", path: "/", baseline: "direct", status: "ok", flags: [], wrk: wrk(50, 2, 3) },
      { name: "broken", description: "b", target: "gateway", path: "/", baseline: "direct", status: "failed", flags: ["check request got 500"] },
    ];
    compare(results);
    expect(results[1]?.flags).toEqual(["baseline direct is flagged"]);
    expect(results[2]?.vsBaseline).toBeUndefined();
    const table = consoleTable(results);
    expect(table).toContain("FLAGGED: socket errors");
    expect(table).toContain("FAILED: check request got 500");
  });
});

describe("Redis commands per request and goal verdicts", () => {
  const INFO = [
    "# Commandstats",
    "cmdstat_evalsha:calls=120,usec=900,usec_per_call=7.50,rejected_calls=0,failed_calls=0",
    "cmdstat_hmget:calls=120,usec=90,usec_per_call=0.75,rejected_calls=0,failed_calls=0",
    "cmdstat_info:calls=3,usec=60,usec_per_call=20.00,rejected_calls=0,failed_calls=0",
    "",
  ].join("\r\n");

  it("reads calls per command and leaves the harness's INFO out of the delta", () => {
    const before = parseCommandStats(INFO);
    expect(before).toEqual({ evalsha: 120, hmget: 120, info: 3 });
    const after = parseCommandStats(INFO.replace("evalsha:calls=120", "evalsha:calls=170").replace("info:calls=3", "info:calls=4")
      + "cmdstat_ping:calls=2,usec=1,usec_per_call=0.5\r\n");
    expect(commandDelta(before, after)).toEqual({ evalsha: 50, ping: 2 });
  });

  it("says met or not met per goal, and a goal of an unmeasured scenario is not met", () => {
    const results: ScenarioResult[] = [
      { name: "base", description: "b", target: "gateway", path: "/", status: "ok", flags: [], wrk: wrk(100, 1, 2) },
      { name: "fast", description: "f", target: "gateway", path: "/", baseline: "base", status: "ok", flags: [], wrk: wrk(95, 1, 2), redisCommandsPerRequest: 0.02 },
      { name: "slow", description: "s", target: "gateway", path: "/", baseline: "base", status: "ok", flags: [], wrk: wrk(50, 1, 2), redisCommandsPerRequest: 1 },
      { name: "broken", description: "x", target: "gateway", path: "/", baseline: "base", status: "failed", flags: ["check"] },
    ];
    compare(results);
    const list = verdicts(results, {
      fast: { goal: 0.9, maxRedisPerRequest: 0.05 },
      slow: { goal: 0.9, maxRedisPerRequest: 0.05 },
      broken: { goal: 0.5 },
      base: {},
    });
    expect(list.map((v) => [v.scenario, v.met])).toEqual([
      ["fast", true],
      ["fast", true],
      ["slow", false],
      ["slow", false],
      ["broken", false],
    ]);
    const lines = verdictLines(list);
    expect(lines[0]).toBe("met      fast: >= 0.90x base, measured 0.950x");
    expect(lines[3]).toBe("NOT MET  slow: <= 0.05 Redis commands/request, measured 1.0000");
    expect(lines[4]).toBe("NOT MET  broken: >= 0.50x base, measured not measured");
  });
});

describe("scenarios", () => {
  it("have unique names and baselines that exist and come first", () => {
    const names = SCENARIOS.map((s) => s.name);
    expect(new Set(names).size).toBe(names.length);
    for (const [i, s] of SCENARIOS.entries()) {
      if (s.baseline !== undefined) expect(names.indexOf(s.baseline)).toBeGreaterThanOrEqual(0);
      if (s.baseline !== undefined) expect(names.indexOf(s.baseline)).toBeLessThan(i);
    }
  });

  it("measure a scenario whose state its load consumes in one round, and never use one as a baseline", () => {
    const baselines = new Set(SCENARIOS.map((s) => s.baseline));
    for (const s of SCENARIOS) {
      // A counter at its limit, admissions counted by verify: a second round measures something else.
      if (s.noWarmup === true || s.verify !== undefined) expect(s.rounds, s.name).toBe(1);
      if (baselines.has(s.name)) {
        expect(s.rounds, s.name).toBeUndefined();
        expect(s.noWarmup ?? s.verify ?? s.rejectionsExpected ?? s.nodes, s.name).toBeUndefined();
      }
    }
    expect(SCENARIOS.find((s) => s.name === "rate-limit-near-limit")?.rounds).toBe(1);
  });

  it("give every wrk run new keys where a scenario needs a new key per request", () => {
    for (const name of ["cache-miss", "jwt-unique-tokens"]) {
      const lua = SCENARIOS.find((s) => s.name === name)?.wrkLua ?? "";
      expect(lua, name).toMatch(/bench_run \.\. /);
    }
    expect(wrkRequestScript(undefined, undefined, "-- x", "r7")).toBe('bench_run = "\\114\\55"\n-- x\n');
  });

  it("build Kong 3.x declarative configs", () => {
    const env = { upstreamUrl: "http://127.0.0.1:4000" };
    const gw = SCENARIOS.find((s) => s.name === "gateway-no-plugins");
    expect(gw?.target).toBe("gateway");
    if (gw?.target === "gateway") {
      expect(gw.config(env)).toEqual({
        _format_version: "3.0",
        services: [{ name: "bench", url: "http://127.0.0.1:4000", routes: [{ name: "bench-root", paths: ["/"] }] }],
      });
    }
    const withPlugin = oneService(env, { plugins: [{ name: "redis-rate-limit", config: { minute: 10 } }] });
    expect(withPlugin.services?.[0]?.plugins).toEqual([{ name: "redis-rate-limit", config: { minute: 10 } }]);
  });
});

describe("scenario isolation", () => {
  it("stops what a scenario started when it ends, also when it fails, and leaves the run's own processes", async () => {
    const stopped: string[] = [];
    onCleanup("upstream (whole run)", async () => void stopped.push("upstream"));
    await withOwnCleanups(async () => {
      for (let i = 0; i < 6; i++) onCleanup("redis-server (cluster node)", async () => void stopped.push(`node ${i}`));
      expect(stopped).toEqual([]);
    });
    // rate-limit-cluster's six nodes are gone before the next scenario is measured.
    expect(stopped).toEqual(["node 5", "node 4", "node 3", "node 2", "node 1", "node 0"]);
    await expect(
      withOwnCleanups(async () => {
        onCleanup("gateway", async () => void stopped.push("gateway"));
        throw new Error("check request failed");
      }),
    ).rejects.toThrow("check request failed");
    expect(stopped.at(-1)).toBe("gateway");
    expect(stopped).not.toContain("upstream");
    await runCleanups();
    expect(stopped.at(-1)).toBe("upstream");
  });
});

/** A WrkResult with these req/s and p50 (ms), 4 s long. */
function run(rps: number, p50 = 1, p99 = 5): WrkResult {
  return { ...wrk(rps, p50, p99), requests: rps * 4, durationS: 4 };
}

describe("paired rounds: median, round ratios, spread", () => {
  it("takes the median of odd and even counts without reordering its input", () => {
    const xs = [3, 1, 2];
    expect(median(xs)).toBe(2);
    expect(xs).toEqual([3, 1, 2]);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([0.9])).toBe(0.9);
    expect(median([])).toBeNaN();
  });

  it("divides each round by the mean of the baseline runs just before and after it", () => {
    const ratios = roundRatios([95, 70, 48], [100, 100, 50, 50]);
    expect(ratios[0]).toBeCloseTo(0.95);
    expect(ratios[1]).toBeCloseTo(70 / 75);
    expect(ratios[2]).toBeCloseTo(0.96);
    expect(roundRatios([10], [0, 0])).toEqual([0]);
    // B S B S B: one baseline run more than scenario runs, or it is not a pairing.
    expect(() => roundRatios([95, 70], [100, 100])).toThrow(/3 baseline runs/);
  });

  it("summarizes runs: median req/s and percentiles, summed counts, the highest max", () => {
    const a = { ...run(100, 1, 9), non2xx3xx: 1 };
    const b = { ...run(300, 3, 5), latencyMs: { ...run(300, 3, 5).latencyMs, max: 40 } };
    const c = run(200, 2, 7);
    const s = summarize([a, b, c]);
    expect(s.requestsPerSec).toBe(200);
    expect(s.latencyMs.p50).toBe(2);
    expect(s.latencyMs.p99).toBe(7);
    expect(s.latencyMs.max).toBe(40);
    expect(s.requests).toBe(2400);
    expect(s.durationS).toBe(12);
    expect(s.non2xx3xx).toBe(1);
    expect(summarize([c])).toEqual(c);
    expect(() => summarize([])).toThrow();
  });

  it("compares paired rounds by the median round ratio, not by the rows' req/s", () => {
    const base: ScenarioResult = { name: "base", description: "b", target: "gateway", path: "/", status: "ok", flags: [], wrk: run(999_999), rounds: [run(999_999)] };
    const s: ScenarioResult = {
      name: "s", description: "s", target: "gateway", path: "/", baseline: "base", status: "ok", flags: [],
      rounds: [run(95, 1.5), run(70, 1.0), run(48, 2.0)],
      baselineRounds: [run(100, 1.0), run(100, 0.5), run(50, 0.8), run(50, 0.9)],
    };
    s.wrk = summarize(s.rounds!);
    compare([base, s]);
    const c = s.vsBaseline!;
    expect(c.baseline).toBe("base");
    // Rounds 0.95, 0.933, 0.96: median 0.95. The medians of the runs (70 / 75 = 0.933) and
    // the baseline's own row (999,999 req/s) are not what the ratio is taken from.
    expect(c.rpsRatio).toBeCloseTo(0.95);
    expect(c.rpsRatioMin).toBeCloseTo(70 / 75);
    expect(c.rpsRatioMax).toBeCloseTo(0.96);
    expect(c.roundRatios).toHaveLength(3);
    expect(c.p50DeltaMs).toBeCloseTo(1.5 - 0.85);
    expect(s.status).toBe("ok");
  });

  it("shows the spread in the console table, latest.md and the verdicts, and judges by the median", () => {
    const mk = (name: string, sRps: number[], bRps: number[]): ScenarioResult => {
      const r: ScenarioResult = {
        name, description: name, target: "gateway", path: "/", baseline: "base", status: "ok", flags: [],
        rounds: sRps.map((x) => run(x)), baselineRounds: bRps.map((x) => run(x)),
      };
      r.wrk = summarize(r.rounds!);
      return r;
    };
    const base: ScenarioResult = { name: "base", description: "b", target: "gateway", path: "/", status: "ok", flags: [], rounds: [run(100)], wrk: run(100) };
    // Rounds 0.948, 0.962, 0.977 (median above 0.95 though one round is below), and one of a single round.
    const results = [base, mk("m", [94.8, 96.2, 97.7], [100, 100, 100, 100]), mk("one", [94, ], [100, 100]), mk("low", [99, 94, 90], [100, 100, 100, 100])];
    compare(results);
    const list = verdicts(results, { m: { goal: 0.95 }, one: { goal: 0.95 }, low: { goal: 0.95 } });
    expect(verdictLines(list)).toEqual([
      "met      m: >= 0.95x base, measured 0.962x (rounds 0.948–0.977)",
      "NOT MET  one: >= 0.95x base, measured 0.940x (1 round)",
      "NOT MET  low: >= 0.95x base, measured 0.940x (rounds 0.900–0.990)",
    ]);
    const table = consoleTable(results);
    expect(table.split("\n")[0]).toMatch(/vs baseline\s+rounds min–max\s+p50 delta ms/);
    expect(table).toMatch(/m\s+96\s+1\.000\s+5\.000\s+0\.962x base\s+0\.948–0\.977 \(3\)\s+\+0\.000\s+-\s+ok/);
    expect(table).toMatch(/one\s+94\s.*0\.940x base\s+0\.940 \(1\)/);
    const md = markdown({
      date: "2026-12-02T00:00:00.000Z",
      machine: { cores: 2, cpuModel: "cpu", platform: "Linux", node: "v20", nginx: "nginx/1.22.1", wrk: "wrk 4.1.0" },
      settings: { durationS: 4, rounds: 3, warmupS: 2, threads: 2, connections: 32, gatewayWorkers: 2 },
      note: NOTE,
      scenarios: results,
      verdicts: list,
    });
    expect(md).toContain("| scenario | req/s | p50 ms | p99 ms | vs baseline | rounds min–max | p50 delta ms | Redis cmds/req | status |");
    expect(md).toContain("| m | 96 | 1.000 | 5.000 | 0.962x base | 0.948–0.977 (3) | +0.000 | - | ok |");
    expect(md).toContain("`wrk -t2 -c32 -d4s --latency` per measurement; a scenario with a baseline as B S B S … B (3 rounds");
    expect(md).toContain("- met      m: >= 0.95x base, measured 0.962x (rounds 0.948–0.977)");
  });
});

describe("result files from before paired rounds", () => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // Committed, written by the harness of one run per scenario (no rounds in it).
  const file = path.join(here, "results", "2026-12-02T06-34-13Z.json");
  const old = (): Report => JSON.parse(readFileSync(file, "utf8")) as Report;

  it("redraw latest.md as they did: no spread column, their ratios and verdicts", () => {
    const md = markdown(old());
    expect(md).toContain("| scenario | req/s | p50 ms | p99 ms | vs baseline | p50 delta ms | Redis cmds/req | status |");
    expect(md).not.toContain("rounds min–max");
    expect(md).toContain("- load: `wrk -t2 -c32 -d10s --latency` after a 2 s warm-up;");
    expect(md).toContain("| gateway-no-plugins | 33,262 | 0.788 | 5.300 | 0.757x plain-proxy | +0.133 | - | ok |");
    expect(md).toContain("- met      gateway-no-plugins: >= 0.75x plain-proxy, measured 0.757x");
    expect(md).toContain("Goals (ratios of this run):");
  });

  it("compare as before: a row's req/s over its baseline row's", () => {
    const r = old();
    const stored = new Map(r.scenarios.map((x) => [x.name, x.vsBaseline?.rpsRatio]));
    for (const x of r.scenarios) delete x.vsBaseline;
    compare(r.scenarios);
    for (const x of r.scenarios) {
      expect(x.vsBaseline?.rpsRatio, x.name).toBe(stored.get(x.name));
      expect(x.vsBaseline?.roundRatios, x.name).toBeUndefined();
    }
  });

  it("chart as before: no spread line, no rounds in the subtitle", async () => {
    const r = old();
    const goals = await chartGoals(r);
    const rows = chartRows(r, goals);
    const stored = r.scenarios.find((x) => x.name === "gateway-no-plugins")?.vsBaseline?.rpsRatio;
    expect(stored).toBeCloseTo(0.757, 3);
    expect(rows.find((x) => x.scenario === "gateway-no-plugins")).toMatchObject({ ratio: stored, label: "0.76x plain-proxy (goal 0.75x)" });
    expect(rows.every((x) => x.min === undefined && x.max === undefined)).toBe(true);
    expect(JSON.stringify(chartSpec(rows, "t"))).not.toContain('"rule"');
    const svg = await chartSvg(r, goals);
    expect(svg).not.toContain("paired rounds");
    expect(svg).not.toContain("rule mark container");
  });

  it("a report measured in rounds draws each scenario's min–max line", async () => {
    const r = old();
    r.settings.rounds = 3;
    const gw = r.scenarios.find((x) => x.name === "gateway-no-plugins")!;
    gw.vsBaseline = { ...gw.vsBaseline!, roundRatios: [0.7, 0.75, 0.8], rpsRatioMin: 0.7, rpsRatioMax: 0.8, rpsRatio: 0.75 };
    const goals = await chartGoals(r);
    expect(chartRows(r, goals).find((x) => x.scenario === "gateway-no-plugins")).toMatchObject({ ratio: 0.75, min: 0.7, max: 0.8 });
    const svg = await chartSvg(r, goals);
    expect(svg).toContain("bar: median of 3 paired rounds");
    expect(svg).toMatch(/aria-label="min: 0\.7; scenario: gateway-no-plugins; max: 0\.8"/);
  });
});

/**
 * A driver that starts nothing: it records what runAll asks for, registers a stop per
 * started scenario on the real cleanup list, and answers loads with req/s from `rps`.
 */
function recordingDriver(rps: (s: Scenario, role: string, n: number) => number, opts: { failLoad?: string; verify?: Record<string, string[]> } = {}) {
  const events: string[] = [];
  const loads = new Map<string, number>();
  const driver: Driver<string> = {
    async start(s) {
      events.push(`start ${s.name}`);
      onCleanup(s.name, async () => void events.push(`stop ${s.name}`));
      return { ok: true, target: s.name, checkStatus: 200 };
    },
    async load(target, s, seconds, role): Promise<Measured> {
      expect(target).toBe(s.name);
      events.push(`${role} ${s.name} ${seconds}s`);
      if (opts.failLoad === s.name && role === "scenario") throw new Error("wrk exited with 1: connection refused\nmore");
      const key = `${s.name} ${role}`;
      const n = (loads.get(key) ?? 0) + 1;
      loads.set(key, n);
      // Every load reports Redis commands: only the scenario's own rounds may be counted.
      return { result: run(rps(s, role, n)), raw: `${key} ${n}\n`, redisCommands: { evalsha: 2, hmget: 1 } };
    },
    async verify(_t, s) {
      events.push(`verify ${s.name}`);
      return opts.verify?.[s.name] ?? [];
    },
  };
  return { driver, events };
}

const fake = (name: string, extra: Partial<Scenario> = {}): Scenario => ({ name, description: name, target: "upstream", path: "/", ...extra }) as Scenario;

describe("paired rounds: the order of runs and scenario isolation", () => {
  it("runs B S B S ... B, warms each process once, keeps baselines up to the end and stops the rest per scenario", async () => {
    const scenarios = [
      fake("base"),
      fake("mid", { baseline: "base" }),
      fake("top", { baseline: "mid" }),
      fake("solo", { baseline: "base", rounds: 1, noWarmup: true, rejectionsExpected: true }),
    ];
    const { driver, events } = recordingDriver((s, role, n) => (role === "baseline" ? 100 : s.name === "top" ? [90, 80][n - 1] ?? 1 : 50), { verify: { solo: ["admitted 4999, limit 5000"] } });
    const results = await runAll(scenarios, { rounds: 2, durationS: 4, warmupS: 2 }, driver);
    expect(events).toEqual([
      // base: a baseline, started outside its own cleanups; no baseline of its own: alone.
      "start base", "warmup base 2s", "scenario base 4s", "scenario base 4s", "verify base",
      // mid: a baseline too (of top); base is warm already.
      "start mid", "warmup mid 2s",
      "baseline base 4s", "scenario mid 4s", "baseline base 4s", "scenario mid 4s", "baseline base 4s", "verify mid",
      // top: its own processes, stopped when it ends.
      "start top", "warmup top 2s",
      "baseline mid 4s", "scenario top 4s", "baseline mid 4s", "scenario top 4s", "baseline mid 4s", "verify top",
      "stop top",
      // solo: one round (B S B), no warm-up of its own.
      "start solo", "baseline base 4s", "scenario solo 4s", "baseline base 4s", "verify solo", "stop solo",
    ]);
    await runCleanups();
    expect(events.slice(-2)).toEqual(["stop mid", "stop base"]);

    compare(results);
    const top = results.find((r) => r.name === "top")!;
    expect(top.rounds?.map((w) => w.requestsPerSec)).toEqual([90, 80]);
    expect(top.baselineRounds).toHaveLength(3);
    expect(top.wrk?.requestsPerSec).toBe(85);
    expect(top.vsBaseline).toMatchObject({ baseline: "mid", rpsRatioMin: 0.8, rpsRatioMax: 0.9, roundRatios: [0.9, 0.8] });
    expect(top.vsBaseline?.rpsRatio).toBeCloseTo(0.85);
    // Redis commands: the scenario's two rounds (3 commands each) over their requests; the baseline's never.
    expect(top.redisCommands).toEqual({ evalsha: 4, hmget: 2 });
    expect(top.redisCommandsPerRequest).toBeCloseTo(6 / (90 * 4 + 80 * 4));
    expect(top.wrkOutput).toBe("--- round 1\ntop scenario 1\n\n--- round 2\ntop scenario 2\n");
    const base = results.find((r) => r.name === "base")!;
    expect(base.baselineRounds).toBeUndefined();
    expect(base.vsBaseline).toBeUndefined();
    expect(base.wrk?.requestsPerSec).toBe(50);
    const solo = results.find((r) => r.name === "solo")!;
    expect(solo.rounds).toHaveLength(1);
    expect(solo.vsBaseline).toMatchObject({ rpsRatio: 0.5, roundRatios: [0.5] });
    expect(solo.status).toBe("flagged");
    expect(solo.flags).toEqual(["admitted 4999, limit 5000"]);
  });

  it("--rounds 1 is one paired measurement, B S B", async () => {
    const { driver, events } = recordingDriver(() => 100);
    await runAll([fake("base"), fake("s", { baseline: "base" })], { rounds: 1, durationS: 3, warmupS: 0 }, driver);
    await runCleanups();
    expect(events).toEqual(["start base", "scenario base 3s", "verify base", "start s", "baseline base 3s", "scenario s 3s", "baseline base 3s", "verify s", "stop s", "stop base"]);
  });

  it("a scenario that fails is stopped at once and reported; the baseline stays for the next one", async () => {
    const { driver, events } = recordingDriver(() => 100, { failLoad: "bad" });
    const results = await runAll([fake("base"), fake("bad", { baseline: "base" }), fake("next", { baseline: "base" })], { rounds: 2, durationS: 1, warmupS: 0 }, driver);
    expect(events.indexOf("stop bad")).toBe(events.indexOf("scenario bad 1s") + 1);
    expect(events).not.toContain("stop base");
    expect(events.filter((e) => e === "scenario next 1s")).toHaveLength(2);
    await runCleanups();
    expect(events.at(-1)).toBe("stop base");
    const bad = results[1]!;
    expect(bad.status).toBe("failed");
    expect(bad.flags).toEqual(["wrk exited with 1: connection refused"]);
    expect(bad.wrk).toBeUndefined();
    expect(results[2]?.status).toBe("ok");
  });

  it("flags a round or a baseline run with errors", async () => {
    const { driver } = recordingDriver(() => 100);
    const load = driver.load.bind(driver);
    driver.load = async (t, s, seconds, role, label) => {
      const m = await load(t, s, seconds, role, label);
      if (role === "baseline") m.result = { ...m.result, socketErrors: { ...m.result.socketErrors, timeout: 3 } };
      return m;
    };
    const results = await runAll([fake("base"), fake("s", { baseline: "base" })], { rounds: 1, durationS: 1, warmupS: 0 }, driver);
    await runCleanups();
    expect(results[1]?.status).toBe("flagged");
    expect(results[1]?.flags).toEqual([
      "baseline base run 1: socket errors: connect 0, read 0, write 0, timeout 3",
      "baseline base run 2: socket errors: connect 0, read 0, write 0, timeout 3",
    ]);
  });

  it("a baseline whose check failed: the scenarios on it are measured alone, flagged, without a ratio", async () => {
    const { driver, events } = recordingDriver(() => 100);
    const start = driver.start.bind(driver);
    driver.start = async (s) => (s.name === "base" ? (events.push("start base"), { ok: false, flags: ["check request got 502"], checkStatus: 502 }) : start(s));
    const results = await runAll([fake("base"), fake("s", { baseline: "base" })], { rounds: 2, durationS: 1, warmupS: 0 }, driver);
    await runCleanups();
    expect(events).toEqual(["start base", "start s", "scenario s 1s", "scenario s 1s", "verify s", "stop s"]);
    compare(results);
    expect(results[0]).toMatchObject({ status: "failed", flags: ["check request got 502"], checkStatus: 502 });
    expect(results[1]?.status).toBe("flagged");
    expect(results[1]?.flags[0]).toBe("baseline base not measured: s measured alone, no ratio");
    expect(results[1]?.vsBaseline).toBeUndefined();
    expect(verdictLines(verdicts(results, { s: { goal: 0.5 } }))).toEqual(["NOT MET  s: >= 0.50x base, measured not measured"]);
  });

  it("refuses a baseline whose runs consume state (rounds, noWarmup, verify, nodes)", async () => {
    const { driver, events } = recordingDriver(() => 100);
    await expect(runAll([fake("base", { rounds: 1 }), fake("s", { baseline: "base" })], { rounds: 3, durationS: 1, warmupS: 0 }, driver)).rejects.toThrow(/base is a baseline/);
    expect(events).toEqual([]);
  });
});

// Tests of the harness's own logic (wrk report parsing, flags, baseline comparison);
// no processes are started here (scenario isolation is checked on the cleanup list).

import { describe, expect, it } from "vitest";
import {
  commandDelta,
  compare,
  consoleTable,
  flagsFor,
  markdown,
  NOTE,
  parseCommandStats,
  verdictLines,
  verdicts,
  type ScenarioResult,
} from "./report.js";
import { onCleanup, runCleanups, withOwnCleanups } from "./procs.js";
import { SCENARIOS, oneService } from "./scenarios.js";
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

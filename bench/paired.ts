// Paired, interleaved rounds: how a scenario S is measured against its baseline B.
//
//   B S B S ... S B    (`rounds` runs of S, rounds + 1 runs of B, after one warm-up of each)
//
// Round i's ratio is S_i / mean(B_i, B_(i+1)): the baseline measured just before and just
// after it, so a slow drift of the machine (other load, thermal, a timer) hits both sides
// of the ratio. The reported ratio is the median of the round ratios, with their min and
// max as the spread. A baseline's processes are started once and kept until the end of the
// run; a scenario's own processes are started and stopped per scenario.

import { withOwnCleanups } from "./procs.js";
import { flagsFor, summarize, type ScenarioResult } from "./report.js";
import type { Scenario } from "./scenarios.js";
import type { WrkResult } from "./wrk.js";

/** How many runs of S a scenario gets: `rounds` in scenarios.ts (one where repeating would change what is measured), else the run's. */
export function roundsOf(s: Scenario, rounds: number): number {
  return s.rounds ?? rounds;
}

/** Seconds of load the run will put on the machine (warm-ups and measurements), for the console. */
export function plannedLoadSeconds(scenarios: readonly Scenario[], o: { rounds: number; durationS: number; warmupS: number }): number {
  let total = 0;
  const warmed = new Set<string>();
  const warm = (s: Scenario): void => {
    if (warmed.has(s.name)) return;
    warmed.add(s.name);
    if (s.noWarmup !== true) total += o.warmupS;
  };
  const names = new Set(scenarios.map((s) => s.name));
  for (const s of scenarios) {
    const n = roundsOf(s, o.rounds);
    warm(s);
    const paired = s.baseline !== undefined && names.has(s.baseline);
    if (paired) warm(scenarios.find((x) => x.name === s.baseline)!);
    total += (paired ? 2 * n + 1 : n) * o.durationS;
  }
  return total;
}

// ---- the run -----------------------------------------------------------------------------

/** One wrk run (or the merged runs of a multi-node scenario). */
export interface Measured {
  result: WrkResult;
  raw: string;
  /** Redis commands during this run (INFO commandstats delta), for a scenario's own run on its own Redis. */
  redisCommands?: Record<string, number>;
}

export type Started<T> = { ok: true; target: T; checkStatus: number } | { ok: false; flags: string[]; checkStatus?: number };

/** What runAll needs from the machine: run.ts starts real processes, the tests record calls. */
export interface Driver<T> {
  /**
   * Starts what the scenario needs (its cleanups registered with onCleanup), runs its
   * setup and its check request. Throws (BenchError) when a process does not start.
   */
  start(s: Scenario): Promise<Started<T>>;
  /**
   * One load of `seconds` on the target. `role`: a warm-up, a run of the scenario being
   * measured (Redis commands counted), or a run of it as another scenario's baseline.
   */
  load(target: T, s: Scenario, seconds: number, role: "warmup" | "scenario" | "baseline", label: string): Promise<Measured>;
  /** The scenario's `verify` after its runs: flags (an empty list: all is well). */
  verify(target: T, s: Scenario): Promise<string[]>;
  /** Progress for the console: a scenario begins, a scenario's result (before compare). */
  progress?: { start(s: Scenario): void; done(r: ScenarioResult): void };
}

export interface RunOptions {
  rounds: number;
  durationS: number;
  warmupS: number;
}

const firstLine = (e: unknown): string => (e instanceof Error ? (e.message.split("\n")[0] ?? e.message) : String(e));

/**
 * Measures every scenario (list order; baselines come before the scenarios that use them):
 * a scenario with a baseline as B S B S ... B, one without alone, `rounds` times. The
 * processes of a scenario that is some scenario's baseline are started outside its own
 * cleanups and stay up until the run's cleanups; every other scenario's are stopped when
 * it ends (also when it fails).
 */
export async function runAll<T>(scenarios: readonly Scenario[], o: RunOptions, driver: Driver<T>): Promise<ScenarioResult[]> {
  const byName = new Map(scenarios.map((s) => [s.name, s]));
  const baselines = new Set(scenarios.flatMap((s) => (s.baseline !== undefined && byName.has(s.baseline) ? [s.baseline] : [])));
  for (const name of baselines) {
    const b = byName.get(name)!;
    if (b.rounds !== undefined || b.noWarmup === true || b.verify !== undefined || (b.nodes ?? 1) > 1) {
      throw new Error(`${name} is a baseline, measured around every round of the scenarios that use it: it cannot have rounds, noWarmup, verify or nodes`);
    }
  }
  const kept = new Map<string, Started<T>>();
  const warmed = new Set<string>();
  const results: ScenarioResult[] = [];

  for (const s of scenarios) {
    const base = s.baseline === undefined ? undefined : byName.get(s.baseline);
    driver.progress?.start(s);
    // Kept processes: registered at the run's level, before this scenario's own cleanups begin.
    if (base !== undefined && !kept.has(base.name)) kept.set(base.name, await driver.start(base));
    if (baselines.has(s.name) && !kept.has(s.name)) kept.set(s.name, await driver.start(s));
    const r = await withOwnCleanups(() => measureScenario(s, base, o, driver, kept, warmed));
    results.push(r);
    driver.progress?.done(r);
  }
  return results;
}

async function measureScenario<T>(
  s: Scenario,
  base: Scenario | undefined,
  o: RunOptions,
  driver: Driver<T>,
  kept: Map<string, Started<T>>,
  warmed: Set<string>,
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
  const started = kept.get(s.name) ?? (await driver.start(s));
  if (started.checkStatus !== undefined) result.checkStatus = started.checkStatus;
  if (!started.ok) {
    result.status = "failed";
    result.flags.push(...started.flags);
    return result;
  }
  const target = started.target;
  let baseTarget: T | undefined;
  if (base !== undefined) {
    const b = kept.get(base.name);
    if (b?.ok === true) baseTarget = b.target;
    else result.flags.push(`baseline ${base.name} not measured: ${s.name} measured alone, no ratio`);
  }

  const rounds = roundsOf(s, o.rounds);
  const sRuns: Measured[] = [];
  const bRuns: Measured[] = [];
  try {
    if (base !== undefined && baseTarget !== undefined && !warmed.has(base.name)) {
      warmed.add(base.name);
      if (o.warmupS > 0 && base.noWarmup !== true) await driver.load(baseTarget, base, o.warmupS, "warmup", "warm-up");
    }
    if (!warmed.has(s.name)) {
      warmed.add(s.name);
      if (o.warmupS > 0 && s.noWarmup !== true) await driver.load(target, s, o.warmupS, "warmup", "warm-up");
    }
    const baselineRun = async (): Promise<void> => {
      if (base !== undefined && baseTarget !== undefined) {
        bRuns.push(await driver.load(baseTarget, base, o.durationS, "baseline", `${base.name} ${bRuns.length + 1}/${rounds + 1}`));
      }
    };
    await baselineRun();
    for (let i = 0; i < rounds; i++) {
      sRuns.push(await driver.load(target, s, o.durationS, "scenario", `round ${i + 1}/${rounds}`));
      await baselineRun();
    }
  } catch (e) {
    result.status = "failed";
    result.flags.push(firstLine(e));
    return result;
  }

  result.wrk = summarize(sRuns.map((m) => m.result));
  result.rounds = sRuns.map((m) => m.result);
  result.wrkOutput = sRuns.length === 1 ? sRuns[0]!.raw : sRuns.map((m, i) => `--- round ${i + 1}\n${m.raw}`).join("\n");
  if (bRuns.length > 0) {
    result.baselineRounds = bRuns.map((m) => m.result);
    result.baselineWrkOutput = bRuns.map((m, i) => `--- ${base?.name} ${i + 1}\n${m.raw}`).join("\n");
  }
  const counted = sRuns.filter((m) => m.redisCommands !== undefined);
  if (counted.length > 0) {
    const total: Record<string, number> = {};
    for (const m of counted) for (const [name, n] of Object.entries(m.redisCommands!)) total[name] = (total[name] ?? 0) + n;
    result.redisCommands = total;
    const calls = Object.values(total).reduce((a, b) => a + b, 0);
    const requests = counted.reduce((a, m) => a + m.result.requests, 0);
    result.redisCommandsPerRequest = requests > 0 ? calls / requests : 0;
  }

  const expect = s.rejectionsExpected === true ? 429 : (s.expectStatus ?? 200);
  sRuns.forEach((m, i) => result.flags.push(...flagsFor(m.result, expect).map((f) => (rounds > 1 ? `round ${i + 1}: ${f}` : f))));
  if (base !== undefined) {
    const baseExpect = base.rejectionsExpected === true ? 429 : (base.expectStatus ?? 200);
    bRuns.forEach((m, i) => result.flags.push(...flagsFor(m.result, baseExpect).map((f) => `baseline ${base.name} run ${i + 1}: ${f}`)));
  }
  try {
    result.flags.push(...(await driver.verify(target, s)));
  } catch (e) {
    result.flags.push(`verify failed: ${firstLine(e)}`);
  }
  if (result.flags.length > 0) result.status = "flagged";
  return result;
}

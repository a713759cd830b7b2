/**
 * The local gateway against Kong 3.9.3's recorded behaviour: the corpus in
 * ../shared/kong-conformance/ (its README explains the format) is replayed case by case
 * with its own replay.py on a fresh one-worker gateway started with the corpus config and
 * the conformance-probe plugin. Every difference fails the case it belongs to, naming the
 * field, unless the case is a known difference listed below with its reason.
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startGateway, stopGateway } from "../../src/cli/gateway.js";
import { freePort, ROOT, stopAll, tempDir } from "../helpers/services.js";

const CORPUS_DIR = process.env.KRS_CONFORMANCE_DIR ?? resolve(ROOT, "..", "shared", "kong-conformance");
const CORPUS_FILE = join(CORPUS_DIR, "corpus.json");
const REPLAY = join(CORPUS_DIR, "replay.py");

/**
 * Cases the local gateway cannot answer as Kong does on Debian's nginx 1.22 and
 * lua-nginx-module 0.10.23 (what only OpenResty's or Kong's own nginx patches provide),
 * with the fields that still differ. A listed case fails if it differs in any other field,
 * and also once it passes, so the list cannot go stale.
 */
const KNOWN_DIFFERENCES: Record<string, { fields: string[]; reason: string }> = {};

interface Diff { field: string; kong: unknown; got: unknown }
interface CaseResult { id: string; result: "pass" | "fail" | "not compared"; caveat?: string; diffs?: Diff[] }
interface CorpusCase { id: string; caveat?: string }

/**
 * Error-log lines the corpus provokes on purpose: the dead and slow services, the probe's
 * thrown error, and set_status in header_filter after kong.response.error printed its
 * body (nginx logs that under Kong too).
 */
const EXPECTED_ERRORS = [
  /connect\(\) failed \(111: Connection refused\) while connecting to upstream/,
  /upstream timed out \(110: Connection timed out\) while reading response header from upstream/,
  /\[conformance-probe\] error in access phase: .*conformance-probe: thrown in access/,
  /attempt to set status 401 via ngx\.exit after sending out the response status 402/,
];

const corpusPresent = existsSync(CORPUS_FILE) && existsSync(REPLAY);
const cases: CorpusCase[] = corpusPresent ? (JSON.parse(readFileSync(CORPUS_FILE, "utf8")).cases as CorpusCase[]) : [];
const results = new Map<string, CaseResult>();
let replayFailure: string | undefined;
let errorLines: string[] = [];

function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString("utf8")));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString("utf8")));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.once("error", (e) => {
      clearTimeout(timer);
      rej(e);
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr });
    });
  });
}

function show(value: unknown): string {
  if (value === null || value === undefined) return "<absent>";
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > 400 ? `${text.slice(0, 400)}...(+${text.length - 400})` : text;
}

function describeDiffs(diffs: Diff[]): string {
  return diffs.map((d) => `  ${d.field}\n    Kong: ${show(d.kong)}\n    got:  ${show(d.got)}`).join("\n");
}

if (!corpusPresent) {
  console.log(`kong conformance: skipped, no corpus at ${CORPUS_DIR} (set KRS_CONFORMANCE_DIR to replay one)`);
}

describe.skipIf(!corpusPresent)("Kong 3.9.3 conformance corpus", () => {
  beforeAll(async () => {
    const prefix = tempDir("conform");
    const [proxyPort, adminPort, upstreamPort] = [await freePort(), await freePort(), await freePort()];
    const printed = await run("python3", [REPLAY, "--print-config", "--upstream-port", String(upstreamPort)], 30_000);
    if (printed.code !== 0) throw new Error(`replay.py --print-config failed: ${printed.stderr}`);
    const configFile = join(prefix, "conformance.json");
    writeFileSync(configFile, printed.stdout);
    await startGateway({
      config: configFile,
      prefix,
      proxy: `127.0.0.1:${proxyPort}`,
      admin: `127.0.0.1:${adminPort}`,
      // One worker: some cases read state the probe keeps per worker (corpus README).
      workers: 1,
      plugins: "bundled,conformance-probe",
      luaPackagePath: join(CORPUS_DIR, "lua", "?.lua"),
      logLevel: "notice",
    });
    try {
      const replay = await run("python3", [REPLAY, "--proxy", `127.0.0.1:${proxyPort}`, "--upstream-port", String(upstreamPort), "--json"], 240_000);
      try {
        const report = JSON.parse(replay.stdout) as { passed: number; failed: number; results: CaseResult[] };
        for (const r of report.results) results.set(r.id, r);
        console.log(`kong conformance: ${report.passed} passed, ${report.failed} failed of ${report.results.length} cases`);
      } catch {
        replayFailure = `replay.py gave no JSON report (exit ${replay.code}): ${replay.stderr.slice(0, 2000)}`;
      }
    } finally {
      await stopGateway(prefix);
      errorLines = readFileSync(join(prefix, "logs", "error.log"), "utf8").split("\n").filter((l) => /\[(error|alert|crit|emerg)\]/.test(l));
    }
    const known = Object.entries(KNOWN_DIFFERENCES);
    console.log(known.length === 0
      ? "kong conformance: no known differences"
      : `kong conformance: ${known.length} known differences (Debian's nginx cannot do what Kong does):\n`
        + known.map(([id, k]) => `  ${id}: ${k.reason}`).join("\n"));
  }, 300_000);

  afterAll(stopAll);

  it("replays every case of the corpus", () => {
    expect(replayFailure).toBeUndefined();
    expect(results.size).toBe(cases.length);
  });

  it("logs no error the corpus does not provoke", () => {
    expect(errorLines.filter((l) => !EXPECTED_ERRORS.some((re) => re.test(l)))).toEqual([]);
  });

  it("lists only corpus cases as known differences", () => {
    const ids = new Set(cases.map((c) => c.id));
    expect(Object.keys(KNOWN_DIFFERENCES).filter((id) => !ids.has(id))).toEqual([]);
  });

  for (const c of cases) {
    const known = KNOWN_DIFFERENCES[c.id];
    const label = c.caveat !== undefined ? `${c.id} [caveat: ${c.caveat}]` : c.id;
    if (known === undefined) {
      it(`${label} answers as Kong`, () => {
        const r = results.get(c.id);
        expect(r, "case not replayed").toBeDefined();
        expect(r!.result, "case not compared").not.toBe("not compared");
        const diffs = r!.diffs ?? [];
        if (diffs.length > 0) expect.fail(`${c.id} differs from Kong:\n${describeDiffs(diffs)}`);
      });
    } else {
      it(`${label} is a known difference: ${known.reason}`, () => {
        const r = results.get(c.id);
        expect(r, "case not replayed").toBeDefined();
        const diffs = r!.diffs ?? [];
        expect(diffs.length, `${c.id} now answers as Kong: remove it from KNOWN_DIFFERENCES`).toBeGreaterThan(0);
        const unexpected = diffs.filter((d) => !known.fields.includes(d.field));
        if (unexpected.length > 0) expect.fail(`${c.id} differs beyond its known difference:\n${describeDiffs(unexpected)}`);
      });
    }
  }
});

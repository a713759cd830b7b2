// Running wrk and reading its report.

import { spawn, type ChildProcess } from "node:child_process";

export interface WrkResult {
  requestsPerSec: number;
  requests: number;
  durationS: number;
  latencyMs: { avg: number; p50: number; p75: number; p90: number; p99: number; max: number };
  /** wrk's "Non-2xx or 3xx responses": it counts responses with status >= 400. */
  non2xx3xx: number;
  socketErrors: { connect: number; read: number; write: number; timeout: number };
}

export interface WrkOptions {
  wrk: string;
  url: string;
  threads: number;
  connections: number;
  durationS: number;
  headers?: Record<string, string>;
  /** Path of a Lua script for wrk's `-s` (method, body, request generation). */
  script?: string;
}

const UNIT_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses one of wrk's time values ("399.00us", "2.54ms", "1.00s", "1.00m") into ms. */
export function parseWrkTime(text: string): number {
  const m = /^([0-9.]+)(us|ms|s|m|h)$/.exec(text.trim());
  const unit = m === null ? undefined : UNIT_MS[m[2] ?? ""];
  if (m === null || unit === undefined) throw new Error(`cannot read wrk time value "${text}"`);
  return Number(m[1]) * unit;
}

const METRIC = { "": 1, k: 1e3, M: 1e6, G: 1e9 } as const;

function parseCount(text: string): number {
  const m = /^([0-9.]+)([kMG]?)$/.exec(text.trim());
  if (m === null) throw new Error(`cannot read wrk count "${text}"`);
  return Number(m[1]) * METRIC[(m[2] ?? "") as keyof typeof METRIC];
}

function need(output: string, re: RegExp, what: string): RegExpExecArray {
  const m = re.exec(output);
  if (m === null) throw new Error(`wrk output has no ${what}:\n${output}`);
  return m;
}

/** Reads the text report of `wrk --latency`. Throws when a required line is missing. */
export function parseWrkOutput(output: string): WrkResult {
  const rps = need(output, /^Requests\/sec:\s+([0-9.]+)/m, "Requests/sec line");
  const total = need(output, /^\s*(\d+) requests in ([0-9.]+\w+),/m, "request count line");
  const latency = need(output, /^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)/m, "latency line");
  const pct = (p: string): number =>
    parseWrkTime(need(output, new RegExp(`^\\s*${p}%\\s+(\\S+)`, "m"), `${p}% latency`)[1] ?? "");
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(output);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(output);
  return {
    requestsPerSec: Number(rps[1]),
    requests: parseCount(total[1] ?? ""),
    durationS: parseWrkTime(total[2] ?? "") / 1000,
    latencyMs: {
      avg: parseWrkTime(latency[1] ?? ""),
      p50: pct("50"),
      p75: pct("75"),
      p90: pct("90"),
      p99: pct("99"),
      max: parseWrkTime(latency[3] ?? ""),
    },
    non2xx3xx: non2xx === null ? 0 : Number(non2xx[1]),
    socketErrors: {
      connect: sock === null ? 0 : Number(sock[1]),
      read: sock === null ? 0 : Number(sock[2]),
      write: sock === null ? 0 : Number(sock[3]),
      timeout: sock === null ? 0 : Number(sock[4]),
    },
  };
}

/**
 * Builds a wrk Lua script that sets the request method and body once (wrk's fast path).
 * `run` becomes the global `bench_run` (unique per wrk run, for keys that must not repeat).
 */
export function wrkRequestScript(method: string | undefined, body: string | undefined, extra?: string, run?: string): string {
  const lines: string[] = [];
  if (run !== undefined) lines.push(`bench_run = ${luaString(run)}`);
  if (method !== undefined) lines.push(`wrk.method = ${JSON.stringify(method)}`);
  if (body !== undefined) lines.push(`wrk.body = ${luaString(body)}`);
  if (extra !== undefined) lines.push(extra);
  return lines.join("\n") + "\n";
}

function luaString(s: string): string {
  // A decimal escape per byte is valid in every Lua and needs no care for quotes or ]].
  return `"${[...Buffer.from(s, "utf8")].map((b) => `\\${b}`).join("")}"`;
}

/** The wrk processes running (one per node of a multi-node scenario), so that a signal handler can stop them. */
const running = new Set<ChildProcess>();

export function stopRunningWrk(): void {
  for (const child of running) child.kill("SIGTERM");
}

export function wrkArgs(opts: WrkOptions): string[] {
  const args = [
    `-t${opts.threads}`,
    `-c${opts.connections}`,
    `-d${opts.durationS}s`,
    "--latency",
  ];
  for (const [name, value] of Object.entries(opts.headers ?? {})) args.push("-H", `${name}: ${value}`);
  if (opts.script !== undefined) args.push("-s", opts.script);
  args.push(opts.url);
  return args;
}

/** Runs wrk and returns its raw report and the parsed numbers. */
export function runWrk(opts: WrkOptions): Promise<{ raw: string; result: WrkResult }> {
  return new Promise((resolve, reject) => {
    const child = spawn(opts.wrk, wrkArgs(opts), { stdio: ["ignore", "pipe", "pipe"] });
    running.add(child);
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", (e) => {
      running.delete(child);
      reject(e);
    });
    child.on("close", (code, signal) => {
      running.delete(child);
      if (code !== 0) {
        reject(new Error(`wrk exited with ${code ?? signal}: ${(err || out).trim()}`));
        return;
      }
      try {
        resolve({ raw: out, result: parseWrkOutput(out) });
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  });
}

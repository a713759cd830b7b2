/**
 * Real services for the integration specs, each on a free loopback port and stopped by
 * `stopAll()` (call it in afterAll): redis-server, the demo upstream, the local gateway.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { stringify as toYaml } from "yaml";
import { startGateway, stopGateway } from "../../src/cli/gateway.js";
import { startUpstream, type UpstreamServer } from "../../src/cli/upstream.js";

export const ROOT = resolve(import.meta.dirname, "..", "..");
/** Test-only plugins (spec/fixtures/lua/kong/plugins/*), never shipped. */
export const FIXTURE_PLUGINS = ["krs-test-first", "krs-test-second", "krs-test-auth", "krs-test-redis"];
export const FIXTURE_LUA_PATH = join(ROOT, "spec", "fixtures", "lua", "?.lua");

const stops: (() => Promise<void>)[] = [];

export async function stopAll(): Promise<void> {
  while (stops.length > 0) await stops.pop()!().catch(() => undefined);
}

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close(() => res(port));
    });
  });
}

export function tempDir(label: string): string {
  const dir = mkdtempSync(join(tmpdir(), `krs-${label}-`));
  stops.push(async () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// ---------------------------------------------------------------- redis

export interface RedisServer {
  port: number;
  process: ChildProcess;
  stop(): Promise<void>;
}

/** Starts redis-server with no persistence; extra args are passed through (e.g. --requirepass). */
export async function startRedis(extraArgs: string[] = [], fixedPort?: number): Promise<RedisServer> {
  const port = fixedPort ?? (await freePort());
  const dir = tempDir("redis");
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, ...extraArgs], { stdio: "ignore" });
  const stop = () => new Promise<void>((res) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return res();
    proc.once("exit", () => res());
    proc.kill("SIGKILL");
  });
  stops.push(stop);
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (await canConnect(port)) return { port, process: proc, stop };
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`redis-server did not start on ${port}`);
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      res(true);
    });
    s.once("error", () => res(false));
  });
}

// ---------------------------------------------------------------- upstream

export async function upstream(): Promise<UpstreamServer> {
  const server = await startUpstream({ host: "127.0.0.1", port: 0 });
  stops.push(() => server.close());
  return server;
}

// ---------------------------------------------------------------- gateway

export interface TestGateway {
  proxyUrl: string;
  adminUrl: string;
  prefix: string;
  /** Every line of the gateway's error log so far. */
  errorLog(): string[];
  /** [error]/[alert]/[crit]/[emerg] lines not matched by an expected pattern. */
  unexpectedErrors(expected?: RegExp[]): string[];
  stop(): Promise<void>;
}

export interface GatewayOptions {
  workers?: number;
  plugins?: string[];
  logLevel?: string;
  /** PEM bundle for cosocket TLS verification (KONG_LUA_SSL_TRUSTED_CERTIFICATE). */
  trustedCertificate?: string;
  /** KONG_TRUSTED_IPS, KONG_REAL_IP_HEADER, KONG_REAL_IP_RECURSIVE. */
  trustedIps?: string;
  realIpHeader?: string;
  realIpRecursive?: string;
  /** Real Kong only: run it on Postgres (Admin API writes) instead of DB-less. The local gateway always takes writes. */
  database?: boolean;
}

/** `npm run test:kong` sets KRS_TARGET=kong: gateway() then starts real Kong (spec/kong/target.ts). */
export const ON_KONG = process.env.KRS_TARGET === "kong";

/** Starts a local gateway with a declarative config given as an object (written as YAML). */
export async function gateway(config: object, opts: GatewayOptions = {}): Promise<TestGateway> {
  const prefix = tempDir("gw");
  const file = join(prefix, "kong.yml");
  writeFileSync(file, toYaml(config));
  if (ON_KONG) {
    const { kongGateway } = await import("../kong/target.js");
    const kong = await kongGateway(file, prefix, opts, FIXTURE_PLUGINS, join(ROOT, "spec", "fixtures", "lua"));
    stops.push(kong.stop);
    return kong;
  }
  const [proxyPort, adminPort] = [await freePort(), await freePort()];
  const gw = await startGateway({
    config: file,
    prefix,
    proxy: `127.0.0.1:${proxyPort}`,
    admin: `127.0.0.1:${adminPort}`,
    workers: opts.workers ?? 2,
    plugins: ["bundled", ...(opts.plugins ?? FIXTURE_PLUGINS)].join(","),
    luaPackagePath: FIXTURE_LUA_PATH,
    logLevel: opts.logLevel ?? "notice",
    trustedCertificate: opts.trustedCertificate,
    trustedIps: opts.trustedIps,
    realIpHeader: opts.realIpHeader,
    realIpRecursive: opts.realIpRecursive,
  });
  const stop = async () => {
    await stopGateway(prefix);
  };
  stops.push(stop);
  const errorLog = () => readFileSync(join(prefix, "logs", "error.log"), "utf8").split("\n").filter((l) => l !== "");
  return {
    proxyUrl: gw.proxyUrl,
    adminUrl: gw.adminUrl,
    prefix,
    errorLog,
    unexpectedErrors: (expected = []) => errorLog().filter((l) => /\[(error|alert|crit|emerg)\]/.test(l) && !expected.some((re) => re.test(l))),
    stop,
  };
}

/** The service entry for the demo upstream. */
export function serviceFor(up: UpstreamServer, name = "svc"): { name: string; url: string } {
  return { name, url: `http://127.0.0.1:${up.port}` };
}

export async function getJson(url: string, init?: RequestInit): Promise<{ status: number; headers: Headers; body: any }> {
  const res = await fetch(url, init);
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, headers: res.headers, body };
}

/** fetch() will not send a custom Host header; node:http will. */
export function requestWithHost(url: string, host: string): Promise<{ status: number; body: string }> {
  return new Promise((res, rej) => {
    const req = httpRequest(url, { headers: { host } }, (r) => {
      let body = "";
      r.setEncoding("utf8");
      r.on("data", (c: string) => (body += c));
      r.on("end", () => res({ status: r.statusCode ?? 0, body }));
    });
    req.on("error", rej);
    req.end();
  });
}

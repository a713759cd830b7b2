/**
 * `krs gateway start|stop`: runs the Kong-compatible local gateway (Debian's nginx with
 * lua-nginx-module) under a prefix directory, like `kong start -p PREFIX`.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import { parse as parseYaml, YAMLParseError } from "yaml";
import { parseArgs, parseListen, UsageError } from "./args.js";
import { suiteRoot } from "./paths.js";

export class GatewayError extends Error {}

export interface StartOptions {
  config: string;
  prefix: string;
  proxy?: string;
  admin?: string;
  workers?: number;
  /** KONG_PLUGINS-style list; default from the environment, else "bundled". */
  plugins?: string;
  /** Extra Lua search path entries, like KONG_LUA_PACKAGE_PATH. */
  luaPackagePath?: string;
  logLevel?: string;
  /** Seconds to wait for the Admin API to answer. */
  timeout?: number;
  /** Like KONG_LUA_SSL_TRUSTED_CERTIFICATE (which is the default). */
  trustedCertificate?: string;
  /** Like KONG_TRUSTED_IPS (the default): comma-separated addresses/CIDRs whose forwarding headers are believed. */
  trustedIps?: string;
  /** Like KONG_REAL_IP_HEADER (the default; Kong's default X-Real-IP). */
  realIpHeader?: string;
  /** Like KONG_REAL_IP_RECURSIVE (the default; Kong's default off). */
  realIpRecursive?: string;
}

const NGINX_CANDIDATES = ["/usr/sbin/nginx", "/usr/local/openresty/nginx/sbin/nginx", "/usr/bin/nginx"];
const MODULE_DIRS = ["/usr/lib/nginx/modules", "/usr/share/nginx/modules"];

function findExecutable(candidates: string[], name: string): string | undefined {
  for (const c of candidates) if (existsSync(c)) return c;
  const which = spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" });
  const found = which.stdout.trim();
  return found !== "" ? found : undefined;
}

/** The suite's own plugins: every kong-plugins/kong/plugins/<name>/handler.lua. */
export function bundledPlugins(root = suiteRoot()): string[] {
  const dir = join(root, "kong-plugins", "kong", "plugins");
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((name) => existsSync(join(dir, name, "handler.lua"))).sort();
}

export function expandPlugins(list: string, root: string): string[] {
  const out: string[] = [];
  for (const raw of list.split(",")) {
    const name = raw.trim();
    if (name === "" || name === "off") continue;
    if (name === "bundled") out.push(...bundledPlugins(root));
    else out.push(name);
  }
  return [...new Set(out)];
}

function portIsFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolvePort) => {
    const server = createServer();
    server.once("error", () => resolvePort(false));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolvePort(true)));
  });
}

function readPid(prefix: string): number | undefined {
  const file = join(prefix, "logs", "nginx.pid");
  if (!existsSync(file)) return undefined;
  const pid = Number(readFileSync(file, "utf8").trim());
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/** A zombie counts as gone: the daemonized master's parent may be slow to reap it. */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return true;
  }
}

function render(template: string, values: Record<string, string>): string {
  return template.replace(/\$\{(\w+)\}/g, (whole, key: string) => {
    if (!(key in values)) throw new Error(`nginx.conf.template: no value for ${whole}`);
    return values[key];
  });
}

/** The first [emerg]/[alert]/[error] line nginx wrote, without its timestamp prefix. */
function nginxFailure(prefix: string, stderr: string): string {
  const log = existsSync(join(prefix, "logs", "error.log")) ? readFileSync(join(prefix, "logs", "error.log"), "utf8") : "";
  const lines = (stderr + "\n" + log).split("\n");
  const line = lines.find((l) => /\[(emerg|alert|crit)\]/.test(l)) ?? lines.find((l) => /\[error\]/.test(l)) ?? lines.find((l) => l.trim() !== "");
  return (line ?? "nginx failed to start").replace(/^\S+ \S+ \[\w+\] \d+#\d+: /, "").trim();
}

async function waitForAdmin(url: string, pid: () => number | undefined, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) return true;
    } catch {
      // not up yet
    }
    const p = pid();
    if (p !== undefined && !isAlive(p)) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

/**
 * Kong's trusted_ips / real_ip_header / real_ip_recursive, rendered as Kong's nginx
 * template does (nginx's realip module): only a peer in trusted_ips may say, through the
 * header, which address the request comes from; everyone else is its own socket address.
 * Kong's defaults: no trusted peer, X-Real-IP, off. "unix:" is nginx's own token.
 */
function realIpDirectives(trustedIps: string, header: string, recursive: string): string {
  const lines: string[] = [];
  for (const raw of trustedIps.split(",")) {
    const entry = raw.trim();
    if (entry === "" || entry === "NONE") continue;
    if (entry !== "unix:" && !/^[0-9A-Fa-f:.]+(\/\d{1,3})?$/.test(entry)) throw new GatewayError(`KONG_TRUSTED_IPS: invalid address or CIDR '${entry}'`);
    lines.push(`set_real_ip_from ${entry};`);
  }
  if (!/^[A-Za-z0-9_-]+$/.test(header)) throw new GatewayError(`KONG_REAL_IP_HEADER: invalid header name '${header}'`);
  if (header === "proxy_protocol") throw new GatewayError("KONG_REAL_IP_HEADER: proxy_protocol is not supported by the local gateway");
  if (recursive !== "on" && recursive !== "off") throw new GatewayError(`KONG_REAL_IP_RECURSIVE: expected on or off, got '${recursive}'`);
  lines.push(`real_ip_header ${header};`, `real_ip_recursive ${recursive};`);
  return lines.join("\n        ");
}

const SYSTEM_CA_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"];

/** Kong's `lua_ssl_trusted_certificate`: "system" (default), or comma-separated PEM files. */
function trustedCertificateDirective(setting: string): string {
  const files: string[] = [];
  for (const raw of setting.split(",")) {
    const entry = raw.trim();
    if (entry === "" || entry === "off") continue;
    if (entry === "system") {
      const bundle = SYSTEM_CA_BUNDLES.find((f) => existsSync(f));
      if (bundle !== undefined) files.push(bundle);
      continue;
    }
    if (!existsSync(entry)) throw new GatewayError(`KONG_LUA_SSL_TRUSTED_CERTIFICATE: ${entry} not found`);
    files.push(resolve(entry));
  }
  if (files.length === 0) return "";
  if (files.length > 1) throw new GatewayError("KONG_LUA_SSL_TRUSTED_CERTIFICATE: give one bundle file (concatenate the PEMs)");
  return `lua_ssl_trusted_certificate ${files[0]};`;
}

/**
 * Files under the prefix that may hold secrets (a literal Redis password or encryption key
 * in the config, the Admin API's kept changes) are the owner's alone, as Kong's .kong_env
 * is, whatever the umask: a mode given at creation is masked, and an existing file keeps
 * its old mode, so both are set explicitly.
 */
const PRIVATE_FILE = 0o600;
const PRIVATE_DIR = 0o700;
/** Directory under the prefix that workers can create files in (see startGateway). */
export const PLUGIN_LOGS = "plugin-logs";

function writePrivate(path: string, data: string): void {
  writeFileSync(path, data, { mode: PRIVATE_FILE });
  chmodSync(path, PRIVATE_FILE);
}

/**
 * The gateway's master rewrites and appends to this file with io.open, which keeps the mode
 * of a file that exists: so it is made to exist, owner-only, before nginx starts.
 */
function touchPrivate(path: string): void {
  closeSync(openSync(path, "a", PRIVATE_FILE));
  chmodSync(path, PRIVATE_FILE);
}

/** The path ("services.0.port") of the first NaN or infinity in a parsed document. */
function nonFinitePath(value: unknown, path: string): string | undefined {
  if (typeof value === "number") return Number.isFinite(value) ? undefined : path;
  if (value === null || typeof value !== "object") return undefined;
  for (const [key, inner] of Object.entries(value)) {
    const found = nonFinitePath(inner, path === "" ? key : `${path}.${key}`);
    if (found !== undefined) return found;
  }
  return undefined;
}

export interface StartedGateway {
  proxyUrl: string;
  adminUrl: string;
  prefix: string;
  pid: number;
}

export async function startGateway(opts: StartOptions): Promise<StartedGateway> {
  const root = suiteRoot();
  const prefix = resolve(opts.prefix);
  const proxy = parseListen("--proxy", opts.proxy ?? "127.0.0.1:8000");
  const admin = parseListen("--admin", opts.admin ?? "127.0.0.1:8001");
  const workers = opts.workers ?? 2;
  if (!Number.isInteger(workers) || workers < 1 || workers > 64) throw new UsageError(`--workers: expected 1..64, got ${opts.workers}`);

  // KRS_NGINX names a specific nginx binary (OpenResty's, say).
  const nginxOverride = process.env.KRS_NGINX;
  const nginx = nginxOverride !== undefined && nginxOverride !== "" ? (existsSync(nginxOverride) ? nginxOverride : undefined) : findExecutable(NGINX_CANDIDATES, "nginx");
  if (nginx === undefined) throw new GatewayError(`nginx not found${nginxOverride ? ` at KRS_NGINX=${nginxOverride}` : ""}: install Debian's nginx-extras (make bootstrap) or OpenResty`);
  const moduleDir = MODULE_DIRS.find((d) => existsSync(join(d, "ngx_http_lua_module.so")));
  if (moduleDir === undefined) throw new GatewayError("lua-nginx-module not found (ngx_http_lua_module.so): install Debian's nginx-extras (make bootstrap)");
  const luajit = findExecutable(["/usr/bin/luajit"], "luajit");
  if (luajit === undefined) throw new GatewayError("luajit not found: install Debian's luajit2 (make bootstrap)");
  const entry = join(root, "build", "gateway", "krs", "gateway", "entry.lua");
  if (!existsSync(entry)) throw new GatewayError(`the gateway is not built (${entry} missing): run \`make build\``);

  const configPath = resolve(opts.config);
  if (!existsSync(configPath)) throw new GatewayError(`config file not found: ${opts.config}`);
  let declarative: unknown;
  try {
    declarative = parseYaml(readFileSync(configPath, "utf8"));
  } catch (e) {
    const where = e instanceof YAMLParseError && e.linePos ? ` at line ${e.linePos[0].line}, column ${e.linePos[0].col}` : "";
    throw new GatewayError(`${opts.config}: YAML syntax error${where}: ${(e as Error).message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "")}`);
  }

  // JSON.stringify would turn YAML's .inf and .nan into null (a default, silently).
  const nonFinite = nonFinitePath(declarative, "");
  if (nonFinite !== undefined) throw new GatewayError(`${opts.config}: ${nonFinite}: expected a number JSON can carry (not .inf or .nan)`);

  const existing = readPid(prefix);
  if (existing !== undefined && isAlive(existing)) throw new GatewayError(`a gateway is already running under ${prefix} (pid ${existing}); stop it first`);
  if (!(await portIsFree(proxy.host, proxy.port))) throw new GatewayError(`proxy listen ${proxy.host}:${proxy.port}: address already in use`);
  if (!(await portIsFree(admin.host, admin.port))) throw new GatewayError(`admin listen ${admin.host}:${admin.port}: address already in use`);

  for (const dir of ["logs", "tmp"]) mkdirSync(join(prefix, dir), { recursive: true });
  // nginx's error lines name the request line, so a key sent in the query string
  // (key_in_query) reaches error.log: the logs are the owner's alone too. nginx's master
  // opens them before workers start, so workers running as another user need no access.
  chmodSync(join(prefix, "logs"), PRIVATE_DIR);
  for (const log of ["error.log", "access.log"]) touchPrivate(join(prefix, "logs", log));
  // Where plugins that write files (structured-log's relative paths) write: workers may
  // run as another user than the master that made the prefix. Anyone may create a file,
  // nobody may list the directory or remove another's file (sticky).
  mkdirSync(join(prefix, PLUGIN_LOGS), { recursive: true });
  chmodSync(join(prefix, PLUGIN_LOGS), 0o1733);
  // krs/ holds the config and the Admin API state; only nginx's master reads it (workers,
  // which may run as another user, get what they need from the master), so it can be private.
  // The prefix itself is not: workers write request bodies under tmp/.
  const stateDir = join(prefix, "krs");
  mkdirSync(stateDir, { recursive: true, mode: PRIVATE_DIR });
  chmodSync(stateDir, PRIVATE_DIR);
  const nodeIdFile = join(stateDir, "node_id");
  const nodeId = existsSync(nodeIdFile) ? readFileSync(nodeIdFile, "utf8").trim() : randomUUID();
  writePrivate(nodeIdFile, nodeId + "\n");

  const plugins = expandPlugins(opts.plugins ?? process.env.KONG_PLUGINS ?? "bundled", root);
  const extraPath = opts.luaPackagePath ?? process.env.KONG_LUA_PACKAGE_PATH ?? "";
  const luaPath = [
    ...extraPath.split(";").filter((p) => p !== "" && p !== ";"),
    join(root, "kong-plugins", "?.lua"),
    join(root, "build", "gateway", "?.lua"),
  ].join(";") + ";;";

  const configJson = join(prefix, "krs", "config.json");
  const optionsJson = join(prefix, "krs", "gateway.json");
  const listen = (l: { host: string; port: number }) => (l.host.includes(":") ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`);
  // As written: vault references stay references here, resolved only in the gateway's memory.
  writePrivate(configJson, JSON.stringify(declarative ?? {}));
  touchPrivate(join(stateDir, "admin-state.jsonl"));
  writePrivate(optionsJson, JSON.stringify({
    plugins,
    node_id: nodeId,
    config_file: configJson,
    proxy_listen: listen(proxy),
    admin_listen: listen(admin),
  }));

  // Validate before starting anything: a bad file must leave nothing running.
  const check = spawnSync(luajit, ["-e", `package.path=${JSON.stringify(luaPath.replace(/;;$/, ";"))}..package.path`, join(root, "build", "gateway", "krs", "gateway", "validate.lua"), optionsJson, configJson], { encoding: "utf8" });
  if (check.status !== 0) throw new GatewayError((check.stderr || check.stdout).trim().split("\n")[0] || `config validation failed (exit ${check.status})`);

  const template = readFileSync(join(root, "src", "gateway", "nginx.conf.template"), "utf8");
  writePrivate(join(prefix, "nginx.conf"), render(template, {
    workers: String(workers),
    log_level: opts.logLevel ?? process.env.KONG_LOG_LEVEL ?? "notice",
    module_dir: moduleDir,
    lua_package_path: luaPath,
    lua_package_cpath: ";;",
    access_log: "logs/access.log",
    options_file: optionsJson,
    lua_ssl_trusted_certificate: trustedCertificateDirective(opts.trustedCertificate ?? process.env.KONG_LUA_SSL_TRUSTED_CERTIFICATE ?? "system"),
    lua_ssl_verify_depth: process.env.KONG_LUA_SSL_VERIFY_DEPTH ?? "1",
    proxy_listen: listen(proxy),
    admin_listen: listen(admin),
    real_ip: realIpDirectives(
      opts.trustedIps ?? process.env.KONG_TRUSTED_IPS ?? "",
      opts.realIpHeader ?? process.env.KONG_REAL_IP_HEADER ?? "X-Real-IP",
      opts.realIpRecursive ?? process.env.KONG_REAL_IP_RECURSIVE ?? "off",
    ),
  }));
  writeFileSync(join(prefix, "logs", "error.log"), "");
  chmodSync(join(prefix, "logs", "error.log"), PRIVATE_FILE);

  const started = spawnSync(nginx, ["-p", prefix + "/", "-c", "nginx.conf", "-e", "logs/error.log"], { encoding: "utf8" });
  if (started.status !== 0) throw new GatewayError(`nginx did not start: ${nginxFailure(prefix, started.stderr)}`);
  const adminUrl = `http://${listen(admin)}`;
  const up = await waitForAdmin(`${adminUrl}/status`, () => readPid(prefix), (opts.timeout ?? 15) * 1000);
  if (!up) {
    const reason = nginxFailure(prefix, "");
    await stopGateway(prefix).catch(() => undefined);
    throw new GatewayError(`the gateway did not answer on ${adminUrl}: ${reason}`);
  }
  return { proxyUrl: `http://${listen(proxy)}`, adminUrl, prefix, pid: readPid(prefix)! };
}

/** Stops the gateway under `prefix` (graceful QUIT, then TERM, then KILL). Returns false if none ran. */
export async function stopGateway(prefixArg: string): Promise<boolean> {
  const prefix = resolve(prefixArg);
  const pid = readPid(prefix);
  if (pid === undefined || !isAlive(pid)) return false;
  const signals: [NodeJS.Signals, number][] = [["SIGQUIT", 5000], ["SIGTERM", 3000], ["SIGKILL", 2000]];
  for (const [signal, waitMs] of signals) {
    try {
      process.kill(pid, signal);
    } catch {
      return true;
    }
    const deadline = Date.now() + waitMs;
    while (Date.now() < deadline) {
      if (!isAlive(pid)) return true;
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  // nginx workers are children of the master; make sure none outlive it.
  try {
    execFileSync("pkill", ["-KILL", "-P", String(pid)]);
  } catch {
    // none left
  }
  return !isAlive(pid);
}

const USAGE = `usage:
  krs gateway start --config FILE --prefix DIR [--proxy HOST:PORT] [--admin HOST:PORT] [--workers N]
  krs gateway stop --prefix DIR

environment: KONG_PLUGINS (default "bundled"), KONG_LUA_PACKAGE_PATH, KONG_LOG_LEVEL,
  KONG_LUA_SSL_TRUSTED_CERTIFICATE (default "system"), KONG_LUA_SSL_VERIFY_DEPTH (default 1), KONG_TRUSTED_IPS (default none),
  KONG_REAL_IP_HEADER (default X-Real-IP), KONG_REAL_IP_RECURSIVE (default off), KRS_NGINX`;

export async function gatewayCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "start") {
    const args = parseArgs(rest, ["config", "prefix", "proxy", "admin", "workers"]);
    const config = args.flags.get("config");
    const prefix = args.flags.get("prefix");
    if (config === undefined || prefix === undefined) throw new UsageError("gateway start needs --config FILE and --prefix DIR");
    if (args.positional.length > 0) throw new UsageError(`unexpected argument '${args.positional[0]}'`);
    const workersFlag = args.flags.get("workers");
    const workers = workersFlag !== undefined ? Number(workersFlag) : undefined;
    if (workersFlag !== undefined && !/^\d+$/.test(workersFlag)) throw new UsageError(`--workers: expected a number, got '${workersFlag}'`);
    const gw = await startGateway({ config, prefix, proxy: args.flags.get("proxy"), admin: args.flags.get("admin"), workers });
    console.log(`gateway started (pid ${gw.pid}): proxy ${gw.proxyUrl}, admin ${gw.adminUrl}, prefix ${gw.prefix}`);
    return 0;
  }
  if (sub === "stop") {
    const args = parseArgs(rest, ["prefix"]);
    const prefix = args.flags.get("prefix");
    if (prefix === undefined) throw new UsageError("gateway stop needs --prefix DIR");
    const stopped = await stopGateway(prefix);
    console.log(stopped ? `gateway stopped (${resolve(prefix)})` : `no gateway running under ${resolve(prefix)}`);
    return 0;
  }
  if (sub === undefined || sub === "help" || sub === "--help") {
    console.log(USAGE);
    return 0;
  }
  throw new UsageError(`gateway: unknown subcommand '${sub}' (start, stop; krs gateway --help)`);
}

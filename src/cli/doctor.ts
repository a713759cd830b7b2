/**
 * `krs doctor --config kong.yml`: checks a deployment and prints one line per finding with
 * what to do. Facts are gathered first (the config, each plugin's Redis reached with that
 * plugin's own settings, each server's policy, persistence, version and clock), then
 * judged by `evaluate`, a pure function. Exit 0 all good, 1 warnings, 2 errors.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { Option } from "commander";
import { type Cluster, Redis, type RedisOptions } from "ioredis";
import { parse as parseYaml } from "yaml";
import { failureLine, jsonOption, UsageError, type Register } from "./command.js";
import { expandPlugins } from "./gateway.js";
import { knownPlugins } from "./key-kinds.js";
import { suiteRoot } from "./paths.js";
import { connectFor, dataNodes, redactedUrl } from "./redis.js";
import { paint } from "./ui.js";

/** Multi-field HSET in the scripts (redis-lua/); UNLINK and MEMORY USAGE in krs. */
export const MIN_REDIS_VERSION = "4.0.0";
/** redis-rate-limit keeps counters 2 s past their window for clock skew; more than that over- or under-counts. */
export const MAX_CLOCK_SKEW_MS = 2000;
/** Plugins whose data is credentials or revocations: lost on a Redis restart without persistence. */
const CREDENTIAL_PLUGINS = ["redis-key-auth", "redis-jwt"];
/** Plugins whose keys (many with a TTL) any eviction, allkeys-* or volatile-*, turns into wrong answers. */
const EVICTION_SENSITIVE = ["redis-rate-limit", "redis-key-auth", "redis-jwt", "redis-usage", "redis-ip-access"];
/**
 * Kong's bundled plugins (kong/constants.lua BUNDLED_PLUGINS, Kong 3.9): a real Kong config
 * carries them next to the suite's, and the local gateway has no schema for them.
 */
export const KONG_BUNDLED_PLUGINS = [
  "jwt", "acl", "correlation-id", "cors", "oauth2", "tcp-log", "udp-log", "file-log", "http-log", "key-auth", "hmac-auth", "basic-auth",
  "ip-restriction", "request-transformer", "response-transformer", "request-size-limiting", "rate-limiting", "response-ratelimiting",
  "syslog", "loggly", "datadog", "ldap-auth", "statsd", "bot-detection", "aws-lambda", "request-termination", "prometheus", "proxy-cache",
  "session", "acme", "grpc-gateway", "grpc-web", "pre-function", "post-function", "azure-functions", "zipkin", "opentelemetry",
  "ai-proxy", "ai-prompt-decorator", "ai-prompt-template", "ai-prompt-guard", "ai-request-transformer", "ai-response-transformer",
  "standard-webhooks", "redirect",
];

/** info: said, never counted towards the exit status. */
export type Level = "ok" | "info" | "warn" | "error";
export interface Finding {
  level: Level;
  message: string;
  /** What to do; absent for ok. */
  fix?: string;
}

export interface RedisSettings {
  host: string;
  port: number;
  database: number;
  username?: string;
  password?: string;
  ssl: boolean;
  ssl_verify: boolean;
  server_name?: string;
  timeout: number;
  cluster_nodes?: { ip: string; port: number }[];
  sentinel_master?: string;
  sentinel_role?: "master" | "slave" | "any";
  sentinel_nodes?: { host: string; port: number }[];
  sentinel_username?: string;
  sentinel_password?: string;
}

export interface PluginUse {
  name: string;
  /** Where in the file: `route demo`, `global`, … */
  where: string;
  redis: RedisSettings;
  /** Vault references this shell could not resolve (env var unset). */
  unresolved: string[];
}

export interface ServerFacts {
  endpoint: string;
  version?: string;
  maxmemoryPolicy?: string;
  maxmemory?: number;
  usedMemory?: number;
  /** undefined: CONFIG GET refused (managed Redis). */
  persistence?: { aof: boolean; rdb: boolean };
  clockSkewMs?: number;
  cluster?: boolean;
  /** One master of a cluster or the sentinels' master: host:port. */
  node?: string;
}

export interface Facts {
  config: string;
  /** Kong bundled plugins in the file, left out of validation. */
  notValidated?: string[];
  /** One line from the validator, or undefined when the file validates. */
  invalid?: string;
  /** Further problems in the file, one line each (each plugin entry validated alone). */
  moreInvalid?: string[];
  uses: PluginUse[];
  /** Per use, in the same order: undefined = reached and authenticated. */
  connectErrors: (string | undefined)[];
  servers: ServerFacts[];
}

function endpointOf(r: RedisSettings): string {
  if (r.cluster_nodes !== undefined) return `redis-cluster://${r.cluster_nodes.map((n) => `${n.ip}:${n.port}`).join(",")}`;
  if (r.sentinel_master !== undefined && r.sentinel_nodes !== undefined) return `redis-sentinel://${r.sentinel_nodes.map((n) => `${n.host}:${n.port}`).join(",")}/${r.sentinel_master}`;
  return `${r.ssl ? "rediss" : "redis"}://${r.host}:${r.port}/${r.database}`;
}

/** `host:port` of an endpoint, without scheme, credentials or database. */
function serverOf(endpoint: string): string {
  return endpoint.replace(/^[a-z]+:\/\/(?:[^@/]*@)?/, "").replace(/\/\d*$/, "");
}

function versionAtLeast(version: string, min: string): boolean {
  const a = version.split(".").map(Number);
  const b = min.split(".").map(Number);
  for (let i = 0; i < 3; i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  return true;
}

/** Turns a connection error into what to change. */
function connectFix(error: string): string {
  if (/without any password configured/i.test(error)) return "Redis has no password: remove config.redis.password (the gateway's AUTH is refused), or set requirepass";
  if (/WRONGPASS|invalid username-password|invalid password/i.test(error)) return "set config.redis.password (and username with ACLs) to what Redis expects";
  if (/NOAUTH|Authentication required/i.test(error)) return "Redis requires a password: set config.redis.password";
  if (/DB index is out of range/i.test(error)) return "set config.redis.database within Redis's `databases`";
  if (/ECONNREFUSED/.test(error)) return "start Redis there, or fix config.redis.host/port";
  if (/ETIMEDOUT|timed out|timeout/i.test(error)) return "check the network path and config.redis.timeout";
  if (/SSL|TLS|certificate|wrong version number/i.test(error)) return "match config.redis.ssl/ssl_verify/server_name to the server's TLS setup";
  return "fix config.redis so this node can reach Redis";
}

/** The judgement: pure, so every rule is tested without planting each problem. */
export function evaluate(f: Facts): Finding[] {
  const out: Finding[] = [];
  if (f.invalid !== undefined) out.push({ level: "error", message: `${f.config}: ${f.invalid}`, fix: f.invalid.startsWith("cannot validate") ? "run make build (or check that luajit is installed)" : "fix the file: the gateway refuses to start with it" });
  for (const more of f.moreInvalid ?? []) out.push({ level: "error", message: `${f.config}: ${more}`, fix: "fix the file: the gateway refuses to start with it" });
  if (f.invalid === undefined) out.push({ level: "ok", message: `${f.config}: every ${f.notValidated?.length ? "suite " : ""}plugin known and valid` });
  if (f.notValidated?.length) out.push({ level: "info", message: `${f.config}: Kong bundled plugins not validated here: ${f.notValidated.join(", ")}` });
  const present = new Set(f.uses.map((u) => u.name));
  /** Which plugins keep data on a server: policy and persistence are the server's, whatever the database. */
  const usersOf = (s: ServerFacts): Set<string> => {
    const server = serverOf(s.endpoint);
    const users = f.uses.filter((u) => serverOf(endpointOf(u.redis)) === server).map((u) => u.name);
    // A --redis server no plugin names: judged by everything in the file.
    return users.length > 0 ? new Set(users) : present;
  };
  f.uses.forEach((u, i) => {
    for (const ref of u.unresolved) out.push({ level: "warn", message: `${u.name} (${u.where}): ${ref} is not set in this environment, so it resolves to ""`, fix: "export it where the gateway runs (Kong's env vault reads the same variable)" });
    const err = f.connectErrors[i];
    if (err === undefined) out.push({ level: "ok", message: `${u.name} (${u.where}): Redis ${endpointOf(u.redis)} reachable with its settings` });
    else out.push({ level: "error", message: `${u.name} (${u.where}): Redis ${endpointOf(u.redis)}: ${err}`, fix: connectFix(err) });
  });
  for (const s of f.servers) {
    const at = `Redis ${s.endpoint}${s.node !== undefined ? ` (master ${s.node})` : ""}`;
    const users = usersOf(s);
    if (s.version !== undefined) {
      if (versionAtLeast(s.version, MIN_REDIS_VERSION)) out.push({ level: "ok", message: `${at}: version ${s.version}` });
      else out.push({ level: "error", message: `${at}: version ${s.version} is older than ${MIN_REDIS_VERSION}, which the scripts need (multi-field HSET)`, fix: `upgrade Redis to ${MIN_REDIS_VERSION} or newer` });
    }
    const policy = s.maxmemoryPolicy;
    if (policy === undefined) out.push({ level: "warn", message: `${at}: could not read maxmemory-policy (CONFIG GET refused)`, fix: "check it in your provider's console: it must not be allkeys-*" });
    else if (policy.startsWith("allkeys-") && (users.size === 0 || EVICTION_SENSITIVE.some((p) => users.has(p)))) {
      const hit = EVICTION_SENSITIVE.filter((p) => users.has(p));
      out.push({
        level: "warn",
        message: `${at}: maxmemory-policy ${policy} can evict any key: ${hit.length > 0 ? hit.join(", ") + ": " : ""}evicted rate-limit counters over-admit, evicted API keys are refused, evicted revocations revive tokens`,
        fix: "use noeviction, and a separate Redis for redis-cache",
      });
    } else if (policy.startsWith("volatile-") && EVICTION_SENSITIVE.some((p) => users.has(p))) {
      const hit = EVICTION_SENSITIVE.filter((p) => users.has(p));
      out.push({
        level: "warn",
        message: `${at}: maxmemory-policy ${policy} evicts exactly the keys with a TTL: ${hit.join(", ")}: rate-limit counters, API keys with a TTL, ip-access bans and lists`,
        fix: "use noeviction, and a separate Redis for redis-cache",
      });
    } else if (policy === "noeviction" && users.has("redis-cache") && s.maxmemory && s.usedMemory !== undefined && s.usedMemory >= 0.9 * s.maxmemory) {
      out.push({ level: "warn", message: `${at}: noeviction with memory ${Math.round((100 * s.usedMemory) / s.maxmemory)}% full: writes (cache stores, counters) start failing at maxmemory`, fix: "raise maxmemory, lower cache_ttl, or give redis-cache its own Redis with volatile-lru" });
    } else out.push({ level: "ok", message: `${at}: maxmemory-policy ${policy}` });
    const creds = CREDENTIAL_PLUGINS.filter((p) => users.has(p));
    if (creds.length > 0) {
      if (s.persistence === undefined) out.push({ level: "warn", message: `${at}: could not read persistence settings (CONFIG GET refused) while ${creds.join(", ")} keep credentials there`, fix: "make sure AOF or RDB snapshots are on" });
      else if (!s.persistence.aof && !s.persistence.rdb) out.push({ level: "warn", message: `${at}: persistence is off (no AOF, no RDB) while ${creds.join(", ")} keep credentials there: a restart loses every API key`, fix: "turn on appendonly yes (or RDB snapshots)" });
      else out.push({ level: "ok", message: `${at}: persistence ${s.persistence.aof ? "AOF" : "RDB"}` });
    }
    if (s.clockSkewMs !== undefined) {
      if (Math.abs(s.clockSkewMs) > MAX_CLOCK_SKEW_MS) out.push({ level: "warn", message: `${at}: clock ${s.clockSkewMs > 0 ? "ahead of" : "behind"} this host by ${Math.abs(s.clockSkewMs)} ms (more than ${MAX_CLOCK_SKEW_MS} ms): windows and TTLs disagree`, fix: "run NTP (chrony) on the gateways and the Redis host" });
      else out.push({ level: "ok", message: `${at}: clock within ${Math.abs(s.clockSkewMs)} ms of this host` });
    }
  }
  return out;
}

export function exitStatus(findings: Finding[]): number {
  if (findings.some((f) => f.level === "error")) return 2;
  return findings.some((f) => f.level === "warn") ? 1 : 0;
}

// ------------------------------------------------------------------ gathering facts

/** Kong's env vault: `{vault://env/my-secret}` reads MY_SECRET. */
function resolveVault(value: unknown, unresolved: string[]): string | undefined {
  if (typeof value !== "string") return undefined;
  const m = /^\{vault:\/\/env\/([^/}#?]+)\}$/.exec(value.trim());
  if (m === null) return value;
  const name = m[1].toUpperCase().replace(/-/g, "_");
  const v = process.env[name];
  if (v === undefined) unresolved.push(name);
  return v ?? "";
}

function redisSettings(config: Record<string, unknown> | undefined, unresolved: string[]): RedisSettings {
  const r = (config?.redis ?? {}) as Record<string, unknown>;
  return {
    host: (r.host as string) ?? "127.0.0.1",
    port: Number(r.port ?? 6379),
    database: Number(r.database ?? 0),
    username: resolveVault(r.username, unresolved) || undefined,
    password: resolveVault(r.password, unresolved) || undefined,
    ssl: r.ssl === true,
    ssl_verify: r.ssl_verify === true,
    server_name: (r.server_name as string) ?? undefined,
    timeout: Number(r.timeout ?? 2000),
    cluster_nodes: Array.isArray(r.cluster_nodes) && r.cluster_nodes.length > 0 ? (r.cluster_nodes as { ip: string; port: number }[]) : undefined,
    sentinel_master: typeof r.sentinel_master === "string" ? r.sentinel_master : undefined,
    sentinel_role: (r.sentinel_role as RedisSettings["sentinel_role"]) ?? undefined,
    sentinel_nodes: Array.isArray(r.sentinel_nodes) && r.sentinel_nodes.length > 0 ? (r.sentinel_nodes as { host: string; port: number }[]) : undefined,
    sentinel_username: resolveVault(r.sentinel_username, unresolved) || undefined,
    sentinel_password: resolveVault(r.sentinel_password, unresolved) || undefined,
  };
}

/** Where a connection went: a sentinel-backed client's options name no host, the socket does. */
function nodeAddress(node: Redis): string {
  return `${node.stream?.remoteAddress ?? node.options.host}:${node.stream?.remotePort ?? node.options.port}`;
}

/** A cluster or sentinel deployment rather than one host:port. */
function isTopology(r: RedisSettings): boolean {
  return r.cluster_nodes !== undefined || (r.sentinel_master !== undefined && r.sentinel_nodes !== undefined);
}

/**
 * Connects to a cluster's or sentinel's Redis as the plugins' config says, through
 * redisFor (as the tests and the CLI do); the servers holding the data (every master).
 */
async function tryTopology(r: RedisSettings): Promise<{ client?: Redis | Cluster; error?: string }> {
  try {
    const client = await connectFor({ ...r, sentinel_master: r.sentinel_master ?? null, sentinel_nodes: r.sentinel_nodes ?? null, cluster_nodes: r.cluster_nodes ?? null }, r.ssl, endpointOf(r));
    await Promise.all(dataNodes(client).map((n) => n.ping()));
    return { client };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

/**
 * A plugin outside the suite with a config.redis record (Kong's rate-limiting) keeps data
 * there only with policy redis; without a policy field, only when it names a host: never
 * connect-tested with the defaults filled in.
 */
function usesItsRedis(config: any): boolean {
  if (config === null || typeof config !== "object" || config.redis === null || typeof config.redis !== "object") return false;
  if (config.policy !== undefined) return config.policy === "redis";
  return typeof config.redis.host === "string";
}

/** A copy of the file without the plugin entries `drop` picks (called once per entry, in file order). */
function filterPlugins(doc: any, drop: (plugin: any, index: number) => boolean): unknown {
  const copy = structuredClone(doc);
  let index = 0;
  const strip = (holder: any) => {
    if (holder === null || typeof holder !== "object" || !Array.isArray(holder.plugins)) return;
    holder.plugins = holder.plugins.filter((p: any) => !drop(p, index++));
  };
  strip(copy);
  for (const s of Array.isArray(copy?.services) ? copy.services : []) {
    strip(s);
    for (const r of Array.isArray(s?.routes) ? s.routes : []) strip(r);
  }
  for (const key of ["routes", "consumers", "consumer_groups"]) for (const e of Array.isArray(copy?.[key]) ? copy[key] : []) strip(e);
  return copy;
}

/** The file with Kong's bundled plugins left out (the local gateway has no schema for them), and their names. */
export function withoutBundledPlugins(doc: any): { doc: unknown; removed: string[] } {
  const bundled = new Set(KONG_BUNDLED_PLUGINS);
  const suite = new Set(knownPlugins());
  const removed = new Set<string>();
  const copy = filterPlugins(doc, (p) => {
    const drop = p !== null && typeof p === "object" && bundled.has(p.name) && !suite.has(p.name);
    if (drop) removed.add(p.name);
    return drop;
  });
  return { doc: copy, removed: [...removed].sort() };
}

/** Validations beyond the first: one per plugin entry, so one bad entry does not hide the others. */
const MAX_ENTRY_VALIDATIONS = 50;

/**
 * Every problem the validator finds, not only its first: the loader stops at the first
 * invalid entity, so each plugin entry is validated alone (the others left out), then the
 * entities without any plugin.
 */
function validateEach(doc: unknown): string[] {
  const first = validate(doc);
  if (first === undefined) return [];
  if (first.startsWith("cannot validate")) return [first];
  let entries = 0;
  filterPlugins(doc, () => (entries++, false));
  const found = new Set<string>([first]);
  for (let i = 0; i < Math.min(entries, MAX_ENTRY_VALIDATIONS); i++) {
    const e = validate(filterPlugins(doc, (_p, index) => index !== i));
    if (e !== undefined) found.add(e);
  }
  const entities = validate(filterPlugins(doc, () => true));
  if (entities !== undefined) found.add(entities);
  return [...found];
}

/** Every Redis-backed plugin in the file, where it is. */
export function redisPlugins(doc: any): PluginUse[] {
  const uses: PluginUse[] = [];
  const suite = new Set(knownPlugins());
  const visit = (plugins: unknown, where: string) => {
    if (!Array.isArray(plugins)) return;
    for (const p of plugins) {
      if (p === null || typeof p !== "object" || typeof p.name !== "string") continue;
      if (!suite.has(p.name) && !usesItsRedis(p.config)) continue;
      const unresolved: string[] = [];
      uses.push({ name: p.name, where, redis: redisSettings(p.config, unresolved), unresolved });
    }
  };
  visit(doc?.plugins, "global");
  for (const s of Array.isArray(doc?.services) ? doc.services : []) {
    visit(s?.plugins, `service ${s?.name ?? "?"}`);
    for (const r of Array.isArray(s?.routes) ? s.routes : []) visit(r?.plugins, `route ${r?.name ?? "?"}`);
  }
  for (const r of Array.isArray(doc?.routes) ? doc.routes : []) visit(r?.plugins, `route ${r?.name ?? "?"}`);
  for (const c of Array.isArray(doc?.consumers) ? doc.consumers : []) visit(c?.plugins, `consumer ${c?.username ?? c?.custom_id ?? "?"}`);
  return uses;
}

/** The gateway's own validator (build/gateway/krs/gateway/validate.lua on LuaJIT): the same checks as `krs gateway start`. */
function validate(doc: unknown): string | undefined {
  const root = suiteRoot();
  const validator = join(root, "build", "gateway", "krs", "gateway", "validate.lua");
  if (!existsSync(validator)) return `cannot validate: the gateway is not built (${validator}); run make build`;
  const dir = mkdtempSync(join(tmpdir(), "krs-doctor-"));
  try {
    writeFileSync(join(dir, "config.json"), JSON.stringify(doc ?? {}), { mode: 0o600 });
    writeFileSync(join(dir, "gateway.json"), JSON.stringify({ plugins: expandPlugins(process.env.KONG_PLUGINS ?? "bundled", root) }), { mode: 0o600 });
    const luaPath = [...(process.env.KONG_LUA_PACKAGE_PATH ?? "").split(";").filter((p) => p !== ""), join(root, "kong-plugins", "?.lua"), join(root, "build", "gateway", "?.lua")].join(";") + ";";
    const check = spawnSync("luajit", ["-e", `package.path=${JSON.stringify(luaPath)}..package.path`, validator, join(dir, "gateway.json"), join(dir, "config.json")], { encoding: "utf8" });
    if (check.error) return `cannot validate: ${check.error.message}`;
    if (check.status === 0) return undefined;
    return (check.stderr || check.stdout).trim().split("\n")[0].replace(/^invalid declarative config: /, "") || `validation failed (exit ${check.status})`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function connectOptions(r: RedisSettings): RedisOptions {
  return {
    host: r.host,
    port: r.port,
    tls: r.ssl ? { rejectUnauthorized: r.ssl_verify, servername: r.server_name } : undefined,
    // RESP2, as lua-resty-redis speaks: no HELLO before our own AUTH.
    protocol: 2,
    // The ready check (INFO) would run before our AUTH.
    enableReadyCheck: false,
    connectTimeout: Math.max(1, r.timeout),
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    enableOfflineQueue: false,
  };
}

/**
 * Connects, then sends AUTH and SELECT itself, as the gateway does (src/lib/redis/client.ts):
 * ioredis would let an AUTH refused by a Redis without a password pass with a warning, where
 * the gateway refuses the connection.
 */
async function tryConnect(options: RedisOptions, auth: { username?: string; password?: string; database: number }): Promise<{ redis?: Redis; error?: string }> {
  const redis = new Redis(options);
  let reason: Error | undefined;
  redis.on("error", (e: Error) => (reason = e));
  try {
    await redis.connect();
    if (auth.password !== undefined) {
      try {
        await (auth.username !== undefined ? redis.call("AUTH", auth.username, auth.password) : redis.call("AUTH", auth.password));
      } catch (e) {
        throw new Error(`AUTH refused: ${(e as Error).message}`);
      }
    }
    if (auth.database !== 0) await redis.select(auth.database);
    await redis.ping();
    return { redis };
  } catch (e) {
    redis.disconnect();
    const message = (e instanceof Error && e.message.startsWith("AUTH refused") ? e : (reason ?? (e as Error))).message;
    // Never a password in a finding, whatever the server echoes.
    return { error: auth.password ? message.split(auth.password).join("***") : message };
  }
}

async function serverFacts(redis: Redis, endpoint: string): Promise<ServerFacts> {
  const facts: ServerFacts = { endpoint };
  const info = await redis.info();
  const field = (name: string) => new RegExp(`^${name}:(.*)$`, "m").exec(info)?.[1]?.trim();
  facts.version = field("redis_version");
  facts.usedMemory = Number(field("used_memory") ?? NaN);
  facts.cluster = field("cluster_enabled") === "1";
  try {
    const [, policy] = (await redis.config("GET", "maxmemory-policy")) as string[];
    const [, maxmemory] = (await redis.config("GET", "maxmemory")) as string[];
    const [, save] = (await redis.config("GET", "save")) as string[];
    const [, aof] = (await redis.config("GET", "appendonly")) as string[];
    facts.maxmemoryPolicy = policy;
    facts.maxmemory = Number(maxmemory);
    facts.persistence = { aof: aof === "yes", rdb: (save ?? "").trim() !== "" };
  } catch {
    // CONFIG is often renamed away on managed Redis: reported as unknown, not as a failure.
  }
  const before = Date.now();
  const [sec, usec] = await redis.time();
  const after = Date.now();
  facts.clockSkewMs = Math.round(Number(sec) * 1000 + Number(usec) / 1000 - (before + after) / 2);
  return facts;
}

export async function gather(configPath: string, extraRedisUrl?: string): Promise<Facts> {
  if (!existsSync(configPath)) throw new UsageError(`--config: no such file ${configPath}`);
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(configPath, "utf8"));
  } catch (e) {
    return { config: configPath, invalid: `YAML syntax error: ${(e as Error).message.split("\n")[0]}`, uses: [], connectErrors: [], servers: [] };
  }
  const suiteOnly = withoutBundledPlugins(doc);
  const [invalid, ...moreInvalid] = validateEach(suiteOnly.doc);
  const facts: Facts = { config: configPath, invalid, moreInvalid, notValidated: suiteOnly.removed, uses: redisPlugins(doc), connectErrors: [], servers: [] };
  const seen = new Map<string, Redis | undefined>();
  const topologies = new Map<string, Redis | Cluster>();
  try {
    for (const u of facts.uses) {
      if (isTopology(u.redis)) {
        const { client, error } = await tryTopology(u.redis);
        facts.connectErrors.push(error);
        const endpoint = endpointOf(u.redis);
        if (client !== undefined && !topologies.has(endpoint)) {
          topologies.set(endpoint, client);
          for (const node of dataNodes(client)) facts.servers.push({ ...(await serverFacts(node, endpoint)), node: nodeAddress(node) });
        } else client?.disconnect();
        continue;
      }
      const { redis, error } = await tryConnect(connectOptions(u.redis), u.redis);
      facts.connectErrors.push(error);
      const endpoint = endpointOf(u.redis);
      if (redis !== undefined && !seen.has(endpoint)) {
        seen.set(endpoint, redis);
        facts.servers.push(await serverFacts(redis, endpoint));
      } else redis?.disconnect();
    }
    if (extraRedisUrl !== undefined) {
      const { auth, ...target } = parseUrl(extraRedisUrl);
      const { redis, error } = await tryConnect({ ...connectOptions({ host: "127.0.0.1", port: 6379, database: 0, ssl: false, ssl_verify: false, timeout: 5000 }), ...target }, auth);
      if (redis === undefined) throw new Error(`could not connect to redis at ${redactedUrl(extraRedisUrl)}: ${error}`);
      facts.servers.push(await serverFacts(redis, redactedUrl(extraRedisUrl)));
      redis.disconnect();
    }
  } finally {
    for (const r of seen.values()) r?.disconnect();
    for (const c of topologies.values()) c.disconnect();
  }
  return facts;
}

function parseUrl(url: string): RedisOptions & { auth: { username?: string; password?: string; database: number } } {
  if (!/^rediss?:\/\//.test(url)) throw new UsageError(`--redis: expected redis://[user:pass@]host:port/db, got '${url}'`);
  const u = new URL(url);
  return {
    host: u.hostname || "127.0.0.1",
    port: Number(u.port || 6379),
    tls: u.protocol === "rediss:" ? {} : undefined,
    auth: {
      username: u.username ? decodeURIComponent(u.username) : undefined,
      password: u.password ? decodeURIComponent(u.password) : undefined,
      database: Number(u.pathname.replace(/^\//, "") || 0),
    },
  };
}

export function formatFinding(f: Finding): string {
  const tag = f.level === "ok" ? paint("green", "ok   ") : f.level === "info" ? "info " : f.level === "warn" ? paint("yellow", "warn ") : paint("red", "error");
  return `${tag} ${f.message}${f.fix ? ` → ${f.fix}` : ""}`;
}

export const registerDoctor: Register = (program: Command, run) => {
  program
    .command("doctor")
    .description("check a deployment: Redis reachable with each plugin's settings, eviction policy, persistence, version, clocks, the config valid; exit 0 ok, 1 warnings, 2 errors")
    .addOption(new Option("--config <file>", "the declarative config (kong.yml)").makeOptionMandatory())
    .addOption(new Option("--redis <url>", "also check this Redis server, with the URL's credentials (redis://[user:pass@]host:port/db, rediss:// for TLS)"))
    .addOption(jsonOption())
    .action(
      run("doctor", async (opts: { config: string; redis?: string; json?: boolean }) => {
        let facts: Facts;
        try {
          facts = await gather(resolve(opts.config), opts.redis);
        } catch (e) {
          if (e instanceof UsageError) throw e;
          console.error(failureLine("doctor", e));
          return 2;
        }
        const findings = evaluate({ ...facts, config: opts.config });
        console.log(opts.json ? JSON.stringify({ findings, status: exitStatus(findings) }, null, 2) : findings.map(formatFinding).join("\n"));
        return exitStatus(findings);
      }),
    );
};

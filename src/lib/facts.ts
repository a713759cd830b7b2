/**
 * Request facts: what the suite's plugins did in one request, for the plugins that report
 * it (redis-metrics, structured-log). One record in kong.ctx.shared.krs, written only
 * through the functions below, read only through get(). A writer pays one table write
 * and no allocation beyond its own entry; nothing here reaches Redis or the log.
 *
 * The record is plain data (strings, numbers, booleans, arrays of records): a reader may
 * encode it as JSON as it is. Field names are snake_case like Kong's serializer.
 */

/** Redis accounting of one plugin, or of the whole request. */
export interface RedisFacts {
  round_trips: number;
  /** Milliseconds spent waiting on Redis. */
  time_ms: number;
  /** Calls that failed: network errors, timeouts, open circuit, error replies. */
  errors: number;
}

/** redis-cache's answer, with Kong proxy-cache's status names (the X-Cache-Status value). */
export type CacheStatus = "Hit" | "Miss" | "Refresh" | "Bypass" | "Stale" | "Wait";

/** Where a limit decision came from. */
export type DecisionSource =
  /** Redis answered for this request. */
  | "redis"
  /** The worker's memory: a remembered rejection, a lease, a batched quota view. */
  | "worker"
  /** Redis failed and fault_tolerant let the request through. */
  | "fault";

export interface LimitFacts {
  plugin: string;
  /** "rate" (redis-rate-limit) or "quota" (redis-usage). */
  kind: "rate" | "quota";
  admitted: boolean;
  source: DecisionSource;
  /** The limit that decided (the tightest window or quota), and what is left of it. */
  limit?: number;
  remaining?: number;
}

export type AuthResult =
  /** A credential identified the consumer. */
  | "ok"
  /** No credential was sent; the anonymous consumer (if set) was used. */
  | "anonymous"
  /** No credential where one is required. */
  | "missing"
  /** A credential nobody has (unknown key, unknown token issuer). */
  | "unknown"
  /** A malformed or badly signed credential. */
  | "invalid"
  | "expired"
  | "revoked"
  /** It could not be checked (Redis down, fault_tolerant false). */
  | "error";

export interface AuthFacts {
  plugin: string;
  result: AuthResult;
  /** The consumer's id when one was identified (never the credential itself). */
  consumer_id?: string;
  /** Kong's message for a refusal ("No API key found in request", ...). */
  reason?: string;
}

export interface AccessFacts {
  plugin: string;
  allowed: boolean;
  /** e.g. "deny", "allow", "ban", "list". */
  reason?: string;
}

export interface PluginError {
  plugin: string;
  /** Already free of secrets: the same text the plugin logs. */
  message: string;
}

/**
 * Where an auth plugin reads credentials (names from its config), so a logger can redact
 * a key sent under a name only that route knows. Prepared once per config: writers hand
 * over the same table on every request.
 */
export interface CredentialNames {
  plugin: string;
  headers: string[];
  query: string[];
  /** It reads a cookie: the whole Cookie header is a credential. */
  cookies: boolean;
}

export interface RequestFacts {
  /** Every Redis call this request made. */
  redis: RedisFacts;
  /** The same per plugin, when the plugin said who it was (enter()). */
  redis_by_plugin: Record<string, RedisFacts>;
  cache?: { plugin: string; status: CacheStatus };
  limits?: LimitFacts[];
  auth?: AuthFacts;
  access?: AccessFacts;
  errors?: PluginError[];
  /** Every auth plugin that looked for a credential in this request, and where. */
  credential_names?: CredentialNames[];
  /** The plugin making Redis calls now (set by enter()). */
  current?: string;
}

const SHARED_KEY = "krs";

const REQUEST_PHASES = new LuaTable<string, boolean>();
for (const phase of ["rewrite", "access", "content", "header_filter", "body_filter", "log", "balancer"]) REQUEST_PHASES.set(phase, true);


/**
 * The plugins that read the facts (redis-metrics with suite_metrics, structured-log), set
 * from their `configure`: while none is configured, every writer returns at once (no
 * table, no ngx.ctx lookup), so a plugin that records facts costs nothing for them.
 */
const readers = new LuaTable<string, boolean>();
let reading = false;

/** A reader plugin's `configure`: whether any of its configs reads the facts. */
export function setReader(this: void, plugin: string, reads: boolean): void {
  if (reads) readers.set(plugin, true);
  else readers.delete(plugin);
  reading = next(readers)[0] !== undefined;
}

/** Whether any reader is configured: writers may skip building what they would record. */
export function recording(this: void): boolean {
  return reading && REQUEST_PHASES.has(ngx.get_phase());
}

/** True in a request's phases (timers and init have no request to record on). */
export function inRequest(this: void): boolean {
  return REQUEST_PHASES.has(ngx.get_phase());
}

/**
 * Shared by every record until its first Redis call: a new record costs one table. Never
 * written: redisCall() gives the record its own tables first. Readers only read them.
 */
const NO_REDIS: RedisFacts = { round_trips: 0, time_ms: 0, errors: 0 };
const NO_PLUGINS: Record<string, RedisFacts> = {};

/** This request's facts, created on first use. Only call in a request phase. */
function facts(this: void): RequestFacts {
  const shared = kong.ctx.shared;
  let f = shared[SHARED_KEY] as RequestFacts | undefined;
  if (f === undefined) {
    f = { redis: NO_REDIS, redis_by_plugin: NO_PLUGINS };
    shared[SHARED_KEY] = f;
  }
  return f;
}

/** This request's facts for a reader, or undefined when no plugin recorded any. */
export function get(this: void): RequestFacts | undefined {
  if (!inRequest()) return undefined;
  return kong.ctx.shared[SHARED_KEY] as RequestFacts | undefined;
}

/** The Redis calls that follow, until the next enter(), are this plugin's. */
export function enter(this: void, plugin: string): void {
  if (!reading || !inRequest()) return;
  facts().current = plugin;
}

/** One logical Redis call that made `roundTrips` round trips and took `ms`. */
export function redisCall(this: void, roundTrips: number, ms: number, failed: boolean): void {
  if (!reading || !inRequest()) return;
  const f = facts();
  let total = f.redis;
  if (total === NO_REDIS) {
    total = { round_trips: 0, time_ms: 0, errors: 0 };
    f.redis = total;
  }
  total.round_trips += roundTrips;
  total.time_ms += ms;
  if (failed) total.errors++;
  const plugin = f.current;
  if (plugin === undefined) return;
  let byPlugin = f.redis_by_plugin;
  if (byPlugin === NO_PLUGINS) {
    byPlugin = {};
    f.redis_by_plugin = byPlugin;
  }
  let mine = byPlugin[plugin];
  if (mine === undefined) {
    mine = { round_trips: 0, time_ms: 0, errors: 0 };
    byPlugin[plugin] = mine;
  }
  mine.round_trips += roundTrips;
  mine.time_ms += ms;
  if (failed) mine.errors++;
}

export function cache(this: void, plugin: string, status: CacheStatus): void {
  if (!reading || !inRequest()) return;
  facts().cache = { plugin, status };
}

/**
 * A limit decision (LimitFacts), given field by field: with no reader configured no
 * record is built at all.
 */
export function limit(this: void, plugin: string, kind: "rate" | "quota", admitted: boolean, source: DecisionSource, limitValue?: number, remaining?: number): void {
  if (!reading || !inRequest()) return;
  const f = facts();
  const decision: LimitFacts = { plugin, kind, admitted, source, limit: limitValue, remaining };
  const limits = f.limits;
  if (limits === undefined) f.limits = [decision];
  else limits[limits.length] = decision;
}

export function auth(this: void, plugin: string, result: AuthResult, consumerId?: string, reason?: string): void {
  if (!reading || !inRequest()) return;
  facts().auth = { plugin, result, consumer_id: consumerId, reason };
}

/** An auth plugin looks for a credential under these names (a table prepared per config). */
export function credentialNames(this: void, names: CredentialNames): void {
  if (!reading || !inRequest()) return;
  const f = facts();
  const all = f.credential_names;
  if (all === undefined) f.credential_names = [names];
  else all[all.length] = names;
}

export function access(this: void, plugin: string, allowed: boolean, reason?: string): void {
  if (!reading || !inRequest()) return;
  facts().access = { plugin, allowed, reason };
}

/** A plugin error of this request; at most MAX_ERRORS kept (a loop of failures stays bounded). */
export const MAX_ERRORS = 16;
export function error(this: void, plugin: string, message: string): void {
  if (!reading || !inRequest()) return;
  const f = facts();
  const errors = f.errors;
  if (errors === undefined) f.errors = [{ plugin, message }];
  else if (errors.length < MAX_ERRORS) errors[errors.length] = { plugin, message };
}

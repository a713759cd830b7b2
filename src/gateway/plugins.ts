/**
 * Plugin loading and execution with Kong's rules: handlers sorted by PRIORITY (high
 * first), one configuration per plugin per request chosen by scope precedence, and each
 * phase guarded so that an error becomes Kong's 500 instead of a dead worker.
 */
import type { GatewayConfig, PluginEntity } from "./config";
import { pdk, requestCtx, type RequestCtx } from "./pdk";

export interface LoadedPlugin {
  name: string;
  priority: number;
  handler: KongPluginHandler<unknown>;
}

type Phase = "rewrite" | "access" | "header_filter" | "body_filter" | "log";

/** One resolved plugin for this request: the handler and the config that applies. */
interface Selected {
  plugin: LoadedPlugin;
  entity: PluginEntity;
  /** Index of the plugin in PluginIndex.ordered. */
  position?: number;
}

/** The plugins of one config, indexed for per-request resolution. */
export interface PluginIndex {
  /** Every plugin used by the config, PRIORITY high → low, then by name. */
  ordered: LoadedPlugin[];
  /** name → scope key ("service:route:consumer" ids, "" when unset) → entity. */
  byScope: LuaTable<string, LuaTable<string, PluginEntity>>;
  /** Global plugins in order (for requests that never reached access). */
  globals: Selected[];
  /** The global plugins that have a rewrite handler: a request pays no protected call for the others. */
  rewriting: Selected[];
  /**
   * service id → route id ("" when unset) → what applies before any consumer is known,
   * filled on first use: the scope lookups and their key strings are paid once per route
   * and config, not per request. Shared by requests, so never changed once stored.
   */
  anonymous: LuaTable<string, LuaTable<string, Selected[]>>;
  /** The anonymous lists in which some plugin has an access handler. */
  anonymousAccess: LuaTable<Selected[], boolean>;
  /** Whether any plugin of the config has a handler for the phase: when none has, the
   *  phase costs no ngx.ctx lookup and no loop (body_filter runs once per chunk). */
  implemented: LuaTable<Phase, boolean>;
}

const loaded = new LuaTable<string, LoadedPlugin>();

/** require()s a plugin's handler once per worker. */
export function loadHandler(this: void, name: string): LuaMultiReturn<[LoadedPlugin | undefined, string | undefined]> {
  const cached = loaded.get(name);
  if (cached !== undefined) return $multi(cached, undefined);
  const [ok, handler] = pcall(require, `kong.plugins.${name}.handler`);
  if (!ok) return $multi(undefined, `could not load the handler of plugin '${name}': ${tostring(handler)}`);
  if (type(handler) !== "table") return $multi(undefined, `the handler of plugin '${name}' is not a table`);
  const h = handler as KongPluginHandler<unknown>;
  if (type(h.PRIORITY) !== "number") return $multi(undefined, `the handler of plugin '${name}' has no numeric PRIORITY`);
  if (type(h.VERSION) !== "string") return $multi(undefined, `the handler of plugin '${name}' has no VERSION string`);
  const plugin: LoadedPlugin = { name, priority: h.PRIORITY, handler: h };
  loaded.set(name, plugin);
  return $multi(plugin, undefined);
}

export function scopeKey(this: void, serviceId: string | undefined, routeId: string | undefined, consumerId: string | undefined): string {
  return `${serviceId ?? ""}:${routeId ?? ""}:${consumerId ?? ""}`;
}

export function buildIndex(this: void, config: GatewayConfig): LuaMultiReturn<[PluginIndex | undefined, string | undefined]> {
  const byScope = new LuaTable<string, LuaTable<string, PluginEntity>>();
  const ordered: LoadedPlugin[] = [];
  for (const entity of config.plugins) {
    if (!entity.enabled) continue;
    let scopes = byScope.get(entity.name);
    if (scopes === undefined) {
      const [plugin, err] = loadHandler(entity.name);
      if (plugin === undefined) return $multi(undefined, err);
      ordered.push(plugin);
      scopes = new LuaTable();
      byScope.set(entity.name, scopes);
    }
    scopes.set(scopeKey(entity.service?.id, entity.route?.id, entity.consumer?.id), entity);
  }
  table.sort(ordered, (a, b) => (a.priority !== b.priority ? a.priority > b.priority : a.name < b.name));
  const globals: Selected[] = [];
  for (const plugin of ordered) {
    const entity = byScope.get(plugin.name)!.get("::");
    if (entity !== undefined) globals.push({ plugin, entity });
  }
  const implemented = new LuaTable<Phase, boolean>();
  for (const phase of ["rewrite", "access", "header_filter", "body_filter", "log"] as Phase[]) {
    implemented.set(phase, ordered.some((p) => p.handler[phase] !== undefined));
  }
  const rewriting = globals.filter((g) => g.plugin.handler.rewrite !== undefined);
  return $multi({ ordered, byScope, globals, rewriting, anonymous: new LuaTable(), anonymousAccess: new LuaTable(), implemented }, undefined);
}

/**
 * Kong's precedence, most specific first: consumer+route+service, consumer+route,
 * consumer+service, route+service, consumer, route, service, global.
 */
function resolve(this: void, scopes: LuaTable<string, PluginEntity>, s: string, r: string, c: string): PluginEntity | undefined {
  if (c !== "") {
    const e = (r !== "" && s !== "" ? scopes.get(`${s}:${r}:${c}`) : undefined)
      ?? (r !== "" ? scopes.get(`:${r}:${c}`) : undefined)
      ?? (s !== "" ? scopes.get(`${s}::${c}`) : undefined);
    if (e !== undefined) return e;
  }
  return (r !== "" && s !== "" ? scopes.get(`${s}:${r}:`) : undefined)
    ?? (c !== "" ? scopes.get(`::${c}`) : undefined)
    ?? (r !== "" ? scopes.get(`:${r}:`) : undefined)
    ?? (s !== "" ? scopes.get(`${s}::`) : undefined)
    ?? scopes.get("::");
}

/**
 * The handlers run inside one protected call per phase, not one per plugin: a handler that
 * returns into a Lua frame can be compiled by LuaJIT (a trace cannot return into xpcall:
 * "NYI: return to lower frame"), so a plugin's whole phase runs as machine code. An error
 * still names its plugin, and in header_filter, body_filter and log the plugins after it
 * still run (runLate starts a new protected call after the failed one).
 */
interface Running {
  /** The index in the list of the handler running (or that raised). */
  KRS_RUNNING?: number;
}

/** Runs `phase` of list[from], list[from + 1], ... directly. */
function runFrom(this: void, ctx: RequestCtx, list: Selected[], from: number, phase: Phase): void {
  for (let i = from; i < list.length; i++) {
    const selected = list[i];
    const fn = selected.plugin.handler[phase];
    if (fn !== undefined) {
      (ctx as Running).KRS_RUNNING = i;
      ctx.KRS_PLUGIN_NAME = selected.plugin.name;
      ctx.KRS_PLUGIN_KEY = selected.entity.id;
      (fn as unknown as (this: void, self: unknown, conf: unknown) => void)(selected.plugin.handler, selected.entity.config);
    }
  }
  ctx.KRS_PLUGIN_NAME = undefined;
  ctx.KRS_PLUGIN_KEY = undefined;
}

/** After a handler raised: logs the error naming its plugin; returns the failed index. */
function failed(this: void, ctx: RequestCtx, list: Selected[], from: number, phase: Phase, err: unknown): number {
  // KRS_RUNNING is set before each handler runs; a value outside [from, #list) is a former phase's.
  const running = (ctx as Running).KRS_RUNNING;
  const at = running !== undefined && running >= from && running < list.length ? running : from;
  (ctx as Running).KRS_RUNNING = undefined;
  ctx.KRS_PLUGIN_NAME = undefined;
  ctx.KRS_PLUGIN_KEY = undefined;
  ngx.log(ngx.ERR, `[kong] [${list[at].plugin.name}] error in ${phase} phase: ${tostring(err)}`);
  return at;
}

/** Runs `phase` of every plugin in `list` from `from` on; false when one raised (logged). */
function runProtected(this: void, ctx: RequestCtx, list: Selected[], from: number, phase: Phase): boolean {
  const [ok, err] = xpcall(runFrom, debug.traceback, ctx, list, from, phase);
  if (ok) return true;
  failed(ctx, list, from, phase, err);
  return false;
}

/** rewrite: global plugins only (the route is not known yet, as in Kong). Returns whether any ran. */
export function runRewrite(this: void, index: PluginIndex): boolean {
  const rewriting = index.rewriting;
  if (rewriting.length === 0) return false;
  if (!runProtected(requestCtx(), rewriting, 0, "rewrite")) return failRequest();
  return true;
}

function anyAccessHandler(this: void, list: Selected[]): boolean {
  for (const selected of list) if (selected.plugin.handler.access !== undefined) return true;
  return false;
}

/** Appends the plugins from `from` on in `ordered` that apply for (service, route, consumer). */
function selectFrom(this: void, index: PluginIndex, list: Selected[], from: number, s: string, r: string, c: string): void {
  const ordered = index.ordered;
  for (let i = from; i < ordered.length; i++) {
    const plugin = ordered[i];
    const entity = resolve(index.byScope.get(plugin.name)!, s, r, c);
    if (entity !== undefined) list.push({ plugin, entity, position: i });
  }
}

/** The plugins that apply to (service, route) with no consumer, resolved once per config. */
function anonymousSelection(this: void, index: PluginIndex, s: string, r: string): Selected[] {
  let byRoute = index.anonymous.get(s);
  if (byRoute === undefined) {
    byRoute = new LuaTable();
    index.anonymous.set(s, byRoute);
  }
  let list = byRoute.get(r);
  if (list === undefined) {
    list = [];
    selectFrom(index, list, 0, s, r, "");
    byRoute.set(r, list);
    if (anyAccessHandler(list)) index.anonymousAccess.set(list, true);
  }
  return list;
}

/**
 * access: every applicable plugin is selected before any runs, so that when one ends the
 * request (kong.response.exit, an error) the others still get header_filter and log, as in
 * Kong. When a plugin authenticates a consumer, the plugins after it are selected again,
 * so consumer-scoped configs apply to them. Returns whether any access handler was run.
 */
export function runAccess(this: void, index: PluginIndex, ctx: RequestCtx): boolean {
  const s = ctx.service?.id ?? "";
  const r = ctx.route?.id ?? "";
  const c = ctx.authenticated_consumer?.id ?? "";
  // The per-route list is shared between requests: it is copied before a consumer's
  // selection changes it.
  const shared = c === "";
  let list: Selected[];
  if (shared) {
    list = anonymousSelection(index, s, r);
  } else {
    list = [];
    selectFrom(index, list, 0, s, r, c);
  }
  (ctx as { KRS_SELECTED?: Selected[] }).KRS_SELECTED = list;
  // No access handler to run (none applies, or only log/header plugins do): nothing can
  // authenticate a consumer here, so the selection stands and no protected call is paid.
  if (shared ? index.anonymousAccess.get(list) !== true : !anyAccessHandler(list)) return false;
  const [ok, err] = xpcall(accessFrom, debug.traceback, index, ctx, list, shared, s, r, c);
  if (!ok) {
    failed(ctx, (ctx as { KRS_SELECTED?: Selected[] }).KRS_SELECTED ?? list, 0, "access", err);
    return failRequest();
  }
  return true;
}

/** runAccess's loop, inside its protected call: each handler in turn, selecting again after an authentication. */
function accessFrom(this: void, index: PluginIndex, ctx: RequestCtx, list: Selected[], shared: boolean, s: string, r: string, c: string): void {
  for (let i = 0; ; i++) {
    const consumer = ctx.authenticated_consumer?.id ?? "";
    if (consumer !== c) {
      c = consumer;
      // Select again everything after the plugin that just ran: consumer-scoped configs
      // may now apply, including to plugins that had none before.
      const next = i > 0 ? list[i - 1].position! + 1 : 0;
      // The authenticating plugin is often the last one (key-auth alone on a route): then
      // no plugin after it can be selected, and the shared list stays as it is.
      if (next < index.ordered.length) {
        if (shared) {
          const own: Selected[] = [];
          for (let j = 0; j < i; j++) own.push(list[j]);
          list = own;
          shared = false;
          (ctx as { KRS_SELECTED?: Selected[] }).KRS_SELECTED = own;
        } else {
          for (let j = list.length - 1; j >= i; j--) list.pop();
        }
        selectFrom(index, list, next, s, r, c);
      }
    }
    if (i >= list.length) break;
    const selected = list[i];
    const fn = selected.plugin.handler.access;
    if (fn !== undefined) {
      (ctx as Running).KRS_RUNNING = i;
      ctx.KRS_PLUGIN_NAME = selected.plugin.name;
      ctx.KRS_PLUGIN_KEY = selected.entity.id;
      (fn as unknown as (this: void, self: unknown, conf: unknown) => void)(selected.plugin.handler, selected.entity.config);
    }
  }
  ctx.KRS_PLUGIN_NAME = undefined;
  ctx.KRS_PLUGIN_KEY = undefined;
}

/** header_filter, body_filter, log: the plugins chosen in access (or the globals). */
export function runLate(this: void, index: PluginIndex, phase: "header_filter" | "body_filter" | "log", ctx?: RequestCtx): void {
  if (index.implemented.get(phase) !== true) return;
  ctx = ctx ?? requestCtx();
  const list = (ctx as { KRS_SELECTED?: Selected[] }).KRS_SELECTED ?? index.globals;
  if (list.length === 0) return;
  // No loop on the way that raises nothing: LuaJIT aborts a trace that meets an inner
  // loop, and would leave the whole phase's entry to the interpreter.
  const [ok, err] = xpcall(runFrom, debug.traceback, ctx, list, 0, phase);
  if (!ok) runAfterFailure(ctx, list, failed(ctx, list, 0, phase, err) + 1, phase);
}

/** The plugins after one that raised, each failure logged and skipped. */
function runAfterFailure(this: void, ctx: RequestCtx, list: Selected[], from: number, phase: Phase): void {
  while (from < list.length) {
    const [ok, err] = xpcall(runFrom, debug.traceback, ctx, list, from, phase);
    if (ok) return;
    from = failed(ctx, list, from, phase, err) + 1;
  }
}

function failRequest(this: void): never {
  requestCtx().KRS_UNEXPECTED = true;
  // As Kong: Kong's error body, in the format the client's Accept asks for.
  return pdk.response.error(500);
}

/**
 * Kong 3's `configure` phase, after each config change: every loaded plugin gets its
 * enabled configs, or nil when none uses it (so it can stop what it started).
 */
export function runConfigure(this: void, _index: PluginIndex, config: GatewayConfig): void {
  for (const [, plugin] of pairs(loaded)) {
    const configure = plugin.handler.configure;
    if (configure === undefined) continue;
    const configs: unknown[] = [];
    for (const entity of config.plugins) if (entity.enabled && entity.name === plugin.name) configs.push(entity.config);
    const [ok, err] = xpcall(configure as (this: unknown, c: unknown) => void, debug.traceback, plugin.handler, configs.length > 0 ? configs : undefined);
    if (!ok) ngx.log(ngx.ERR, `[kong] [${plugin.name}] error in configure phase: ${tostring(err)}`);
  }
}

export function runInitWorker(this: void, index: PluginIndex): void {
  for (const plugin of index.ordered) {
    const initWorker = plugin.handler.init_worker;
    if (initWorker === undefined) continue;
    const [ok, err] = xpcall(initWorker as (this: unknown) => void, debug.traceback, plugin.handler);
    if (!ok) ngx.log(ngx.ERR, `[kong] [${plugin.name}] error in init_worker phase: ${tostring(err)}`);
  }
}

/**
 * nginx entry points of the local gateway; nginx.conf calls one per phase:
 * init (master), init_worker, access (Kong's rewrite, then access), balancer, header_filter, body_filter, log,
 * plus the error page (upstream failures) and the Admin API.
 */
import * as cjson from "cjson.safe";
import * as balancer from "ngx.balancer";
import { errorBody, errorMessage, normalizePath, pdk, publishWorkerMemory, requestCtx, requestId, responseType, seedRandom, setCtxStash, setNodeId } from "./pdk";
import { loadHandler, runAccess, runInitWorker, runLate, runRewrite } from "./plugins";
import { activate, build, getOptions, getRuntime, initialConfig, setOptions, sync, type GatewayOptions } from "./runtime";
import { handleAdmin } from "./admin";
import type { RouteMatch } from "./router";

/** Debian installs lua-resty-redis and lua-resty-string as nginx.*; Kong's code says resty.*. */
const DEBIAN_ALIASES = ["redis", "string", "sha1", "sha256", "sha512", "md5", "aes", "random"];

interface LuaPackage {
  loaded: LuaTable<string, unknown>;
  path: string;
  searchpath(this: void, name: string, path: string): LuaMultiReturn<[string | undefined, string | undefined]>;
}
// `package` is a reserved word in TypeScript.
const luaPackage = (_G as unknown as { package: LuaPackage }).package;

function aliasDebianModules(this: void): void {
  for (const name of DEBIAN_ALIASES) {
    const restyName = "resty." + name;
    if (luaPackage.loaded.get(restyName) !== undefined) continue;
    const [found] = luaPackage.searchpath(restyName, luaPackage.path);
    if (found !== undefined) continue;
    const [ok, mod] = pcall(require, "nginx." + name);
    if (ok) luaPackage.loaded.set(restyName, mod);
  }
}

type JsonEncode = (this: void, value: unknown) => LuaMultiReturn<[string | undefined, string | undefined]>;
interface CjsonModule {
  encode: JsonEncode;
  encode_escape_forward_slash?: (this: void, escape: boolean) => void;
}

/**
 * Kong runs cjson with encode_escape_forward_slash off, so "/" stays "/" in every JSON a
 * plugin writes; Debian's lua-cjson 2.1.0 has no such switch and writes "\/". The gateway
 * gives both modules Kong's output: each "\/" loses its one escaping backslash (escaped
 * backslashes come in pairs before it, and stay).
 */
function unescapeForwardSlashes(this: void): void {
  for (const name of ["cjson", "cjson.safe"]) {
    const [ok, loaded] = pcall(require, name);
    if (!ok || type(loaded) !== "table") continue;
    const mod = loaded as CjsonModule;
    if (mod.encode_escape_forward_slash !== undefined) {
      mod.encode_escape_forward_slash(false);
      continue;
    }
    const encode = mod.encode;
    if (encode("/")[0] === '"/"') continue;
    mod.encode = (value) => {
      const [json, err] = encode(value);
      if (json === undefined || string.find(json, "\\/", 1, true)[0] === undefined) return $multi(json, err);
      return $multi(string.gsub(json, "\\/", "/")[0], undefined);
    };
  }
}

function readFile(this: void, path: string): string {
  const [file, err] = io.open(path, "r");
  if (file === undefined) error(`could not read ${path}: ${err}`, 0);
  const text = file.read("*a") as string;
  file.close();
  return text;
}

function decodeFile(this: void, path: string): unknown {
  const [value, err] = cjson.decode(readFile(path));
  if (value === undefined) error(`could not parse ${path}: ${err}`, 0);
  return value;
}

/** Where and how the balancer connects for one service: the same for all its requests. */
interface Upstream {
  host: string;
  port: number;
  retries: number;
  connect_timeout: number;
  send_timeout: number;
  read_timeout: number;
  /** All three are nginx's own (the template sets none: 60 s each), so the balancer need not set them. */
  nginx_timeouts: boolean;
}

const NGINX_TIMEOUT = 60;

const hostsFile = new LuaTable<string, string>();

/** Names the balancer can reach without a resolver: IP literals, /etc/hosts, localhost. */
function resolveHost(this: void, host: string): string | undefined {
  if (string.find(host, "^%d+%.%d+%.%d+%.%d+$")[0] !== undefined) return host;
  if (string.find(host, ":", 1, true)[0] !== undefined) return host;
  return hostsFile.get(string.lower(host));
}

function loadHostsFile(this: void): void {
  hostsFile.set("localhost", "127.0.0.1");
  const [file] = io.open("/etc/hosts", "r");
  if (file === undefined) return;
  for (const [line] of file.lines()) {
    const content = string.gsub(line as string, "#.*$", "")[0];
    const [ip, names] = string.match(content, "^%s*(%S+)%s+(.+)$");
    if (ip !== undefined && names !== undefined && string.find(ip, ":", 1, true)[0] === undefined) {
      for (const [name] of string.gmatch(names, "%S+")) {
        const key = string.lower(name as string);
        if (!hostsFile.has(key)) hostsFile.set(key, ip);
      }
    }
  }
  file.close();
}

/**
 * A service's upstream, resolved and converted once per service table (a new config builds
 * new service tables, so nothing stale is kept); false when its host cannot be resolved.
 */
const upstreams = setmetatable(new LuaTable<object, Upstream | false>(), { __mode: "k" });

function upstreamOf(this: void, service: ServiceOf): Upstream | undefined {
  const known = upstreams.get(service);
  if (known !== undefined) return known === false ? undefined : known;
  const ip = resolveHost(service.host);
  const connectTimeout = (service.connect_timeout ?? 60000) / 1000;
  const sendTimeout = (service.write_timeout ?? 60000) / 1000;
  const readTimeout = (service.read_timeout ?? 60000) / 1000;
  const upstream: Upstream | undefined = ip === undefined ? undefined : {
    host: ip,
    port: service.port,
    retries: service.retries ?? 5,
    connect_timeout: connectTimeout,
    send_timeout: sendTimeout,
    read_timeout: readTimeout,
    nginx_timeouts: connectTimeout === NGINX_TIMEOUT && sendTimeout === NGINX_TIMEOUT && readTimeout === NGINX_TIMEOUT,
  };
  upstreams.set(service, upstream ?? false);
  return upstream;
}

// ---------------------------------------------------------------- init

/**
 * LuaJIT's limit of constants per trace (maxirconst, 500 by default) is below what the
 * access phase needs once the router, the upstream headers and a few plugins are inlined:
 * at 500 its trace aborts ("trace too long"), is blacklisted and the whole phase runs in
 * the interpreter (callgrind: about 8k more instructions per request on the bare gateway).
 * The gateway's own setting, made before the workers fork; Kong leaves LuaJIT's defaults.
 */
const LUAJIT_OPTIONS = ["maxirconst=2000"];

export function init(this: void, optionsFile: string): void {
  jit.opt.start(...LUAJIT_OPTIONS);
  aliasDebianModules();
  unescapeForwardSlashes();
  loadHostsFile();
  const options = decodeFile(optionsFile) as GatewayOptions;
  setOptions(options);
  setNodeId(options.node_id);
  (_G as { kong?: KongPdk }).kong = pdk;
  for (const name of options.plugins) {
    const [plugin, err] = loadHandler(name);
    if (plugin === undefined) error(err!, 0);
  }
  // The config file, or the Admin API changes persisted since it was last started (runtime.ts).
  const [input, json, from] = initialConfig();
  const [runtime, err] = build(input, 1);
  if (runtime === undefined) error(`invalid declarative config in ${from}: ${err}`, 0);
  const dict = ngx.shared["krs_gateway"]!;
  dict.set("config_json", json);
  dict.set("config_version", 1);
  activate(runtime);
}

export function initWorker(this: void): void {
  seedRandom();
  const runtime = getRuntime()!;
  runInitWorker(runtime.plugins);
  activate(runtime);
  // Workers without traffic still adopt new configs (and run `configure`) promptly.
  publishWorkerMemory();
  ngx.timer.every(1, (premature) => {
    if (premature) return;
    sync();
    publishWorkerMemory();
  });
}

// ---------------------------------------------------------------- proxy phases

/** Requests whose ctx must survive nginx's internal redirect to the error page. */
const stashed = new LuaTable<string, RequestCtx>();
type RequestCtx = ReturnType<typeof requestCtx>;


/**
 * Bytes Kong escapes in the upstream path (kong.tools.uri.escape): anything but unreserved,
 * reserved and "%", so existing escapes stay as they are and no space, CRLF or control byte
 * reaches the upstream request line.
 */
const UNSAFE_PATH_BYTE = "[^%w!#%$&'%(%)%*%+,/:;=%?@%[%]%-_%.~%%]";

function percentEncode(this: void, c: string): string {
  return string.format("%%%02X", string.byte(c));
}

export function escapePath(this: void, path: string): string {
  if (string.find(path, UNSAFE_PATH_BYTE)[0] === undefined) return path;
  return string.gsub(path, UNSAFE_PATH_BYTE, percentEncode)[0];
}

const SERVER = "krs-gateway/0.1.0";
const VIA = "1.1 " + SERVER;
const NO_ROUTE = "no Route matched with those values";

/** Hop-by-hop headers nginx's proxy module already handles itself (Kong's list). */
const CONNECTION_TOKENS_KEPT = new LuaTable<string, boolean>();
for (const token of ["keep-alive", "close", "upgrade"]) CONNECTION_TOKENS_KEPT.set(token, true);

/** As Kong: the headers the client's Connection header names are not forwarded. */
function clearHopByHopHeaders(this: void): void {
  const connection = ngx.var["http_connection"];
  if (connection === undefined || CONNECTION_TOKENS_KEPT.has(string.lower(connection))) return;
  const upgrading = ngx.var["upstream_connection"] !== "keep-alive";
  for (const [token] of string.gmatch(string.lower(connection), "[^,%s]+")) {
    if (token === "upgrade") {
      if (!upgrading) ngx.req.clear_header("upgrade");
    } else if (token !== "keep-alive" && token !== "close") {
      ngx.req.clear_header(token as string);
    }
  }
}

function stashCtx(this: void, ctx?: RequestCtx): void {
  ctx = ctx ?? requestCtx();
  stashed.set(requestId(ctx), ctx);
}
setCtxStash(() => stashCtx());

type ServiceOf = NonNullable<ReturnType<typeof requestCtx>["service"]>;

/** The Host a service's requests carry upstream (its port only when not the scheme's), once per service table. */
const hostHeaders = setmetatable(new LuaTable<object, string>(), { __mode: "k" });

function hostHeaderOf(this: void, service: ServiceOf): string {
  let host = hostHeaders.get(service);
  if (host === undefined) {
    const defaultPort = service.protocol === "https" ? 443 : 80;
    host = service.port === defaultPort ? service.host : `${service.host}:${service.port}`;
    hostHeaders.set(service, host);
  }
  return host;
}

/**
 * What the upstream request carries from the route and the client, taken before plugins
 * run, as Kong does (a plugin's clear_header does not change X-Forwarded-For). A variable
 * the nginx.conf already holds at its default is not set again: each ngx.var write is a
 * lookup by name.
 */
function setUpstreamHeaders(this: void, match: RouteMatch, service: ServiceOf, rawPath: string): void {
  const vars = ngx.var;
  if (service.protocol !== "http") vars["upstream_scheme"] = service.protocol;
  vars["upstream_host"] = match.route.preserve_host === true ? vars["http_host"] ?? service.host : hostHeaderOf(service);
  vars["upstream_x_forwarded_path"] = rawPath;
  const prefix = match.stripped_prefix;
  if (prefix !== undefined && prefix !== "/" && prefix !== "") vars["upstream_x_forwarded_prefix"] = prefix;
  let forwardedFor = vars["http_x_forwarded_for"];
  // None sent: nginx.conf's default, $remote_addr, stands.
  if (forwardedFor === undefined) return;
  const remoteAddr = vars["remote_addr"] ?? "";
  if (string.find(forwardedFor, ", ", 1, true)[0] !== undefined) {
    // nginx joins repeated headers; Kong (kong.tools.http.get_header) takes the first one.
    const [requestHeaders] = ngx.req.get_headers();
    const values = requestHeaders.get("x-forwarded-for");
    forwardedFor = type(values) === "table" ? (values as string[])[0] : (values as string | undefined);
  }
  // As Kong: the peer that sent the header is appended (realip_remote_addr: the trusted
  // proxy, not the address the realip module took from the header).
  const peerAddr = vars["realip_remote_addr"] ?? remoteAddr;
  vars["upstream_x_forwarded_for"] = forwardedFor !== undefined ? `${forwardedFor}, ${peerAddr}` : remoteAddr;
}

export function access(this: void): void {
  // Kong's rewrite phase: global plugins only, before routing.
  sync();
  const runtime = getRuntime()!;
  const rewritten = runRewrite(runtime.plugins);
  const ctx = requestCtx();
  const method = ngx.req.get_method();
  // The path as the client sent it (still escaped, no query): X-Forwarded-Path, and once
  // normalized what routing and kong.request.get_path see.
  const requestUri = ngx.var["request_uri"] ?? "/";
  const [queryAt] = string.find(requestUri, "?", 1, true);
  const rawPath = queryAt !== undefined ? string.sub(requestUri, 1, queryAt - 1) : requestUri;
  const path = normalizePath(rawPath);
  ctx.KRS_PATH = path;
  const router = runtime.router;
  // Host is read only when some route matches on it (each ngx.var read is a lookup by name).
  const match = router.match(method, router.usesHosts ? ngx.var["http_host"] : undefined, path);
  if (match === undefined) return pdk.response.error(404, NO_ROUTE);
  const service = runtime.config.servicesById.get(match.route.service?.id ?? "");
  ctx.route = runtime.routesById.get(match.route.id);
  ctx.service = service;
  if (service === undefined) {
    // Kong answers a route without a service once plugins had their say.
    runAccess(runtime.plugins, ctx);
    return pdk.response.error(503, "no Service found with those values");
  }

  ctx.KRS_UPSTREAM_URI = match.upstream_uri;
  setUpstreamHeaders(match, service, rawPath);

  // Without a handler run in rewrite or access the query is still the client's: no read of
  // $args for it.
  const pluginsRan = runAccess(runtime.plugins, ctx) || rewritten;
  finishAccess(ctx, match, service, requestUri, pluginsRan ? undefined : queryAt ?? false);
}

/** A route match's upstream path, escaped once per match (the router keeps its matches). */
const escapedUris = setmetatable(new LuaTable<RouteMatch, string>(), { __mode: "k" });

function escapedUriOf(this: void, match: RouteMatch): string {
  let escaped = escapedUris.get(match);
  if (escaped === undefined) {
    escaped = escapePath(match.upstream_uri);
    escapedUris.set(match, escaped);
  }
  return escaped;
}

/**
 * After the plugins: the upstream request as they left it, and the peer for the balancer.
 * `clientQueryAt`: when no plugin ran, the position of the "?" in the request URI (false
 * for none), which then still gives the query; undefined: read $args.
 */
function finishAccess(this: void, ctx: RequestCtx, match: RouteMatch, service: ServiceOf, requestUri: string, clientQueryAt: number | false | undefined): void {
  clearHopByHopHeaders();
  // Plugins may have changed the path (set_path) or the query (set_raw_query,
  // hide_credentials): the upstream URI is final only now, as in Kong. An empty "?" the
  // client sent stays.
  const finalArgs = clientQueryAt === false ? undefined : clientQueryAt !== undefined ? string.sub(requestUri, clientQueryAt + 1) : ngx.var["args"];
  const upstreamPath = ctx.KRS_UPSTREAM_URI ?? match.upstream_uri;
  const finalPath = upstreamPath === match.upstream_uri ? escapedUriOf(match) : escapePath(upstreamPath);
  ngx.var["upstream_uri"] = (finalArgs !== undefined && finalArgs !== "") || string.byte(requestUri, -1) === 63
    ? `${finalPath}?${finalArgs ?? ""}`
    : finalPath;

  const upstream = upstreamOf(service);
  if (upstream === undefined) return pdk.response.error(503, "name resolution failed");
  (ctx as { KRS_UPSTREAM?: Upstream }).KRS_UPSTREAM = upstream;
  ctx.KRS_ACCESS_ENDED = ngx.now();
  stashCtx(ctx);
}

export function balancerPhase(this: void): void {
  const ctx = requestCtx() as RequestCtx & { KRS_UPSTREAM?: Upstream };
  const upstream = ctx.KRS_UPSTREAM;
  if (upstream === undefined) return ngx.exit(500);
  ctx.KRS_PROXIED = true;
  // One record per try (kong.log.serialize's `tries`); none yet: the first try.
  let tries = ctx.KRS_TRIES;
  if (tries === undefined) {
    balancer.set_more_tries(upstream.retries);
    if (!upstream.nginx_timeouts) balancer.set_timeouts(upstream.connect_timeout, upstream.send_timeout, upstream.read_timeout);
    tries = [];
    ctx.KRS_TRIES = tries;
  }
  // ngx.now() is nginx's cached clock: it cannot move while the peer is set, so the
  // balancer's latency is 0 ms, as measured with it.
  const startedAt = ngx.now();
  const [ok, err] = balancer.set_current_peer(upstream.host, upstream.port);
  tries.push({ ip: upstream.host, port: upstream.port, balancer_start: math.floor(startedAt * 1000), balancer_latency: 0 });
  if (ok === undefined) {
    ngx.log(ngx.ERR, "[kong] could not set the upstream peer: ", err);
    return ngx.exit(500);
  }
}

function restoreStashedCtx(this: void): void {
  const id = ngx.var["kong_request_id"];
  if (id === undefined || id === "") return;
  const saved = stashed.get(id);
  if (saved !== undefined) ngx.ctx = saved as unknown as typeof ngx.ctx;
}

/**
 * The error page (Kong's error handler): nginx's own errors (bad requests, an unreachable
 * or timing-out upstream) and bodyless exits with an error status. The body follows Accept
 * (else the request's Content-Type, else text/plain, Kong's error_default_type).
 */
export function errorPage(this: void): void {
  restoreStashedCtx();
  const ctx = requestCtx();
  ctx.KRS_UNEXPECTED = true;
  // nginx's "request header too large" is a 400 on the wire, as in Kong.
  const status = ngx.status === 494 ? 400 : ngx.status;
  const message = errorMessage(ngx.status);
  const accept = pdk.request.get_header("accept") ?? pdk.request.get_header("content-type") ?? "text/plain";
  const contentType = responseType(accept);
  const body = errorBody(contentType, message) ?? message;
  ngx.status = status;
  ngx.header["Content-Type"] = contentType;
  ngx.header["Content-Length"] = tostring(body.length);
  ngx.print(body);
}

function elapsedMs(this: void, from: number, to: number): string {
  return tostring(math.max(0, math.floor((to - from) * 1000 + 0.5)));
}

export function headerFilter(this: void): void {
  const runtime = getRuntime()!;
  const ctx = requestCtx();
  const accessEnded = ctx.KRS_ACCESS_ENDED;
  const fromUpstream = ctx.KRS_PROXIED === true && accessEnded !== undefined;
  // As Kong, before the plugins' header_filter: how long the upstream took to answer
  // (kong.log.serialize's latencies.proxy in Kong, redis-metrics' upstream latency). nginx
  // refreshed its clock when the upstream's answer woke it up: no update_time() (which
  // formats every cached time string) on the proxied path.
  if (fromUpstream) ctx.KONG_WAITING_TIME = math.max(0, math.floor((ngx.now() - accessEnded) * 1000 + 0.5));
  runLate(runtime.plugins, "header_filter", ctx);
  // Kong's own headers come after the plugins', so a plugin cannot remove them.
  const header = ngx.header;
  header["X-Kong-Request-Id"] = requestId(ctx);
  if (fromUpstream || ctx.KONG_PROXIED === true) {
    if (fromUpstream) {
      header["X-Kong-Upstream-Latency"] = tostring(ctx.KONG_WAITING_TIME ?? 0);
      header["X-Kong-Proxy-Latency"] = elapsedMs(ngx.req.start_time(), accessEnded);
    } else {
      // A plugin answered in the upstream's place and said so, as Kong's runloop reads it.
      const waiting = ctx.KONG_WAITING_TIME;
      const proxyLatency = ctx.KONG_PROXY_LATENCY;
      if (waiting !== undefined) header["X-Kong-Upstream-Latency"] = tostring(math.floor(waiting));
      if (proxyLatency !== undefined) header["X-Kong-Proxy-Latency"] = tostring(math.floor(proxyLatency));
    }
    // As Kong: the upstream's own Via, then ours (what a plugin set is replaced). A request
    // the balancer never saw has no upstream response to read it from.
    const upstreamVia = ctx.KRS_PROXIED === true ? ngx.var["upstream_http_via"] : undefined;
    header["Via"] = upstreamVia === undefined ? VIA : `${upstreamVia}, ${VIA}`;
    if (header["Server"] === undefined) header["Server"] = SERVER;
  } else {
    ngx.update_time();
    header["X-Kong-Response-Latency"] = elapsedMs(ngx.req.start_time(), ngx.now());
    // Kong leaves Server out when a plugin's exit already says Via: <its server token>.
    if (header["Via"] !== SERVER) header["Server"] = SERVER;
  }
}

export function bodyFilter(this: void): void {
  const ctx = requestCtx();
  const exitBody = ctx.KRS_EXIT_BODY;
  if (exitBody !== undefined) {
    // kong.response.exit in header_filter: its body replaces the upstream's. Emptying a
    // chunk drops its end-of-body mark, so the upstream's last chunk sets it again: an
    // empty exit body would otherwise never end the response.
    if (ctx.KRS_EXIT_BODY_SENT === true || exitBody === "") {
      ctx.KRS_EXIT_BODY_SENT = true;
      const last = ngx.arg[2];
      ngx.arg[1] = "";
      if (last === true) ngx.arg[2] = true;
    } else {
      ctx.KRS_EXIT_BODY_SENT = true;
      ngx.arg[1] = exitBody;
      ngx.arg[2] = true;
    }
  }
  runLate(getRuntime()!.plugins, "body_filter", ctx);
}

export function log(this: void): void {
  // A proxied request carries its stash key in ctx; after the error page's internal
  // redirect nginx hands log a fresh ctx, so look the saved one up by request id.
  let ctx = requestCtx();
  let id = ctx.KRS_REQUEST_ID;
  if (id === undefined) {
    restoreStashedCtx();
    ctx = requestCtx();
    id = ctx.KRS_REQUEST_ID;
  }
  runLate(getRuntime()!.plugins, "log", ctx);
  if (id !== undefined) stashed.delete(id);
}

// ---------------------------------------------------------------- admin

export function admin(this: void): void {
  sync();
  handleAdmin();
}

export { getOptions };

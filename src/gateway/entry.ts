/**
 * nginx entry points of the local gateway; nginx.conf calls one per phase:
 * init (master), init_worker, rewrite, access, balancer, header_filter, body_filter, log,
 * plus the error page (upstream failures) and the Admin API.
 */
import * as cjson from "cjson.safe";
import * as balancer from "ngx.balancer";
import { pdk, requestCtx, setNodeId, ERROR_MESSAGES } from "./pdk";
import { loadHandler, runAccess, runInitWorker, runLate, runRewrite } from "./plugins";
import { activate, build, getOptions, getRuntime, initialConfig, setOptions, sync, type GatewayOptions } from "./runtime";
import { handleAdmin } from "./admin";

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

interface Upstream {
  host: string;
  port: number;
  retries: number;
  connect_timeout: number;
  send_timeout: number;
  read_timeout: number;
  tries: number;
}

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

// ---------------------------------------------------------------- init

export function init(this: void, optionsFile: string): void {
  aliasDebianModules();
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
  const runtime = getRuntime()!;
  runInitWorker(runtime.plugins);
  activate(runtime);
  // Workers without traffic still adopt new configs (and run `configure`) promptly.
  ngx.timer.every(1, (premature) => {
    if (!premature) sync();
  });
}

// ---------------------------------------------------------------- proxy phases

/** Requests whose ctx must survive nginx's internal redirect to the error page. */
const stashed = new LuaTable<string, RequestCtx>();
type RequestCtx = ReturnType<typeof requestCtx>;

export function rewrite(this: void): void {
  sync();
  runRewrite(getRuntime()!.plugins);
}

/** Bytes that may not stand raw in a request-target path (RFC 3986 pchar and "/"). */
const UNSAFE_PATH_BYTE = "[^%w%-%._~!$&'()*+,;=:@/]";

function percentEncode(this: void, c: string): string {
  return string.format("%%%02X", string.byte(c));
}

export function escapePath(this: void, path: string): string {
  if (string.find(path, UNSAFE_PATH_BYTE)[0] === undefined) return path;
  return string.gsub(path, UNSAFE_PATH_BYTE, percentEncode)[0];
}

const SERVER = "krs-gateway/0.1.0";
const NO_ROUTE = { message: "no Route matched with those values" };

export function access(this: void): void {
  const runtime = getRuntime()!;
  const ctx = requestCtx();
  const method = ngx.req.get_method();
  const match = runtime.router.match(method, ngx.var["http_host"], ngx.var["uri"] ?? "/");
  if (match === undefined) return pdk.response.exit(404, NO_ROUTE);
  const service = runtime.config.servicesById.get(match.route.service?.id ?? "");
  ctx.route = runtime.routesById.get(match.route.id);
  ctx.service = service;
  if (service === undefined) {
    // Kong answers a route without a service once plugins had their say.
    runAccess(runtime.plugins);
    return pdk.response.exit(503, { message: "no Service found with those values" });
  }

  ctx.KRS_UPSTREAM_URI = match.upstream_uri;
  ngx.var["upstream_scheme"] = service.protocol;
  const defaultPort = service.protocol === "https" ? 443 : 80;
  ngx.var["upstream_host"] = match.route.preserve_host === true
    ? ngx.var["http_host"] ?? service.host
    : service.port === defaultPort ? service.host : `${service.host}:${service.port}`;
  // The path as the client sent it (still escaped), without the query, as Kong sends it.
  const requestUri = ngx.var["request_uri"] ?? "/";
  const [queryAt] = string.find(requestUri, "?", 1, true);
  ngx.var["upstream_x_forwarded_path"] = queryAt !== undefined ? string.sub(requestUri, 1, queryAt - 1) : requestUri;
  ngx.var["upstream_x_forwarded_prefix"] = match.route.strip_path === true && match.matched_path !== undefined && string.sub(match.matched_path, 1, 1) !== "~" ? match.matched_path : "";

  runAccess(runtime.plugins);
  // Plugins may have changed the path (set_path) or the query (set_raw_query,
  // hide_credentials): the upstream URI is final only now, as in Kong.
  // The router works on nginx's decoded $uri: escape again, or a client could smuggle
  // a "?", "#", space or CRLF into the upstream request line.
  const finalArgs = ngx.var["args"];
  const finalPath = escapePath(ctx.KRS_UPSTREAM_URI ?? match.upstream_uri);
  ngx.var["upstream_uri"] = finalArgs !== undefined && finalArgs !== "" ? `${finalPath}?${finalArgs}` : finalPath;

  const ip = resolveHost(service.host);
  if (ip === undefined) return pdk.response.exit(503, { message: "name resolution failed" });
  (ctx as { KRS_UPSTREAM?: Upstream }).KRS_UPSTREAM = {
    host: ip,
    port: service.port,
    retries: service.retries ?? 5,
    connect_timeout: (service.connect_timeout ?? 60000) / 1000,
    send_timeout: (service.write_timeout ?? 60000) / 1000,
    read_timeout: (service.read_timeout ?? 60000) / 1000,
    tries: 0,
  };
  const requestId = ngx.var["request_id"];
  if (requestId !== undefined) {
    ctx.KRS_REQUEST_ID = requestId;
    stashed.set(requestId, ctx);
  }
}

export function balancerPhase(this: void): void {
  const ctx = requestCtx();
  const upstream = (ctx as { KRS_UPSTREAM?: Upstream }).KRS_UPSTREAM;
  if (upstream === undefined) return ngx.exit(500);
  ctx.KRS_PROXIED = true;
  if (upstream.tries === 0) {
    balancer.set_more_tries(upstream.retries);
    balancer.set_timeouts(upstream.connect_timeout, upstream.send_timeout, upstream.read_timeout);
  }
  upstream.tries++;
  const [ok, err] = balancer.set_current_peer(upstream.host, upstream.port);
  if (ok === undefined) {
    ngx.log(ngx.ERR, "[kong] could not set the upstream peer: ", err);
    return ngx.exit(500);
  }
}

function restoreStashedCtx(this: void): void {
  const requestId = ngx.var["request_id"];
  if (requestId === undefined) return;
  const saved = stashed.get(requestId);
  if (saved !== undefined) ngx.ctx = saved as unknown as typeof ngx.ctx;
}

/** Content of the error page nginx jumps to when the upstream fails (502/503/504). */
export function errorPage(this: void): void {
  restoreStashedCtx();
  const status = ngx.status;
  const message = ERROR_MESSAGES[status] ?? "An unexpected error occurred";
  const body = cjson.encode({ message })[0]!;
  ngx.header["Content-Type"] = "application/json; charset=utf-8";
  ngx.header["Content-Length"] = tostring(body.length);
  ngx.print(body);
}

export function headerFilter(this: void): void {
  const runtime = getRuntime()!;
  const ctx = requestCtx();
  const started = ngx.req.start_time();
  ngx.header["X-Kong-Request-Id"] = ctx.KRS_REQUEST_ID ?? ngx.var["request_id"];
  if (ctx.KRS_PROXIED === true && ctx.KRS_EXITED !== true) {
    const upstreamTime = tonumber(ngx.var["upstream_header_time"]);
    if (upstreamTime !== undefined) ngx.header["X-Kong-Upstream-Latency"] = tostring(math.floor(upstreamTime * 1000 + 0.5));
    ngx.header["Via"] = "1.1 " + SERVER;
  } else {
    ngx.header["Server"] = SERVER;
    ngx.update_time();
    ngx.header["X-Kong-Response-Latency"] = tostring(math.floor((ngx.now() - started) * 1000 + 0.5));
  }
  runLate(runtime.plugins, "header_filter");
}

export function bodyFilter(this: void): void {
  const ctx = requestCtx();
  const exitBody = ctx.KRS_EXIT_BODY;
  if (exitBody !== undefined) {
    // kong.response.exit in header_filter: its body replaces the upstream's.
    if (ctx.KRS_EXIT_BODY_SENT === true) {
      ngx.arg[1] = "";
    } else {
      ctx.KRS_EXIT_BODY_SENT = true;
      ngx.arg[1] = exitBody;
      ngx.arg[2] = true;
    }
  }
  runLate(getRuntime()!.plugins, "body_filter");
}

export function log(this: void): void {
  // A proxied request carries its stash key in ctx; after the error page's internal
  // redirect nginx hands log a fresh ctx, so look the saved one up by request id.
  let requestId = requestCtx().KRS_REQUEST_ID;
  if (requestId === undefined) {
    restoreStashedCtx();
    requestId = requestCtx().KRS_REQUEST_ID;
  }
  runLate(getRuntime()!.plugins, "log");
  if (requestId !== undefined) stashed.delete(requestId);
}

// ---------------------------------------------------------------- admin

export function admin(this: void): void {
  sync();
  handleAdmin();
}

export { getOptions };

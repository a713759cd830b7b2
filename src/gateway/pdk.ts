/**
 * The local gateway's PDK: Kong's `kong.*` API (the subset in src/types/kong.d.ts) on top
 * of lua-nginx-module, with Kong's semantics (kong/pdk/*.lua). Typed against the same
 * declarations the plugins compile against, so a missing function is a compile error.
 *
 * Per-request state lives in ngx.ctx under KRS_* keys (see RequestCtx).
 */
import * as cjson from "cjson.safe";

const KONG_VERSION = "3.9.0";
const JSON_CONTENT_TYPE = "application/json; charset=utf-8";

/** What the gateway keeps in ngx.ctx for one request. */
export interface RequestCtx {
  KRS_SHARED?: { [key: string]: unknown };
  KRS_PLUGIN_CTX?: LuaTable<string, { [key: string]: unknown }>;
  /** Name and instance key of the plugin whose phase handler is running. */
  KRS_PLUGIN_NAME?: string;
  KRS_PLUGIN_KEY?: string;
  KRS_EXITED?: boolean;
  KRS_PROXIED?: boolean;
  KRS_UNEXPECTED?: boolean;
  /** kong.log.set_serialize_value calls, in order, applied by serialize(). */
  KRS_SERIALIZE?: SerializeOp[];
  /** A body kong.response.exit gave in header_filter; body_filter sends it instead. */
  KRS_EXIT_BODY?: string;
  KRS_EXIT_BODY_SENT?: boolean;
  route?: KongRoute;
  service?: KongService;
  authenticated_consumer?: KongConsumer;
  authenticated_credential?: KongCredential;
  KRS_UPSTREAM_URI?: string;
  /** $request_id, read once in access (the key of the error-page ctx stash). */
  KRS_REQUEST_ID?: string;
}

interface SerializeOp {
  path: string[];
  value: unknown;
  mode: "set" | "add" | "replace";
}

export function requestCtx(this: void): RequestCtx {
  return ngx.ctx as unknown as RequestCtx;
}

// ---------------------------------------------------------------- log

function logPrefix(this: void): string {
  const phase = ngx.get_phase();
  if (phase === "init" || phase === "init_worker" || phase === "timer") return "[kong] ";
  const name = requestCtx().KRS_PLUGIN_NAME;
  return name !== undefined ? `[kong] [${name}] ` : "[kong] ";
}

function makeLogger(this: void, level: number): (this: void, ...args: unknown[]) => void {
  return (...args: unknown[]) => {
    const parts: string[] = [];
    for (const arg of args) parts.push(tostring(arg));
    ngx.log(level, logPrefix(), table.concat(parts));
  };
}

// ---------------------------------------------------------------- request

function firstValue(this: void, value: string | string[] | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (type(value) === "table") return (value as string[])[0];
  return value as string;
}

/** Header name → nginx variable name; names come from plugin code and config, so it stays small. */
const headerVariables = new LuaTable<string, string>();

const request: KongRequestApi = {
  get_header(name) {
    if (type(name) !== "string") error("header name must be a string", 2);
    // As Kong: $http_<name>, so no header count limit can hide a header, and no table is built.
    let variable = headerVariables.get(name);
    if (variable === undefined) {
      variable = "http_" + string.gsub(string.lower(name), "-", "_")[0];
      headerVariables.set(name, variable);
    }
    return ngx.var[variable];
  },
  get_headers(max_headers) {
    const [headers] = ngx.req.get_headers(max_headers ?? 100);
    return headers;
  },
  get_method() {
    return ngx.req.get_method();
  },
  get_path() {
    return ngx.var["uri"] ?? "/";
  },
  get_raw_query() {
    return ngx.var["args"] ?? "";
  },
  get_query(max_args) {
    const [args] = ngx.req.get_uri_args(max_args ?? 100);
    return args;
  },
  get_query_arg(name) {
    const [args] = ngx.req.get_uri_args(100);
    const value = args.get(name);
    if (type(value) === "table") return (value as (string | boolean)[])[0];
    return value as string | boolean | undefined;
  },
  get_scheme() {
    return ngx.var["scheme"] ?? "http";
  },
  get_host() {
    return string.lower(ngx.var["host"] ?? "");
  },
  get_port() {
    return tonumber(ngx.var["server_port"]) ?? 0;
  },
  get_raw_body() {
    ngx.req.read_body();
    const body = ngx.req.get_body_data();
    if (body !== undefined) return $multi(body, undefined);
    if (ngx.req.get_body_file() !== undefined) return $multi(undefined, "request body did not fit into client body buffer, consider raising 'client_body_buffer_size'");
    return $multi("", undefined);
  },
  get_body(mimetype, max_args) {
    let contentType = mimetype ?? request.get_header("content-type");
    if (contentType === undefined) return $multi(undefined, "missing content type", undefined);
    contentType = string.lower(contentType);
    // As Kong: the media type is a prefix of the content type (parameters may follow).
    if (string.find(contentType, "application/x-www-form-urlencoded", 1, true)[0] === 1) {
      ngx.req.read_body();
      if (ngx.req.get_body_data() === undefined && ngx.req.get_body_file() !== undefined) {
        return $multi(undefined, "request body did not fit into client body buffer, consider raising 'client_body_buffer_size'", undefined);
      }
      const [args, err] = ngx.req.get_post_args(max_args ?? 100);
      if (args === undefined) return $multi(undefined, tostring(err), undefined);
      return $multi(args as LuaTable<string, unknown>, undefined, "application/x-www-form-urlencoded");
    }
    if (string.find(contentType, "application/json", 1, true)[0] === 1) {
      const [raw, err] = request.get_raw_body();
      if (raw === undefined) return $multi(undefined, err, undefined);
      const [decoded] = cjson.decode(raw);
      if (type(decoded) !== "table") return $multi(undefined, "invalid json body", undefined);
      return $multi(decoded as LuaTable<string, unknown>, undefined, "application/json");
    }
    // Kong also parses multipart/form-data; the local gateway does not.
    return $multi(undefined, `unsupported content type '${contentType}'`, undefined);
  },
};

// ---------------------------------------------------------------- response

function checkHeader(this: void, name: unknown, value: unknown): void {
  if (type(name) !== "string" || name === "") error("invalid header name: " + tostring(name), 3);
  const t = type(value);
  if (t !== "string" && t !== "number" && t !== "boolean") error(`invalid header value for "${name}": got ${t}, expected string, number or boolean`, 3);
}

/**
 * Statuses Kong's nginx template sends to its error handler: an exit with no body answers
 * its default JSON message. Other statuses without a body get an empty body.
 */
const DEFAULT_BODY_STATUSES = new LuaTable<number, boolean>();
for (const status of [400, 404, 405, 408, 411, 412, 413, 414, 417, 494, 500, 502, 503, 504]) DEFAULT_BODY_STATUSES.set(status, true);

function send(this: void, status: number, body: string | undefined, headers: KongHeaders | undefined): never {
  if (body === undefined && DEFAULT_BODY_STATUSES.has(status)) {
    body = cjson.encode({ message: ERROR_MESSAGES[status] ?? "An unexpected error occurred" })[0];
    const withType: KongHeaders = { "Content-Type": JSON_CONTENT_TYPE };
    if (headers !== undefined) for (const [name, value] of pairs(headers)) withType[name as string] = value as string;
    headers = withType;
  }
  ngx.status = status;
  let hasContentLength = false;
  if (headers !== undefined) {
    for (const [name, value] of pairs(headers)) {
      const lower = string.lower(name as string);
      if (lower === "transfer-encoding") continue;
      ngx.header[name as string] = value as string;
      if (lower === "content-length") hasContentLength = true;
    }
  }
  if (!hasContentLength) ngx.header["Content-Length"] = tostring(body !== undefined ? body.length : 0);
  if (ngx.get_phase() === "header_filter") {
    // No output in header_filter: body_filter sends this body in place of the upstream's
    // (Kong's ctx.response_body). The calling handler returns; later plugins still run.
    requestCtx().KRS_EXIT_BODY = body ?? "";
    return undefined as never;
  }
  // Always print, even "", so nginx sends these headers rather than its own error page.
  ngx.print(body ?? "");
  return ngx.exit(status);
}

function encodeBody(this: void, body: KongResponseBody | undefined, headers: KongHeaders | undefined): LuaMultiReturn<[string | undefined, KongHeaders | undefined]> {
  if (body === undefined || type(body) === "string") return $multi(body as string | undefined, headers);
  const [json, err] = cjson.encode(body);
  if (json === undefined) error("body encoding failed: " + tostring(err), 3);
  let hasContentType = false;
  if (headers !== undefined) {
    for (const [name] of pairs(headers)) if (string.lower(name as string) === "content-type") hasContentType = true;
  }
  if (!hasContentType) {
    const withType: KongHeaders = {};
    if (headers !== undefined) for (const [name, value] of pairs(headers)) withType[name as string] = value as string;
    withType["Content-Type"] = JSON_CONTENT_TYPE;
    headers = withType;
  }
  return $multi(json, headers);
}

/** Kong's default messages for kong.response.error. */
const ERROR_MESSAGES: { [status: number]: string } = {
  400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
  405: "Method not allowed", 408: "Request timeout", 409: "Conflict", 411: "Length required",
  412: "Precondition failed", 413: "Payload too large", 414: "URI too long",
  415: "Unsupported media type", 429: "API rate limit exceeded",
  500: "An unexpected error occurred", 502: "An invalid response was received from the upstream server",
  503: "The upstream server is currently unavailable", 504: "The upstream server is timing out",
};

function checkExitPhase(this: void): void {
  const phase = ngx.get_phase();
  if (phase !== "rewrite" && phase !== "access" && phase !== "content" && phase !== "header_filter") {
    error(`function cannot be called in ${phase} phase`, 3);
  }
  if (ngx.headers_sent) error("headers have already been sent", 3);
}

const response: KongResponseApi = {
  exit(status, body, headers) {
    checkExitPhase();
    if (type(status) !== "number") error("code must be a number", 2);
    if (status < 100 || status > 599) error("code must be a number between 100 and 599", 2);
    if (body !== undefined && type(body) !== "string" && type(body) !== "table") error("body must be a nil, string or table", 2);
    if (headers !== undefined && type(headers) !== "table") error("headers must be a nil or table", 2);
    if (headers !== undefined) for (const [name, value] of pairs(headers)) checkHeader(name, type(value) === "table" ? "" : value);
    requestCtx().KRS_EXITED = true;
    const [encoded, finalHeaders] = encodeBody(body, headers);
    return send(status, encoded, finalHeaders);
  },
  error(status, message, headers) {
    checkExitPhase();
    if (type(status) !== "number") error("code must be a number", 2);
    if (status < 400 || status > 599) error("code must be a number between 400 and 599", 2);
    requestCtx().KRS_EXITED = true;
    const text = message ?? ERROR_MESSAGES[status] ?? "An error occurred";
    const accept = request.get_header("accept") ?? "";
    let contentType = JSON_CONTENT_TYPE;
    let body: string;
    if (string.find(accept, "text/plain", 1, true)[0] !== undefined && string.find(accept, "json", 1, true)[0] === undefined) {
      contentType = "text/plain; charset=utf-8";
      body = text;
    } else {
      body = cjson.encode({ message: text })[0] ?? "{}";
    }
    const finalHeaders: KongHeaders = {};
    if (headers !== undefined) for (const [name, value] of pairs(headers)) finalHeaders[name as string] = value as string;
    let hasType = false;
    for (const [name] of pairs(finalHeaders)) if (string.lower(name as string) === "content-type") hasType = true;
    if (!hasType) finalHeaders["Content-Type"] = contentType;
    return send(status, body, finalHeaders);
  },
  set_header(name, value) {
    checkHeader(name, value);
    if (ngx.headers_sent) error("headers have already been sent", 2);
    ngx.header[name] = tostring(value);
  },
  add_header(name, value) {
    checkHeader(name, value);
    if (ngx.headers_sent) error("headers have already been sent", 2);
    const existing = ngx.header[name];
    if (existing === undefined) {
      ngx.header[name] = tostring(value);
    } else if (type(existing) === "table") {
      const values = existing as string[];
      values.push(tostring(value));
      ngx.header[name] = values;
    } else {
      ngx.header[name] = [existing as string, tostring(value)];
    }
  },
  clear_header(name) {
    if (type(name) !== "string") error("header name must be a string", 2);
    if (ngx.headers_sent) error("headers have already been sent", 2);
    ngx.header[name] = undefined;
  },
  get_header(name) {
    if (type(name) !== "string") error("header name must be a string", 2);
    return firstValue(ngx.header[name]);
  },
  get_headers(max_headers) {
    const [headers] = ngx.resp.get_headers(max_headers ?? 100);
    return headers;
  },
  get_status() {
    return ngx.status;
  },
  get_source() {
    const ctx = requestCtx();
    if (ctx.KRS_UNEXPECTED === true) return "error";
    if (ctx.KRS_EXITED === true) return "exit";
    if (ctx.KRS_PROXIED === true) return "service";
    return "error";
  },
  set_status(status) {
    if (type(status) !== "number" || status < 100 || status > 599) error("code must be a number between 100 and 599", 2);
    if (ngx.headers_sent) error("headers have already been sent", 2);
    ngx.status = status;
  },
};

// ---------------------------------------------------------------- service.request

const service: KongServiceApi = {
  request: {
    set_header(name, value) {
      checkHeader(name, value);
      if (string.lower(name) === "host") {
        ngx.var["upstream_host"] = tostring(value);
        return;
      }
      ngx.req.set_header(name, tostring(value));
    },
    clear_header(name) {
      if (type(name) !== "string") error("header name must be a string", 2);
      ngx.req.clear_header(name);
    },
    set_raw_query(query) {
      if (type(query) !== "string") error("query must be a string", 2);
      ngx.req.set_uri_args(query);
    },
    set_path(path) {
      if (type(path) !== "string" || string.sub(path, 1, 1) !== "/") error("path must be a string starting with '/'", 2);
      // The access phase escapes it and adds the query when it builds $upstream_uri.
      requestCtx().KRS_UPSTREAM_URI = path;
    },
    set_raw_body(body) {
      if (type(body) !== "string") error("body must be a string", 2);
      ngx.req.read_body();
      ngx.req.set_body_data(body);
    },
  },
};

// ---------------------------------------------------------------- client, router

/** Set by the runtime: finds a consumer of the live config by id (or username). */
type ConsumerLookup = (this: void, key: string, byUsername: boolean) => KongConsumer | undefined;
let consumerLookup: ConsumerLookup = () => undefined;
export function setConsumerLookup(this: void, lookup: ConsumerLookup): void {
  consumerLookup = lookup;
}

const client: KongClientApi = {
  get_ip() {
    return ngx.var["realip_remote_addr"] ?? ngx.var["remote_addr"] ?? "";
  },
  get_forwarded_ip() {
    return ngx.var["remote_addr"] ?? "";
  },
  authenticate(consumer, credential) {
    const phase = ngx.get_phase();
    if (phase !== "access") error(`function cannot be called in ${phase} phase`, 2);
    if (consumer === undefined && credential === undefined) error("either credential or consumer must be provided", 2);
    if (consumer !== undefined && type(consumer) !== "table") error("consumer must be a table or nil", 2);
    if (credential !== undefined && type(credential) !== "table") error("credential must be a table or nil", 2);
    const ctx = requestCtx();
    ctx.authenticated_consumer = consumer;
    ctx.authenticated_credential = credential;
  },
  get_consumer() {
    return requestCtx().authenticated_consumer;
  },
  get_credential() {
    return requestCtx().authenticated_credential;
  },
  load_consumer(consumer_id, search_by_username) {
    if (type(consumer_id) !== "string" || consumer_id === "") error("consumer_id must be a string", 2);
    return $multi(consumerLookup(consumer_id, search_by_username === true), undefined);
  },
};

const router: KongRouterApi = {
  get_route() {
    return requestCtx().route;
  },
  get_service() {
    return requestCtx().service;
  },
};

// ---------------------------------------------------------------- ctx

/** kong.ctx.shared and kong.ctx.plugin resolve to per-request tables on each access. */
const ctxApi = setmetatable({} as KongCtxApi, {
  __index: (_self: KongCtxApi, key: string) => {
    const ctx = requestCtx();
    if (key === "shared") {
      let shared = ctx.KRS_SHARED;
      if (shared === undefined) {
        shared = {};
        ctx.KRS_SHARED = shared;
      }
      return shared;
    }
    if (key === "plugin") {
      let byPlugin = ctx.KRS_PLUGIN_CTX;
      if (byPlugin === undefined) {
        byPlugin = new LuaTable();
        ctx.KRS_PLUGIN_CTX = byPlugin;
      }
      const pluginKey = ctx.KRS_PLUGIN_KEY ?? "";
      let own = byPlugin.get(pluginKey);
      if (own === undefined) {
        own = {};
        byPlugin.set(pluginKey, own);
      }
      return own;
    }
    return undefined;
  },
});

// ---------------------------------------------------------------- log.serialize

function serialize(this: void): KongSerializedLog {
  const ctx = requestCtx();
  const started = ngx.req.start_time();
  const now = ngx.now();
  const upstreamMs = tonumber(ngx.var["upstream_response_time"]);
  const requestMs = math.floor((now - started) * 1000 + 0.5);
  const proxyMs = upstreamMs !== undefined ? math.floor(upstreamMs * 1000 + 0.5) : -1;
  const [reqHeaders] = ngx.req.get_headers(100);
  const [respHeaders] = ngx.resp.get_headers(100);
  const [query] = ngx.req.get_uri_args(100);
  const scheme = ngx.var["scheme"] ?? "http";
  const host = ngx.var["host"] ?? "";
  const port = ngx.var["server_port"] ?? "";
  const entry: KongSerializedLog = {
    request: {
      method: ngx.req.get_method(),
      uri: ngx.var["request_uri"] ?? "",
      url: `${scheme}://${host}:${port}${ngx.var["request_uri"] ?? ""}`,
      size: tonumber(ngx.var["request_length"]) ?? 0,
      querystring: query,
      headers: reqHeaders,
      id: ngx.var["request_id"],
    },
    response: {
      status: ngx.status,
      size: tonumber(ngx.var["bytes_sent"]) ?? 0,
      headers: respHeaders,
    },
    // Copies: a log plugin that edits its entry must not edit the live config.
    route: deepCopy(ctx.route),
    service: deepCopy(ctx.service),
    consumer: deepCopy(ctx.authenticated_consumer),
    latencies: {
      request: requestMs,
      proxy: proxyMs,
      kong: proxyMs >= 0 ? math.max(requestMs - proxyMs, 0) : requestMs,
    },
    client_ip: client.get_forwarded_ip(),
    started_at: math.floor(started * 1000),
    upstream_uri: ctx.KRS_UPSTREAM_URI,
    source: response.get_source(),
  };
  const ops = ctx.KRS_SERIALIZE;
  for (const op of REDACTIONS) applySerializeOp(entry, op);
  if (ops !== undefined) for (const op of ops) applySerializeOp(entry, op);
  return entry;
}

function deepCopy<T>(this: void, value: T): T {
  if (type(value) !== "table") return value;
  const out = new LuaTable<AnyNotNil, unknown>();
  for (const [k, v] of pairs(value as unknown as LuaTable<AnyNotNil, unknown>)) out.set(k, deepCopy(v));
  return out as unknown as T;
}

function splitPath(this: void, key: string): string[] {
  const path: string[] = [];
  for (const [segment] of string.gmatch(key, "[^.]+")) path.push(segment as string);
  return path;
}

/** Kong's default: credentials never reach a log. */
const REDACTIONS: SerializeOp[] = [
  { path: ["request", "headers", "authorization"], value: "REDACTED", mode: "replace" },
  { path: ["request", "headers", "proxy-authorization"], value: "REDACTED", mode: "replace" },
];

/** Sets (or with nil removes) the value at a dotted path, as Kong's set_serialize_value does. */
function applySerializeOp(this: void, entry: object, op: SerializeOp): void {
  let node = entry as unknown as LuaTable<string, unknown>;
  for (let i = 0; i < op.path.length - 1; i++) {
    let next = node.get(op.path[i]);
    if (type(next) !== "table") {
      if (op.mode === "replace") return;
      next = new LuaTable<string, unknown>();
      node.set(op.path[i], next);
    }
    node = next as LuaTable<string, unknown>;
  }
  const last = op.path[op.path.length - 1];
  const exists = node.get(last) !== undefined;
  if ((op.mode === "add" && exists) || (op.mode === "replace" && !exists)) return;
  node.set(last, op.value);
}

const log: KongLogApi = {
  err: makeLogger(ngx.ERR),
  warn: makeLogger(ngx.WARN),
  notice: makeLogger(ngx.NOTICE),
  info: makeLogger(ngx.INFO),
  debug: makeLogger(ngx.DEBUG),
  serialize,
  set_serialize_value(key, value, options) {
    if (type(key) !== "string" || key === "") error("key must be a non-empty string", 2);
    const mode = options?.mode ?? "set";
    if (mode !== "set" && mode !== "add" && mode !== "replace") error("mode must be 'set', 'add' or 'replace'", 2);
    const ctx = requestCtx();
    let ops = ctx.KRS_SERIALIZE;
    if (ops === undefined) {
      ops = [];
      ctx.KRS_SERIALIZE = ops;
    }
    ops.push({ path: splitPath(key), value, mode });
  },
};

// ---------------------------------------------------------------- node

let nodeId = "00000000-0000-0000-0000-000000000000";
const node: KongNodeApi = {
  get_id() {
    return nodeId;
  },
  get_hostname() {
    return ngx.var["hostname"] ?? "localhost";
  },
};

/** Called once at init with the id the CLI stored under the prefix. */
export function setNodeId(this: void, id: string): void {
  nodeId = id;
}

export const pdk: KongPdk = {
  version: KONG_VERSION,
  request,
  response,
  service,
  client,
  router,
  ctx: ctxApi,
  log,
  node,
};

export { JSON_CONTENT_TYPE, ERROR_MESSAGES };

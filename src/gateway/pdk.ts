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
  /** The normalized request path (kong.request.get_path), computed once. */
  KRS_PATH?: string;
  /** ngx.now() when access ended: the start of the upstream wait (Kong's latencies). */
  KRS_ACCESS_ENDED?: number;
  /** This request's id (requestId()): X-Kong-Request-Id, the error bodies' and serialize's id, the error-page ctx stash key. */
  KRS_REQUEST_ID?: string;
  /** One entry per balancer attempt, as Kong's ctx.balancer_data.tries (serialize's `tries`). */
  KRS_TRIES?: BalancerTry[];
  /**
   * Kong's own ctx fields a plugin may set when it answers in the upstream's place (Kong's
   * proxy-cache does on a hit): the response then gets Kong's proxied headers (the
   * Server it carries is kept, Via is Kong's), with these latencies in milliseconds.
   */
  KONG_PROXIED?: boolean;
  KONG_PROXY_LATENCY?: number;
  KONG_WAITING_TIME?: number;
}

/** Kong's balancer try record: the peer, when the attempt started (ms) and what choosing it cost (ms). */
export interface BalancerTry {
  ip: string;
  port: number;
  balancer_start: number;
  balancer_latency: number;
}

interface SerializeOp {
  path: string[];
  value: unknown;
  mode: "set" | "add" | "replace";
}

export function requestCtx(this: void): RequestCtx {
  return ngx.ctx as unknown as RequestCtx;
}

/**
 * Seeds this worker's math.random, which LuaJIT otherwise starts from the same state in
 * every process (the same ids in every worker). Kong seeds it in init_worker as well.
 */
export function seedRandom(this: void): void {
  let seed = ngx.now() * 1000 + ngx.worker.pid();
  // Required here, not at load: init() first aliases Debian's module paths (entry.ts).
  const [ok, random] = pcall(require, "resty.random");
  const bytes = ok ? (random as typeof import("resty.random")).bytes(4, true) : undefined;
  if (bytes !== undefined) {
    const [a, b, c, d] = string.byte(bytes, 1, 4);
    seed += ((a * 256 + b) * 256 + c) * 256 + d;
  }
  math.randomseed(seed % 0x20000000000000);
}

/**
 * The request id, as Kong's $kong_request_id: 32 random hex digits, made once per request and
 * kept in ctx and in $kong_request_id (the upstream's X-Kong-Request-Id, after the error
 * page's internal redirect too). Not nginx's $request_id: that one reads RAND_bytes, a
 * cryptographic generator an id does not need (Kong's own is not one either), for ~7k
 * instructions a request.
 */
export function requestId(this: void, ctx: RequestCtx): string {
  let id = ctx.KRS_REQUEST_ID;
  if (id !== undefined) return id;
  id = ngx.var["kong_request_id"];
  if (id === undefined || id === "") {
    id = string.format("%08x%08x%08x%08x", math.random(0, 0xffffffff), math.random(0, 0xffffffff), math.random(0, 0xffffffff), math.random(0, 0xffffffff));
    ngx.var["kong_request_id"] = id;
  }
  ctx.KRS_REQUEST_ID = id;
  return id;
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

/** Reserved characters (RFC 3986 gen-delims, sub-delims and "%"): Kong keeps them escaped. */
const RESERVED_BYTES = new LuaTable<number, boolean>();
for (const c of ["!", "*", "'", "(", ")", ";", ":", "@", "&", "=", "+", "$", ",", "/", "?", "%", "#", "[", "]"]) RESERVED_BYTES.set(string.byte(c), true);

function decodeUnreserved(this: void, hex: string): string {
  const code = tonumber(hex, 16)!;
  return RESERVED_BYTES.has(code) ? "%" + string.upper(hex) : string.char(code);
}

/**
 * Kong's path normalization (kong.tools.uri.normalize with merge_slashes): escapes of
 * reserved characters stay (upper-cased), every other escape is decoded, dot segments are
 * resolved and repeated slashes merged. What routing and kong.request.get_path see.
 */
export function normalizePath(this: void, path: string): string {
  if (path === "" || path === "/") return path;
  if (string.find(path, "%", 1, true)[0] !== undefined) path = string.gsub(path, "%%(%x%x)", decodeUnreserved)[0];
  if (string.find(path, ".", 1, true)[0] === undefined && string.find(path, "//", 1, true)[0] === undefined) return path;
  const segments: string[] = [];
  let trailingSlash = false;
  const leadingSlash = string.byte(path, 1) === 47;
  for (const [segment, slash] of string.gmatch(leadingSlash ? string.sub(path, 2) : path, "([^/]*)(/?)")) {
    const last = slash === "";
    if (segment === "..") {
      if (segments.length > 0) segments.pop();
      trailingSlash = last;
    } else if (segment === "." || segment === "") {
      trailingSlash = last && (segment === "." || segments.length > 0 || leadingSlash);
    } else {
      segments.push(segment as string);
      trailingSlash = false;
    }
    if (last) break;
  }
  const joined = table.concat(segments, "/");
  if (joined === "") return leadingSlash || trailingSlash ? "/" : "";
  return (leadingSlash ? "/" : "") + joined + (trailingSlash ? "/" : "");
}

/** The request-target's path as the client sent it (no query), normalized as Kong does. */
export function normalizedRequestPath(this: void): string {
  const requestUri = ngx.var["request_uri"] ?? "/";
  const [queryAt] = string.find(requestUri, "?", 1, true);
  return normalizePath(queryAt !== undefined ? string.sub(requestUri, 1, queryAt - 1) : requestUri);
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
    // As Kong: ngx's two values, the table and "truncated".
    return ngx.req.get_headers(max_headers ?? 100) as LuaMultiReturn<[HeaderTable, "truncated" | undefined]>;
  },
  get_method() {
    return ngx.req.get_method();
  },
  get_path() {
    const ctx = requestCtx();
    let path = ctx.KRS_PATH;
    if (path === undefined) {
      path = normalizedRequestPath();
      ctx.KRS_PATH = path;
    }
    return path;
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

/** Kong's normalize_header: nginx drops a header set to "", Kong sends one space instead. */
function headerValue(this: void, value: unknown): string {
  const text = tostring(value);
  return text === "" ? " " : text;
}

/** Kong's normalize_multi_header: an array of values stays an array, each value normalized. */
function headerValues(this: void, value: unknown): string | string[] {
  if (type(value) !== "table") return headerValue(value);
  const values: string[] = [];
  for (const v of value as unknown[]) values.push(headerValue(v));
  return values;
}

/** Kong's messages for kong.response.error and its error handler, by status. */
const ERROR_MESSAGES: { [status: number]: string } = {
  400: "Bad request", 401: "Unauthorized", 402: "Payment required", 403: "Forbidden",
  404: "Not found", 405: "Method not allowed", 406: "Not acceptable",
  407: "Proxy authentication required", 408: "Request timeout", 409: "Conflict", 410: "Gone",
  411: "Length required", 412: "Precondition failed", 413: "Payload too large",
  414: "URI too long", 415: "Unsupported media type", 416: "Range not satisfiable",
  417: "Expectation failed", 418: "I'm a teapot", 421: "Misdirected request",
  422: "Unprocessable entity", 423: "Locked", 424: "Failed dependency", 425: "Too early",
  426: "Upgrade required", 428: "Precondition required", 429: "Too many requests",
  431: "Request header fields too large", 451: "Unavailable for legal reasons",
  494: "Request header or cookie too large", 500: "An unexpected error occurred",
  501: "Not implemented", 502: "An invalid response was received from the upstream server",
  503: "The upstream server is currently unavailable", 504: "The upstream server is timing out",
  505: "HTTP version not supported", 506: "Variant also negotiates", 507: "Insufficient storage",
  508: "Loop detected", 510: "Not extended", 511: "Network authentication required",
};

export function errorMessage(this: void, status: number): string {
  return ERROR_MESSAGES[status] ?? string.format("The upstream server responded with %d", status);
}

/** Kong's MIME types for error bodies, by media type or by its top-level type. */
const ERROR_MIME_TYPES = new LuaTable<string, string>();
ERROR_MIME_TYPES.set("application/json", JSON_CONTENT_TYPE);
ERROR_MIME_TYPES.set("text/html", "text/html; charset=utf-8");
ERROR_MIME_TYPES.set("text/plain", "text/plain; charset=utf-8");
ERROR_MIME_TYPES.set("application/xml", "application/xml; charset=utf-8");
ERROR_MIME_TYPES.set("application", JSON_CONTENT_TYPE);
ERROR_MIME_TYPES.set("text", "text/plain; charset=utf-8");

/** Kong's error templates (kong/tools/http.lua): the message, then the request id. */
const ERROR_TEMPLATES = new LuaTable<string, string>();
ERROR_TEMPLATES.set(JSON_CONTENT_TYPE, '{\n  "message":"%s",\n  "request_id":"%s"\n}');
ERROR_TEMPLATES.set("text/html; charset=utf-8", '<!doctype html>\n<html>\n  <head>\n    <meta charset="utf-8">\n    <title>Error</title>\n  </head>\n  <body>\n    <h1>Error</h1>\n    <p>%s.</p>\n    <p>request_id: %s</p>\n  </body>\n</html>\n');
ERROR_TEMPLATES.set("text/plain; charset=utf-8", "%s\nrequest_id: %s\n");
ERROR_TEMPLATES.set("application/xml; charset=utf-8", '<?xml version="1.0" encoding="UTF-8"?>\n<error>\n  <message>%s</message>\n  <requestid>%s</requestid>\n</error>\n');
for (const bare of ["application/json", "text/html", "text/plain", "application/xml"]) {
  ERROR_TEMPLATES.set(bare, ERROR_TEMPLATES.get(ERROR_MIME_TYPES.get(bare))!);
}

/** Kong's get_mime_type: a media range to the MIME type of its error body (JSON when unknown). */
function mimeType(this: void, mediaRange: string): string {
  const [mediaType] = string.match(mediaRange, "^%s*([^;%s]*)");
  const [main, sub] = string.match(mediaType ?? "", "^([^/]*)/(.*)$");
  if (main === undefined || sub === undefined) return JSON_CONTENT_TYPE;
  if (sub === "*") return main === "*" ? JSON_CONTENT_TYPE : ERROR_MIME_TYPES.get(main) ?? JSON_CONTENT_TYPE;
  return ERROR_MIME_TYPES.get(mediaType!) ?? JSON_CONTENT_TYPE;
}

/** A media range with an optional q parameter, as Kong's Accept grammar reads it. */
const MEDIA_RANGE = "^((?:[a-z0-9][a-z0-9-!#$&^_+.]+|\\*)/(?:[a-z0-9][a-z0-9-!#$&^_+.]+|\\*))"
  + "(?:\\s*;\\s*q=(1(?:\\.0{0,3})?|0(?:\\.\\d{0,3})?)|\\s*;\\s*[a-z0-9][a-z0-9-!#$&^_+.]+(?:=[^;]*)?)*";

/**
 * Kong's get_response_type: the error body's MIME type for an Accept header (the values of
 * repeated headers joined): the first media range with the highest q wins; JSON by default.
 * Only error paths call it.
 */
export function responseType(this: void, accept: string | string[] | undefined): string {
  if (accept === undefined) return JSON_CONTENT_TYPE;
  const text = type(accept) === "table" ? table.concat(accept as string[], ",") : (accept as string);
  let chosen = JSON_CONTENT_TYPE;
  let best = 0;
  for (const [part] of string.gmatch(text, "[^,]+")) {
    const [trimmed] = string.match(part as string, "^%s*(.-)%s*$");
    const [captures] = ngx.re.match(trimmed ?? "", MEDIA_RANGE, "ajoi");
    if (captures !== undefined) {
      const q = tonumber(captures[2]) ?? 1;
      if (q > best) {
        best = q;
        chosen = mimeType(captures[1] as string);
      }
    }
  }
  return chosen;
}

/** Kong's error body for a MIME type; undefined for a type Kong has no template for. */
export function errorBody(this: void, mimeTypeName: string, message: string): string | undefined {
  const template = ERROR_TEMPLATES.get(mimeTypeName);
  if (template === undefined) return undefined;
  return string.format(template, message, requestId(requestCtx()));
}

/**
 * Statuses nginx hands to the error page (the template's error_page): an exit without a
 * body then answers Kong's error body instead of an empty one.
 */
const ERROR_PAGE_STATUSES = new LuaTable<number, boolean>();
for (const status of [400, 404, 405, 408, 411, 412, 413, 414, 417, 494, 500, 502, 503, 504]) ERROR_PAGE_STATUSES.set(status, true);

/** Set by the entry module: keeps ctx for the error page's internal redirect. */
let stashCtx: (this: void) => void = () => undefined;
export function setCtxStash(this: void, stash: (this: void) => void): void {
  stashCtx = stash;
}

function send(this: void, status: number, body: string | undefined, headers: KongHeaders | undefined, isJson: boolean): never {
  ngx.status = status;
  let hasContentType = false;
  let hasContentLength = false;
  if (headers !== undefined) {
    for (const [name, value] of pairs(headers)) {
      const lower = string.lower(name as string);
      if (lower !== "transfer-encoding" && lower !== "transfer_encoding") ngx.header[name as string] = headerValues(value);
      if (lower === "content-type" || lower === "content_type") hasContentType = true;
      else if (lower === "content-length" || lower === "content_length") hasContentLength = true;
    }
  }
  if (isJson && !hasContentType) ngx.header["Content-Type"] = JSON_CONTENT_TYPE;
  if (!hasContentLength) ngx.header["Content-Length"] = tostring(body !== undefined ? body.length : 0);
  if (ngx.get_phase() === "header_filter") {
    // No output in header_filter: body_filter sends this body in place of the upstream's
    // (Kong's ctx.response_body). The calling handler returns; later plugins still run.
    requestCtx().KRS_EXIT_BODY = body ?? "";
    return undefined as never;
  }
  if (body === undefined) {
    // As Kong: nginx finishes a bodyless exit; an error-page status gets Kong's error body.
    if (ERROR_PAGE_STATUSES.has(status)) stashCtx();
    return ngx.exit(status);
  }
  ngx.print(body);
  return ngx.exit(status);
}

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
    if (body !== undefined && type(body) === "table") {
      const [json, err] = cjson.encode(body);
      if (json === undefined) error("body encoding failed while flushing response: " + tostring(err), 2);
      return send(status, json, headers, true);
    }
    return send(status, body as string | undefined, headers, false);
  },
  error(status, message, headers) {
    checkExitPhase();
    if (type(status) !== "number") error("code must be a number", 2);
    if (status < 400 || status > 599) error("code must be a number between 400 and 599", 2);
    let text = message as unknown;
    if (text !== undefined && type(text) === "table") {
      const [json, err] = cjson.encode(text);
      if (json === undefined) error("could not JSON encode the error message: " + tostring(err), 2);
      text = json;
    }
    if (text !== undefined && type(text) !== "string") error("message must be a nil, a string or a table", 2);
    if (headers !== undefined && type(headers) !== "table") error("headers must be a nil or table", 2);
    if (headers !== undefined) for (const [name, value] of pairs(headers)) checkHeader(name, type(value) === "table" ? "" : value);
    // As Kong: the negotiated Content-Type is written into the caller's own table.
    const finalHeaders: KongHeaders = headers ?? {};
    const given = finalHeaders["Content-Type"] as unknown;
    let contentType: string;
    if (given === undefined) {
      const [requestHeaders] = ngx.req.get_headers();
      contentType = responseType(requestHeaders.get("accept") as string | string[] | undefined);
    } else {
      contentType = type(given) === "table" ? (given as string[])[0] : tostring(given);
    }
    finalHeaders["Content-Type"] = contentType;
    const body = errorBody(contentType, (text as string | undefined) ?? errorMessage(status));
    if (body === undefined) error("no template found for MIME type " + contentType, 2);
    requestCtx().KRS_EXITED = true;
    return send(status, body, finalHeaders, false);
  },
  set_header(name, value) {
    checkHeader(name, value);
    if (ngx.headers_sent) error("headers have already been sent", 2);
    // Only a 17-byte name can be Transfer-Encoding: no lowercased copy of every other name.
    if ((name as string).length === 17) {
      const lower = string.lower(name);
      if (lower === "transfer-encoding" || lower === "transfer_encoding") return;
    }
    ngx.header[name] = headerValue(value);
  },
  add_header(name, value) {
    checkHeader(name, value);
    if (ngx.headers_sent) error("headers have already been sent", 2);
    const existing = ngx.header[name];
    if (existing === undefined) {
      ngx.header[name] = headerValue(value);
    } else if (type(existing) === "table") {
      const values = existing as string[];
      values.push(headerValue(value));
      ngx.header[name] = values;
    } else {
      ngx.header[name] = [existing as string, headerValue(value)];
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
    return ngx.resp.get_headers(max_headers ?? 100) as LuaMultiReturn<[HeaderTable, "truncated" | undefined]>;
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
      // Only a four-letter name can be Host: the others (every consumer header an auth
      // plugin sets) are not copied to lower case to find out.
      if (name.length === 4 && string.lower(name) === "host") {
        ngx.var["upstream_host"] = tostring(value);
        return;
      }
      ngx.req.set_header(name, headerValue(value));
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

/** Set by the runtime: the consumers of the live config, by id and by username. */
export interface ConsumerIndex {
  byId(this: void, id: string): KongConsumer | undefined;
  byUsername(this: void, username: string): KongConsumer | undefined;
}
let consumerIndex: ConsumerIndex = { byId: () => undefined, byUsername: () => undefined };
export function setConsumerIndex(this: void, index: ConsumerIndex): void {
  consumerIndex = index;
}

const UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$";
function isUuid(this: void, value: string): boolean {
  return string.find(value, UUID)[0] !== undefined;
}

/** Kong's phase check (kong/pdk/private/phases.lua) for the PDK functions of request phases only. */
const AUTH_AND_LATER = new LuaTable<string, boolean>();
for (const phase of ["access", "header_filter", "body_filter", "log"]) AUTH_AND_LATER.set(phase, true);
function checkAuthAndLater(this: void): void {
  const phase = ngx.get_phase();
  if (AUTH_AND_LATER.get(phase) !== true) error(`function cannot be called in ${phase} phase`, 3);
}

// ---------------------------------------------------------------- db

/** DB-less Kong's strategy name, which its errors carry. */
const DB_STRATEGY = "off";
const DB_ERROR_MT: LuaMetatable<KongDbError> = {
  __tostring(this: KongDbError) {
    return `[${tostring(this.strategy)}] ${this.message}`;
  },
};

function dbError(this: void, code: number, name: string, message: string, fields?: { [field: string]: string }): LuaMultiReturn<[undefined, string, KongDbError]> {
  const err = setmetatable({ code, name, message, strategy: DB_STRATEGY, fields } as KongDbError, DB_ERROR_MT);
  return $multi(undefined, tostring(err), err);
}

/**
 * kong.db.consumers over the declarative config's consumers, with Kong's DAO contract
 * (kong/db/dao/init.lua, kong/db/errors.lua): a key of the wrong Lua type raises; an
 * invalid one is `nil, err, err_t` (invalid primary key, code 1; invalid unique, code
 * 10); not found is nil and no error. Any phase, as in Kong.
 */
const consumersDao: KongConsumersDao = {
  select(primary_key) {
    if (type(primary_key) !== "table") error("primary_key must be a table", 2);
    const fields: { [field: string]: string } = {};
    let invalid = false;
    for (const [k, v] of pairs(primary_key as unknown as LuaTable<string, unknown>)) {
      if (k !== "id") {
        fields[k] = "not a primary key";
        invalid = true;
      } else if (type(v) !== "string" || !isUuid(v as string)) {
        fields.id = "expected a valid UUID";
        invalid = true;
      }
    }
    if (primary_key.id === undefined) {
      fields.id = "missing primary key";
      invalid = true;
    }
    if (invalid) {
      const parts: string[] = [];
      for (const [k, v] of pairs(fields)) parts.push(`${k as string}=${string.format("%q", v)}`);
      table.sort(parts);
      return dbError(1, "invalid primary key", `invalid primary key: '{${table.concat(parts, ",")}}'`, fields);
    }
    return $multi(consumerIndex.byId(primary_key.id), undefined, undefined);
  },
  select_by_username(username) {
    if (type(username) !== "string") error("username must be a string", 2);
    if (username === "") return dbError(10, "invalid unique username", "length must be at least 1");
    return $multi(consumerIndex.byUsername(username), undefined, undefined);
  },
};

const db: KongDb = { consumers: consumersDao };

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
    checkAuthAndLater();
    if (type(consumer_id) !== "string" || consumer_id === "") error("consumer_id must be a string", 2);
    const uuid = isUuid(consumer_id);
    if (!uuid && search_by_username !== true) error("cannot load a consumer with an id that is not a uuid", 2);
    if (uuid) {
      const [found, err] = db.consumers.select({ id: consumer_id });
      if (found !== undefined || err !== undefined) return $multi(found, err);
    }
    if (search_by_username !== true) return $multi(undefined, undefined);
    const [found, err] = db.consumers.select_by_username(consumer_id);
    return $multi(found, err);
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
  // As Kong: $request_time, which nginx takes from a fresh clock (ngx.now() may be stale here).
  const requestMs = math.floor((tonumber(ngx.var["request_time"]) ?? now - started) * 1000 + 0.5);
  const proxyMs = upstreamMs !== undefined ? math.floor(upstreamMs * 1000 + 0.5) : -1;
  const [reqHeaders] = ngx.req.get_headers(100);
  const [respHeaders] = ngx.resp.get_headers(100);
  const [query] = ngx.req.get_uri_args(100);
  const scheme = ngx.var["scheme"] ?? "http";
  const host = ngx.var["host"] ?? "";
  const port = ngx.var["server_port"] ?? "";
  // Each variable is read once: every ngx.var read is a C call and a new string.
  const requestUri = ngx.var["request_uri"] ?? "";
  const entry: KongSerializedLog = {
    request: {
      method: ngx.req.get_method(),
      uri: requestUri,
      url: `${scheme}://${host}:${port}${requestUri}`,
      size: tonumber(ngx.var["request_length"]) ?? 0,
      querystring: query,
      headers: reqHeaders,
      id: requestId(ctx),
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
    upstream_uri: upstreamUri(requestUri),
    source: response.get_source(),
    upstream_status: upstreamStatus(),
    // Kong prepares the balancer's data (tries = {}) as soon as a route matched, before any
    // plugin runs: a request a plugin answered in access still has an empty `tries`.
    tries: ctx.KRS_TRIES ?? (ctx.route !== undefined ? [] : undefined),
    authenticated_entity: authenticatedEntity(ctx.authenticated_credential),
  };
  const ops = ctx.KRS_SERIALIZE;
  for (const op of REDACTIONS) applySerializeOp(entry, op);
  if (ops !== undefined) for (const op of ops) applySerializeOp(entry, op);
  return entry;
}

/**
 * Kong 3.9: what was sent upstream, query included (as $upstream_uri, with the query
 * nginx would append when the URI set has none); "" when nothing was proxied.
 */
function upstreamUri(this: void, requestUri: string): string {
  const uri = ngx.var["upstream_uri"] ?? "";
  if (uri === "" || string.find(uri, "?", 1, true)[0] !== undefined) return uri;
  if (string.byte(requestUri, -1) === 63) return uri + "?";
  if (ngx.var["is_args"] === "?") return `${uri}?${ngx.var["args"] ?? ""}`;
  return uri;
}

/** Kong 3.9: nginx's $upstream_status as it is ("" when nothing was proxied; "502, 200" after a retry). */
function upstreamStatus(this: void): string {
  return ngx.var["upstream_status"] ?? "";
}

/** Kong 3.9: the credential's id and consumer id, never the credential's secret fields. */
function authenticatedEntity(this: void, credential: KongCredential | undefined): { id: EntityId; consumer_id?: string } | undefined {
  if (credential === undefined) return undefined;
  const consumerId = (credential as { consumer_id?: string }).consumer_id ?? credential.consumer?.id;
  return { id: credential.id, consumer_id: consumerId };
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
/** Where each worker leaves its Lua VM size for get_memory_stats (Kong keeps it in its own shm too). */
const MEMORY_DICT = "krs_gateway";
const MEMORY_KEY_PREFIX = "worker_lua_vm:";
const MEMORY_TTL = 10;

/** Each worker, on its timer: its Lua VM's allocated bytes, readable by every worker. */
export function publishWorkerMemory(this: void): void {
  const dict = ngx.shared[MEMORY_DICT];
  if (dict === undefined) return;
  dict.set(MEMORY_KEY_PREFIX + tostring(ngx.worker.pid()), math.floor(collectgarbage("count") * 1024), MEMORY_TTL);
}

/** Kong's kong.node.get_memory_stats() without a unit: bytes, shared dicts by name, workers by pid. */
function getMemoryStats(this: void): KongMemoryStats {
  const dicts: { [name: string]: { allocated_slabs: number; capacity: number } } = {};
  for (const [name, dict] of pairs(ngx.shared as unknown as LuaTable<string, NgxShDict>)) {
    const capacity = dict.capacity();
    dicts[name] = { allocated_slabs: capacity - dict.free_space(), capacity };
  }
  const workers: { http_allocated_gc: number; pid: number }[] = [];
  const memory = ngx.shared[MEMORY_DICT];
  if (memory !== undefined) {
    for (const key of memory.get_keys(0)) {
      const [pid] = string.match(key, "^" + MEMORY_KEY_PREFIX + "(%d+)$");
      if (pid === undefined) continue;
      const [bytes] = memory.get(key);
      if (type(bytes) === "number") workers.push({ http_allocated_gc: bytes as number, pid: tonumber(pid)! });
    }
  }
  table.sort(workers, (a, b) => a.pid < b.pid);
  return { lua_shared_dicts: dicts, workers_lua_vms: workers };
}

const node: KongNodeApi = {
  get_id() {
    return nodeId;
  },
  get_hostname() {
    return ngx.var["hostname"] ?? "localhost";
  },
  get_memory_stats: getMemoryStats,
};

/** Called once at init with the id the CLI stored under the prefix. */
export function setNodeId(this: void, id: string): void {
  nodeId = id;
}

// ---------------------------------------------------------------- nginx

/**
 * nginx's own counters, as Kong reads them: the connection states from stub_status's
 * variables, accepted/handled/requests from the ngx_stat_* atomics nginx exports (Debian's
 * nginx is built with the stub_status module, as OpenResty is).
 */
let statCounters: LuaTable<string, FfiArray> | undefined;

function nginxStatCounters(this: void): LuaTable<string, FfiArray> | undefined {
  if (statCounters !== undefined) return statCounters;
  const ffi = require("ffi") as LuaJitFfi;
  pcall(ffi.cdef, "typedef unsigned long krs_ngx_atomic_uint_t; extern krs_ngx_atomic_uint_t *ngx_stat_accepted; extern krs_ngx_atomic_uint_t *ngx_stat_handled; extern krs_ngx_atomic_uint_t *ngx_stat_requests;");
  const [ok, counters] = pcall(() => {
    const found = new LuaTable<string, FfiArray>();
    for (const name of ["ngx_stat_accepted", "ngx_stat_handled", "ngx_stat_requests"]) found.set(name, ffi.C.get(name) as FfiArray);
    return found;
  });
  if (ok) statCounters = counters;
  return statCounters;
}

function statCounter(this: void, counters: LuaTable<string, FfiArray> | undefined, name: string): number {
  if (counters === undefined) return 0;
  return tonumber(counters.get(name)[0]) ?? 0;
}

const nginxApi: KongNginxApi = {
  get_subsystem() {
    return "http";
  },
  get_statistics() {
    const counters = nginxStatCounters();
    return {
      connections_active: tonumber(ngx.var["connections_active"]) ?? 0,
      connections_reading: tonumber(ngx.var["connections_reading"]) ?? 0,
      connections_writing: tonumber(ngx.var["connections_writing"]) ?? 0,
      connections_waiting: tonumber(ngx.var["connections_waiting"]) ?? 0,
      connections_accepted: statCounter(counters, "ngx_stat_accepted"),
      connections_handled: statCounter(counters, "ngx_stat_handled"),
      total_requests: statCounter(counters, "ngx_stat_requests"),
    };
  },
};

export const pdk: KongPdk = {
  version: KONG_VERSION,
  request,
  response,
  service,
  client,
  router,
  db,
  ctx: ctxApi,
  log,
  node,
  nginx: nginxApi,
};

export { JSON_CONTENT_TYPE, ERROR_MESSAGES };

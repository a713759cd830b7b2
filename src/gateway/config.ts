/**
 * Declarative configuration (Kong 3.x format) → the gateway's validated, normalized model.
 *
 * Accepts `_format_version` "3.0" (and Kong's older "1.1"/"2.1"), services with nested
 * routes and plugins, top-level routes, consumers (with nested plugins) and plugins
 * referring to service/route/consumer by name or id. Every plugin config is validated
 * against that plugin's own schema.lua with defaults filled. The first problem found is
 * reported as one line naming the entity and the field.
 *
 * Pure Lua (no ngx): the CLI runs it under plain LuaJIT before starting nginx, and
 * `POST /config` runs it inside nginx before swapping the live config.
 */
import * as bitop from "bit";
import * as ffi from "ffi";
import * as cjson from "cjson.safe";
import { validatePlugin, formatErrors, resolveReferences, type FieldErrors } from "./schema";

/** A plugin instance after validation: where it applies and its filled config. */
export interface PluginEntity {
  id: string;
  name: string;
  instance_name?: string;
  enabled: boolean;
  protocols: string[];
  config: LuaTable<string, unknown>;
  service?: { id: string };
  route?: { id: string };
  consumer?: { id: string };
  tags?: string[];
}

export interface GatewayConfig {
  services: KongService[];
  routes: KongRoute[];
  consumers: KongConsumer[];
  plugins: PluginEntity[];
  servicesById: LuaTable<string, KongService>;
  consumersById: LuaTable<string, KongConsumer>;
  /** The declarative input as given (for GET /config and persistence). */
  source: LuaTable<string, unknown>;
}

/** What the loader needs from its host (nginx or the CLI). */
export interface LoaderEnv {
  /** Plugin names this gateway may load (KONG_PLUGINS). */
  available: LuaTable<string, boolean>;
  /** require("kong.plugins.<name>.schema"); returns undefined plus a reason when it fails. */
  loadSchema(this: void, name: string): LuaMultiReturn<[KongPluginSchema | undefined, string | undefined]>;
}

type Table = LuaTable<string, unknown>;

/** The loader environment of a gateway that may load the given plugins with require(). */
export function loaderEnv(this: void, available: string[]): LoaderEnv {
  const set = new LuaTable<string, boolean>();
  for (const name of available) set.set(name, true);
  return {
    available: set,
    loadSchema: (name: string) => {
      const [ok, schema] = pcall(require, `kong.plugins.${name}.schema`);
      if (!ok) return $multi(undefined, tostring(schema));
      if (type(schema) !== "table") return $multi(undefined, "schema module did not return a table");
      return $multi(schema as KongPluginSchema, undefined);
    },
  };
}

/**
 * Why a config did not load, in parts, for callers that answer in Kong's Admin API error
 * shapes (loadDeclarative's third value). `message` is the one line its second value says.
 */
export interface LoadFailure {
  message: string;
  /** The entity, as the message names it: "service 'a' (services[1])". */
  where: string;
  /** Dotted path of the failing field ("protocols.1"); absent for the entity as a whole. */
  field?: string;
  /** What is wrong, without `where` and `field`. */
  reason: string;
  /** A plugin's schema errors, flat as validatePlugin reports them ("config.tag" -> message). */
  fields?: FieldErrors;
}

/** Thrown (as a table, to tell it from a bug's string error) and caught by loadDeclarative. */
interface ConfigError {
  configError: string;
  failure: LoadFailure;
}

function fail(this: void, where: string, field: string | undefined, message: string, fields?: FieldErrors): never {
  const text = field !== undefined ? `${where}: ${field}: ${message}` : `${where}: ${message}`;
  const e: ConfigError = { configError: text, failure: { message: text, where, field, reason: message, fields } };
  throw e;
}

// ----------------------------------------------------------------- vault references

/**
 * The process environment as it was when this module loaded. In nginx that is the master
 * in init_by_lua, before workers drop every variable not named by an `env` directive;
 * workers inherit the table. Kong's env vault reads `environ` the same way.
 */
function snapshotEnvironment(this: void): LuaTable<string, string> | undefined {
  pcall(ffi.cdef, "extern char **environ;");
  // `char **environ` indexes to `char *`; the terminating NULL compares equal to nil.
  const [found, environ] = pcall(() => ffi.C.get("environ") as LuaTable<number, FfiCData>);
  if (!found || environ === undefined) return undefined;
  const env = new LuaTable<string, string>();
  for (let i = 0; environ.get(i) !== undefined; i++) {
    const entry = ffi.string(environ.get(i));
    const [eq] = string.find(entry, "=", 1, true);
    if (eq !== undefined) env.set(string.sub(entry, 1, eq - 1), string.sub(entry, eq + 1));
  }
  return env;
}

const ENVIRONMENT = snapshotEnvironment();

function getenv(this: void, name: string): string | undefined {
  return ENVIRONMENT !== undefined ? ENVIRONMENT.get(name) : os.getenv(name);
}

/**
 * Kong's `env` vault: `{vault://env/my-secret}` reads MY_SECRET (dashes become
 * underscores, upper-cased, `?prefix=` prepended); `{vault://env/name/key}` reads a JSON
 * object from NAME and takes `key`; `#2` reads NAME_PREVIOUS. Other vaults need Kong.
 */
export function vaultGet(this: void, reference: string): LuaMultiReturn<[string | undefined, string | undefined]> {
  const [vault, rest] = string.match(reference, "^{vault://([^/]+)/(.*)}$");
  if (vault === undefined || rest === undefined) return $multi(undefined, `not a reference [${reference}]`);
  if (vault !== "env") return $multi(undefined, `could not find vault (${vault}): the local gateway has the env vault only [${reference}]`);
  let path = rest;
  let version: number | undefined;
  const [hash] = string.find(path, "#", 1, true);
  if (hash !== undefined) {
    version = tonumber(string.sub(path, hash + 1));
    if (version === undefined) return $multi(undefined, `reference url has invalid version [${reference}]`);
    path = string.sub(path, 1, hash - 1);
  }
  let prefix = "";
  const [question] = string.find(path, "?", 1, true);
  if (question !== undefined) {
    const [p] = string.match(string.sub(path, question + 1), "prefix=([^&]*)");
    if (p !== undefined) prefix = p;
    path = string.sub(path, 1, question - 1);
  }
  let resource = path;
  let key: string | undefined;
  const [slash] = string.find(path, "/[^/]*$");
  if (slash !== undefined) {
    resource = string.sub(path, 1, slash - 1);
    const k = string.sub(path, slash + 1);
    if (k !== "") key = k;
  }
  if (resource === "") return $multi(undefined, `reference url has empty path [${reference}]`);
  let name = string.upper(prefix + string.gsub(resource, "%-", "_")[0]);
  if (version === 2) name += "_PREVIOUS";
  const value = getenv(name);
  if (value === undefined) return $multi(undefined, `unable to load value (${resource}) from vault (env): not found [${reference}]`);
  if (key === undefined) return $multi(value, undefined);
  const [json] = cjson.decode(value);
  const picked = type(json) === "table" ? (json as LuaTable<string, unknown>).get(key) : undefined;
  if (type(picked) !== "string") return $multi(undefined, `vault (env) did not return value for resource '${resource}' with a key of '${key}' [${reference}]`);
  return $multi(picked as string, undefined);
}

/** As Kong: an unresolvable reference becomes "" and a warning, never a failed load. */
function dereference(this: void, reference: string): string {
  const [value, err] = vaultGet(reference);
  if (value !== undefined) return value;
  if (type(ngx) === "table") ngx.log(ngx.WARN, "[kong] unable to resolve reference ", reference, " (", err, ")");
  return "";
}

function isTable(this: void, v: unknown): v is Table {
  return type(v) === "table";
}

function isArray(this: void, v: unknown): v is unknown[] {
  if (!isTable(v)) return false;
  let n = 0;
  for (const [_k] of pairs(v)) n++;
  return n === (v as unknown as unknown[]).length;
}

/** cjson.null and ngx.null are userdata: treat them as "absent". */
function present(this: void, v: unknown): boolean {
  return v !== undefined && type(v) !== "userdata";
}

// ----------------------------------------------------------------- deterministic ids

/** FNV-1a over the string with a seed; 32 bits. */
function fnv1a(this: void, s: string, seed: number): number {
  let h = bitop.bxor(0x811c9dc5, seed);
  for (let i = 1; i <= s.length; i++) {
    h = bitop.bxor(h, string.byte(s, i));
    // h * 16777619 in 32-bit arithmetic, split to stay exact in doubles
    h = bitop.tobit(bitop.tobit(h * 0x193) + bitop.lshift(h, 24));
  }
  return h;
}

/**
 * A uuid-formatted id derived from the entity's kind and name, so every node that loads
 * the same file agrees on ids (rate-limit counters are keyed by plugin id).
 */
export function deterministicId(this: void, kind: string, key: string): string {
  const s = kind + "\0" + key;
  const a = bitop.tohex(fnv1a(s, 1), 8);
  const b = bitop.tohex(fnv1a(s, 2), 8);
  const c = bitop.tohex(fnv1a(s, 3), 8);
  const d = bitop.tohex(fnv1a(s, 4), 8);
  // version 5 / RFC 4122 variant bits, so it reads as a name-based uuid
  return `${a}-${string.sub(b, 1, 4)}-5${string.sub(b, 6, 8)}-8${string.sub(c, 2, 4)}-${string.sub(c, 5, 8)}${d}`;
}

const UUID_PATTERN = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$";

function checkId(this: void, where: string, id: unknown): string | undefined {
  if (!present(id)) return undefined;
  if (type(id) !== "string" || string.find(id as string, UUID_PATTERN)[0] === undefined) fail(where, "id", "expected a valid UUID");
  return id as string;
}

// ----------------------------------------------------------------- field helpers

function checkKnownFields(this: void, where: string, entity: Table, known: LuaTable<string, boolean>): void {
  for (const [key] of pairs(entity)) {
    if (!known.has(key)) fail(where, key, "unknown field");
  }
}

function fieldSet(this: void, ...names: string[]): LuaTable<string, boolean> {
  const set = new LuaTable<string, boolean>();
  for (const name of names) set.set(name, true);
  return set;
}

function optString(this: void, where: string, entity: Table, field: string): string | undefined {
  const v = entity.get(field);
  if (!present(v)) return undefined;
  if (type(v) !== "string") fail(where, field, "expected a string");
  return v as string;
}

function optBoolean(this: void, where: string, entity: Table, field: string, dflt: boolean): boolean {
  const v = entity.get(field);
  if (!present(v)) return dflt;
  if (type(v) !== "boolean") fail(where, field, "expected a boolean");
  return v as boolean;
}

function optInteger(this: void, where: string, entity: Table, field: string, dflt: number | undefined, min: number, max: number): number | undefined {
  const v = entity.get(field);
  if (!present(v)) return dflt;
  // NaN and infinities (JSON bodies may carry them, 1e309 decodes to one) are no integers, as in Kong.
  if (type(v) !== "number" || math.floor(v as number) !== v || math.abs(v as number) === math.huge) fail(where, field, "expected an integer");
  if ((v as number) < min || (v as number) > max) fail(where, field, `value should be between ${min} and ${max}`);
  return v as number;
}

/**
 * Fields Kong's entities have that the local gateway accepts but does not use: typed all
 * the same, so a value Kong refuses is refused here too and never reaches the stored config.
 */
function checkUnusedFields(this: void, where: string, entity: Table, route: boolean): void {
  optInteger(where, entity, "created_at", undefined, -math.huge, math.huge);
  optInteger(where, entity, "updated_at", undefined, -math.huge, math.huge);
  if (!route) return;
  const redirect = optInteger(where, entity, "https_redirect_status_code", undefined, -math.huge, math.huge);
  if (redirect !== undefined && redirect !== 426 && redirect !== 301 && redirect !== 302 && redirect !== 307 && redirect !== 308) {
    fail(where, "https_redirect_status_code", "expected one of: 426, 301, 302, 307, 308");
  }
  optBoolean(where, entity, "request_buffering", true);
  optBoolean(where, entity, "response_buffering", true);
}

function optStringArray(this: void, where: string, entity: Table, field: string): string[] | undefined {
  const v = entity.get(field);
  if (!present(v)) return undefined;
  if (!isArray(v)) fail(where, field, "expected an array");
  const out: string[] = [];
  const arr = v as unknown[];
  for (let i = 0; i < arr.length; i++) {
    if (type(arr[i]) !== "string") fail(where, `${field}.${i + 1}`, "expected a string");
    out.push(arr[i] as string);
  }
  return out;
}

function optEntityArray(this: void, where: string, entity: Table, field: string): Table[] {
  const v = entity.get(field);
  if (!present(v)) return [];
  if (!isArray(v)) fail(where, field, "expected an array");
  const arr = v as unknown[];
  for (let i = 0; i < arr.length; i++) {
    if (!isTable(arr[i])) fail(where, `${field}.${i + 1}`, "expected a record");
  }
  return arr as Table[];
}

function describe(this: void, kind: string, index: number, name: string | undefined, parent: string | undefined): string {
  const self = name !== undefined ? `${kind} '${name}' (${kind}s[${index}])` : `${kind}s[${index}]`;
  return parent !== undefined ? `${self} (in ${parent})` : self;
}

// ----------------------------------------------------------------- services

const SERVICE_FIELDS = fieldSet("id", "name", "url", "protocol", "host", "port", "path", "retries",
  "connect_timeout", "write_timeout", "read_timeout", "tags", "enabled", "routes", "plugins",
  "client_certificate", "tls_verify", "tls_verify_depth", "ca_certificates", "created_at", "updated_at");

const SUPPORTED_PROTOCOLS = fieldSet("http", "https");

/** Splits "http://host:port/path" the way Kong's `url` shorthand does. */
function parseUrl(this: void, where: string, url: string): LuaMultiReturn<[string, string, number | undefined, string | undefined]> {
  const [protocol, rest] = string.match(url, "^(%a[%w+.-]*)://(.+)$");
  if (protocol === undefined || rest === undefined) fail(where, "url", "missing host in url");
  const [authority, rawPath] = string.match(rest, "^([^/?#]*)([^?#]*)");
  const path = rawPath !== undefined && rawPath !== "" ? rawPath : undefined;
  if (authority === undefined || authority === "") fail(where, "url", "missing host in url");
  let host: string = authority;
  let port: number | undefined;
  const [bracketHost, bracketPort] = string.match(authority, "^%[(.+)%]:?(%d*)$");
  if (bracketHost !== undefined) {
    host = bracketHost;
    port = bracketPort !== undefined && bracketPort !== "" ? tonumber(bracketPort) : undefined;
  } else {
    const [h, p] = string.match(authority, "^([^:]+):(%d+)$");
    if (h !== undefined) {
      host = h;
      port = tonumber(p);
    } else if (string.find(authority, ":", 1, true)[0] !== undefined) {
      fail(where, "url", "invalid port in url");
    }
  }
  return $multi(string.lower(protocol), host, port, path);
}

function loadService(this: void, raw: Table, index: number): KongService {
  const name = optString(`services[${index}]`, raw, "name");
  const where = describe("service", index, name, undefined);
  checkKnownFields(where, raw, SERVICE_FIELDS);
  checkUnusedFields(where, raw, false);
  let protocol = optString(where, raw, "protocol");
  let host = optString(where, raw, "host");
  let port = optInteger(where, raw, "port", undefined, 0, 65535);
  let path = optString(where, raw, "path");
  const url = optString(where, raw, "url");
  if (url !== undefined) {
    if (host !== undefined || protocol !== undefined) fail(where, "url", "cannot be set together with 'protocol' or 'host'");
    const [p, h, po, pa] = parseUrl(where, url);
    protocol = p;
    host = h;
    port = po ?? port;
    path = pa ?? path;
  }
  protocol = protocol ?? "http";
  if (!SUPPORTED_PROTOCOLS.has(protocol)) fail(where, "protocol", `'${protocol}' is not supported by the local gateway (http, https)`);
  if (host === undefined) fail(where, "host", "required field missing");
  if (path !== undefined && string.sub(path, 1, 1) !== "/") fail(where, "path", "should start with: /");
  // Upstream TLS verification and client certificates are not implemented: refuse rather
  // than accept a setting that would silently do nothing.
  if (optBoolean(where, raw, "tls_verify", false)) fail(where, "tls_verify", "upstream certificate verification is not supported by the local gateway");
  for (const unsupported of ["tls_verify_depth", "ca_certificates", "client_certificate"]) {
    if (present(raw.get(unsupported))) fail(where, unsupported, "not supported by the local gateway");
  }
  const id = checkId(where, raw.get("id")) ?? deterministicId("service", name ?? `#${index}`);
  return {
    id,
    name,
    protocol,
    host,
    port: port ?? (protocol === "https" ? 443 : 80),
    path,
    retries: optInteger(where, raw, "retries", 5, 0, 32767),
    connect_timeout: optInteger(where, raw, "connect_timeout", 60000, 1, 2147483646),
    write_timeout: optInteger(where, raw, "write_timeout", 60000, 1, 2147483646),
    read_timeout: optInteger(where, raw, "read_timeout", 60000, 1, 2147483646),
    tags: optStringArray(where, raw, "tags"),
    enabled: optBoolean(where, raw, "enabled", true),
  };
}

// ----------------------------------------------------------------- routes

/** The router's regex options (router.ts REGEX_OPTIONS): a path accepted here compiles there. */
const ROUTER_REGEX_OPTIONS = "jo";

/** `const char *[n]`, indexed from 0 as in C. */
interface CStringArray extends FfiCData {
  [index: number]: FfiCData;
}

type RegexCompile = (this: void, pattern: string) => string | undefined;

/**
 * PCRE through LuaJIT's FFI, for the CLI's validator (plain LuaJIT, no ngx.re): the
 * library lua-nginx-module links (libpcre.so.3), compiled with no options as ngx.re does
 * for "jo" (JIT and caching change no syntax), its error worded as lua-nginx-module words it.
 */
function ffiPcreCompile(this: void): RegexCompile | undefined {
  // A second cdef of the same declaration raises; the first one stands.
  pcall(ffi.cdef, `
    void *pcre_compile(const char *pattern, int options, const char **errptr, int *erroffset, const unsigned char *tableptr);
  `);
  let lib: FfiLibrary | undefined;
  for (const name of ["pcre", "libpcre.so.3", "libpcre.so.1"]) {
    const [loaded, found] = pcall(ffi.load, name);
    if (loaded) {
      lib = found as FfiLibrary;
      break;
    }
  }
  if (lib === undefined) return undefined;
  const [found, symbol] = pcall(() => lib!.get("pcre_compile"));
  if (!found) return undefined;
  const compile = symbol as (this: void, ...args: unknown[]) => FfiCData | undefined;
  return (pattern: string) => {
    const errptr = ffi.new<CStringArray>("const char *[1]");
    const erroffset = ffi.new("int[1]");
    const compiled = compile(pattern, 0, errptr, erroffset, undefined);
    // A NULL pointer compares equal to nil. The compiled pattern is not freed: this runs
    // in a short-lived validator process, once per regex path.
    if (compiled !== undefined) return undefined;
    const reason = ffi.string(errptr[0]);
    const offset = erroffset[0];
    if (offset >= pattern.length) return `pcre_compile() failed: ${reason} in "${pattern}"`;
    return `pcre_compile() failed: ${reason} in "${pattern}" at "${string.sub(pattern, offset + 1)}"`;
  };
}

let regexCompile: RegexCompile | undefined;
let regexCompileChosen = false;

/** ngx.re inside nginx (the router's own engine), else PCRE through FFI, else no check. */
function chooseRegexCompile(this: void): RegexCompile | undefined {
  if (regexCompileChosen) return regexCompile;
  regexCompileChosen = true;
  if (type(ngx) === "table" && type(ngx.re) === "table") {
    const reFind = ngx.re.find;
    regexCompile = (pattern: string) => reFind("", pattern, ROUTER_REGEX_OPTIONS)[2];
  } else {
    regexCompile = ffiPcreCompile();
  }
  return regexCompile;
}

/**
 * Kong's check of a regex path (typedefs.router_paths): the regex after "~" must compile,
 * or the route is refused naming it. Compiled as the router compiles it ("^" prepended);
 * the message names the regex as written, as Kong's does.
 */
function regexError(this: void, regex: string): string | undefined {
  const compile = chooseRegexCompile();
  if (compile === undefined) return undefined;
  const anchoredErr = compile("^" + regex);
  if (anchoredErr === undefined) return undefined;
  return `invalid regex: '${regex}' (PCRE returned: ${compile(regex) ?? anchoredErr})`;
}

const ROUTE_FIELDS = fieldSet("id", "name", "protocols", "methods", "hosts", "paths", "headers",
  "strip_path", "preserve_host", "regex_priority", "path_handling", "https_redirect_status_code",
  "request_buffering", "response_buffering", "service", "tags", "plugins", "snis", "sources",
  "destinations", "created_at", "updated_at");

function loadRoute(this: void, raw: Table, index: number, parent: KongService | undefined, parentDesc: string | undefined): KongRoute {
  const name = optString(`routes[${index}]`, raw, "name");
  const where = describe("route", index, name, parentDesc);
  checkKnownFields(where, raw, ROUTE_FIELDS);
  checkUnusedFields(where, raw, true);
  for (const unsupported of ["headers", "snis", "sources", "destinations"]) {
    if (present(raw.get(unsupported))) fail(where, unsupported, "route matching on this attribute is not supported by the local gateway");
  }
  const methods = optStringArray(where, raw, "methods");
  const hosts = optStringArray(where, raw, "hosts");
  const paths = optStringArray(where, raw, "paths");
  const protocols = optStringArray(where, raw, "protocols") ?? ["http", "https"];
  for (let i = 0; i < protocols.length; i++) {
    if (!SUPPORTED_PROTOCOLS.has(protocols[i])) fail(where, `protocols.${i + 1}`, `'${protocols[i]}' is not supported by the local gateway (http, https)`);
  }
  if ((methods === undefined || methods.length === 0) && (hosts === undefined || hosts.length === 0) && (paths === undefined || paths.length === 0)) {
    fail(where, undefined, "must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is 'http'");
  }
  if (methods !== undefined) {
    for (let i = 0; i < methods.length; i++) {
      if (string.find(methods[i], "^%u+$")[0] === undefined) fail(where, `methods.${i + 1}`, "invalid value: " + methods[i]);
    }
  }
  if (paths !== undefined) {
    for (let i = 0; i < paths.length; i++) {
      const path = paths[i];
      const regexPath = string.sub(path, 1, 2) === "~/";
      if (string.sub(path, 1, 1) !== "/" && !regexPath) fail(where, `paths.${i + 1}`, "should start with: / (fixed path) or ~/ (regex path)");
      if (regexPath) {
        const regexErr = regexError(string.sub(path, 2));
        if (regexErr !== undefined) fail(where, `paths.${i + 1}`, regexErr);
      }
    }
  }
  const pathHandling = optString(where, raw, "path_handling") ?? "v0";
  if (pathHandling !== "v0") fail(where, "path_handling", "only 'v0' is supported by the local gateway");
  let serviceRef: { id: string } | undefined;
  if (parent !== undefined) {
    if (present(raw.get("service"))) fail(where, "service", "nested routes take their service from the enclosing service");
    serviceRef = { id: parent.id };
  } else if (present(raw.get("service"))) {
    serviceRef = { id: "" }; // resolved by the caller against the services table
  }
  // Unnamed routes: numbered within their service (by its id, itself derived), or at the top level.
  const id = checkId(where, raw.get("id")) ?? deterministicId("route", name ?? (parent !== undefined ? `${parent.id}#${index}` : `#top#${index}`));
  return {
    id,
    name,
    protocols,
    methods,
    hosts,
    paths,
    strip_path: optBoolean(where, raw, "strip_path", true),
    preserve_host: optBoolean(where, raw, "preserve_host", false),
    regex_priority: optInteger(where, raw, "regex_priority", 0, -2147483648, 2147483647),
    service: serviceRef,
    tags: optStringArray(where, raw, "tags"),
  };
}

// ----------------------------------------------------------------- consumers

const CONSUMER_FIELDS = fieldSet("id", "username", "custom_id", "tags", "plugins", "created_at", "updated_at");

function loadConsumer(this: void, raw: Table, index: number): KongConsumer {
  const username = optString(`consumers[${index}]`, raw, "username");
  const where = describe("consumer", index, username, undefined);
  checkKnownFields(where, raw, CONSUMER_FIELDS);
  checkUnusedFields(where, raw, false);
  const customId = optString(where, raw, "custom_id");
  if (username === undefined && customId === undefined) {
    fail(where, undefined, "at least one of these fields must be non-empty: 'custom_id', 'username'");
  }
  const id = checkId(where, raw.get("id")) ?? deterministicId("consumer", username ?? `custom_id:${customId}`);
  return { id, username, custom_id: customId, tags: optStringArray(where, raw, "tags") };
}

// ----------------------------------------------------------------- plugins

interface PendingPlugin {
  raw: Table;
  where: string;
  service?: KongService;
  route?: KongRoute;
  consumer?: KongConsumer;
}

const TOP_LEVEL_FIELDS = fieldSet("_format_version", "_transform", "_comment", "_workspace", "_info",
  "services", "routes", "consumers", "plugins");
const FORMAT_VERSIONS = fieldSet("1.1", "2.1", "3.0");

function copyWithout(this: void, raw: Table, drop: LuaTable<string, boolean>): Table {
  const out = new LuaTable<string, unknown>();
  for (const [k, v] of pairs(raw)) if (!drop.has(k)) out.set(k, v);
  return out;
}

const PLUGIN_REFS = fieldSet("service", "route", "consumer");

function validatePluginEntity(this: void, pending: PendingPlugin, env: LoaderEnv): PluginEntity {
  const { raw, where } = pending;
  const name = raw.get("name");
  if (!present(name)) fail(where, "name", "required field missing");
  if (type(name) !== "string") fail(where, "name", "expected a string");
  if (!env.available.has(name as string)) {
    fail(where, "name", `plugin '${name}' not enabled; add it to the 'plugins' configuration property`);
  }
  const [schema, schemaErr] = env.loadSchema(name as string);
  if (schema === undefined) fail(where, "name", `could not load the schema of plugin '${name}': ${schemaErr}`);
  const entity = copyWithout(raw, PLUGIN_REFS);
  // Scope references go through the schema too, so `typedefs.no_consumer` can refuse them.
  if (pending.consumer !== undefined) entity.set("consumer", { id: pending.consumer.id });
  if (pending.route !== undefined) entity.set("route", { id: pending.route.id });
  if (pending.service !== undefined) entity.set("service", { id: pending.service.id });
  const [filled, errors] = validatePlugin(schema, entity);
  if (filled === undefined) fail(where, undefined, formatErrors(errors!), errors);
  // Handlers get secrets, not references; "$refs" keeps the references (Admin API output).
  resolveReferences(schema, filled, dereference);
  const scope = `${pending.service?.id ?? ""}:${pending.route?.id ?? ""}:${pending.consumer?.id ?? ""}`;
  const instanceName = optString(where, raw, "instance_name");
  const id = checkId(where, raw.get("id")) ?? deterministicId("plugin", `${name}:${instanceName ?? ""}:${scope}`);
  return {
    id,
    name: name as string,
    instance_name: instanceName,
    enabled: filled.get("enabled") !== false,
    protocols: (filled.get("protocols") as string[] | undefined) ?? ["grpc", "grpcs", "http", "https"],
    config: withInstanceFields((filled.get("config") as Table | undefined) ?? new LuaTable(), name as string, id, instanceName, pending),
    service: pending.service !== undefined ? { id: pending.service.id } : undefined,
    route: pending.route !== undefined ? { id: pending.route.id } : undefined,
    consumer: pending.consumer !== undefined ? { id: pending.consumer.id } : undefined,
    tags: filled.get("tags") as string[] | undefined,
  };
}

/**
 * Kong 3 hands a handler its config with the instance's identity on it
 * (kong/runloop/plugins_iterator.lua get_plugin_config): route_id, service_id, consumer_id,
 * plugin_instance_name, __plugin_id, __key__ (its cache key; here without a workspace).
 * Kong's Admin API never shows them: here they are read through the config's metatable,
 * so the Admin API's JSON (raw fields) leaves them out as well.
 */
function withInstanceFields(this: void, config: Table, name: string, id: string, instanceName: string | undefined, p: PendingPlugin): Table {
  const route = p.route?.id;
  const service = p.service?.id;
  const consumer = p.consumer?.id;
  const fields = new LuaTable<string, unknown>();
  fields.set("route_id", route);
  fields.set("service_id", service);
  fields.set("consumer_id", consumer);
  fields.set("plugin_instance_name", instanceName);
  fields.set("__plugin_id", id);
  fields.set("__key__", `plugins:${name}:${route ?? ""}:${service ?? ""}:${consumer ?? ""}::`);
  return setmetatable(config, { __index: fields });
}

function scopeName(this: void, p: PendingPlugin): string {
  const parts: string[] = [];
  if (p.service !== undefined) parts.push(`service '${p.service.name ?? p.service.id}'`);
  if (p.route !== undefined) parts.push(`route '${p.route.name ?? p.route.id}'`);
  if (p.consumer !== undefined) parts.push(`consumer '${p.consumer.username ?? p.consumer.id}'`);
  return parts.length > 0 ? table.concat(parts, ", ") : "global";
}

function pendingPlugins(this: void, list: Table[], parentDesc: string, scope: Omit<PendingPlugin, "raw" | "where">): PendingPlugin[] {
  const out: PendingPlugin[] = [];
  for (let i = 0; i < list.length; i++) {
    const raw = list[i];
    const name = raw.get("name");
    const label = type(name) === "string" ? `plugin '${name}'` : `plugins[${i + 1}]`;
    const where = `${label} (in ${parentDesc})`;
    for (const ref of ["service", "route", "consumer"]) {
      if (present(raw.get(ref))) fail(where, ref, "nested plugins take their scope from the enclosing entity");
    }
    out.push({ raw, where, ...scope });
  }
  return out;
}

// ----------------------------------------------------------------- loader

function resolveRef<T extends { id: string }>(this: void, where: string, field: string, ref: unknown, byId: LuaTable<string, T>, byName: LuaTable<string, T>): T {
  let key: unknown = ref;
  if (isTable(ref)) key = present(ref.get("id")) ? ref.get("id") : ref.get("name") ?? ref.get("username");
  if (type(key) !== "string") fail(where, field, "expected a name or an id");
  const found = byId.get(key as string) ?? byName.get(key as string);
  if (found === undefined) fail(where, field, `references an unknown ${field} '${key}'`);
  return found;
}

function loadOrThrow(this: void, input: unknown, env: LoaderEnv): GatewayConfig {
  if (!isTable(input)) fail("declarative config", undefined, "expected a table (a YAML or JSON object)");
  for (const [key] of pairs(input)) {
    if (!TOP_LEVEL_FIELDS.has(key)) {
      fail("declarative config", key, "unknown or unsupported entity type for the local gateway (supported: services, routes, consumers, plugins)");
    }
  }
  const format = input.get("_format_version");
  if (!present(format)) fail("declarative config", "_format_version", "required field missing");
  if (type(format) !== "string" || !FORMAT_VERSIONS.has(format as string)) {
    fail("declarative config", "_format_version", "expected one of: 1.1, 2.1, 3.0");
  }

  const services: KongService[] = [];
  const routes: KongRoute[] = [];
  const consumers: KongConsumer[] = [];
  const servicesById = new LuaTable<string, KongService>();
  const servicesByName = new LuaTable<string, KongService>();
  const routesById = new LuaTable<string, KongRoute>();
  const routesByName = new LuaTable<string, KongRoute>();
  const consumersById = new LuaTable<string, KongConsumer>();
  const consumersByName = new LuaTable<string, KongConsumer>();
  const consumersByCustomId = new LuaTable<string, KongConsumer>();
  const pending: PendingPlugin[] = [];

  const addRoute = (route: KongRoute, where: string) => {
    if (route.name !== undefined) {
      if (routesByName.has(route.name)) fail(where, "name", `duplicate route name '${route.name}'`);
      routesByName.set(route.name, route);
    }
    if (routesById.has(route.id)) fail(where, "id", `duplicate route id '${route.id}'`);
    routesById.set(route.id, route);
    routes.push(route);
  };

  const rawServices = optEntityArray("declarative config", input, "services");
  for (let i = 0; i < rawServices.length; i++) {
    const raw = rawServices[i];
    const service = loadService(raw, i + 1);
    const where = describe("service", i + 1, service.name, undefined);
    if (service.name !== undefined) {
      if (servicesByName.has(service.name)) fail(where, "name", `duplicate service name '${service.name}'`);
      servicesByName.set(service.name, service);
    }
    if (servicesById.has(service.id)) fail(where, "id", `duplicate service id '${service.id}'`);
    servicesById.set(service.id, service);
    services.push(service);
    const nestedRoutes = optEntityArray(where, raw, "routes");
    for (let j = 0; j < nestedRoutes.length; j++) {
      const route = loadRoute(nestedRoutes[j], j + 1, service, where);
      const routeWhere = describe("route", j + 1, route.name, where);
      addRoute(route, routeWhere);
      // Kong scopes a plugin nested in a route to the route alone.
      pending.push(...pendingPlugins(optEntityArray(routeWhere, nestedRoutes[j], "plugins"), routeWhere, { route }));
    }
    pending.push(...pendingPlugins(optEntityArray(where, raw, "plugins"), where, { service }));
  }

  const rawRoutes = optEntityArray("declarative config", input, "routes");
  for (let i = 0; i < rawRoutes.length; i++) {
    const route = loadRoute(rawRoutes[i], i + 1, undefined, undefined);
    const where = describe("route", i + 1, route.name, undefined);
    let service: KongService | undefined;
    if (route.service !== undefined) {
      service = resolveRef(where, "service", rawRoutes[i].get("service"), servicesById, servicesByName);
      route.service = { id: service.id };
    }
    addRoute(route, where);
    pending.push(...pendingPlugins(optEntityArray(where, rawRoutes[i], "plugins"), where, { route }));
  }

  const rawConsumers = optEntityArray("declarative config", input, "consumers");
  for (let i = 0; i < rawConsumers.length; i++) {
    const consumer = loadConsumer(rawConsumers[i], i + 1);
    const where = describe("consumer", i + 1, consumer.username, undefined);
    if (consumer.username !== undefined) {
      if (consumersByName.has(consumer.username)) fail(where, "username", `duplicate consumer username '${consumer.username}'`);
      consumersByName.set(consumer.username, consumer);
    }
    if (consumer.custom_id !== undefined) {
      if (consumersByCustomId.has(consumer.custom_id)) fail(where, "custom_id", `duplicate consumer custom_id '${consumer.custom_id}'`);
      consumersByCustomId.set(consumer.custom_id, consumer);
    }
    if (consumersById.has(consumer.id)) fail(where, "id", `duplicate consumer id '${consumer.id}'`);
    consumersById.set(consumer.id, consumer);
    consumers.push(consumer);
    pending.push(...pendingPlugins(optEntityArray(where, rawConsumers[i], "plugins"), where, { consumer }));
  }

  const rawPlugins = optEntityArray("declarative config", input, "plugins");
  for (let i = 0; i < rawPlugins.length; i++) {
    const raw = rawPlugins[i];
    const name = raw.get("name");
    const where = type(name) === "string" ? `plugin '${name}' (plugins[${i + 1}])` : `plugins[${i + 1}]`;
    const entry: PendingPlugin = { raw, where };
    if (present(raw.get("service"))) entry.service = resolveRef(where, "service", raw.get("service"), servicesById, servicesByName);
    if (present(raw.get("route"))) entry.route = resolveRef(where, "route", raw.get("route"), routesById, routesByName);
    if (present(raw.get("consumer"))) entry.consumer = resolveRef(where, "consumer", raw.get("consumer"), consumersById, consumersByName);
    pending.push(entry);
  }

  const plugins: PluginEntity[] = [];
  const seen = new LuaTable<string, boolean>();
  for (const p of pending) {
    const plugin = validatePluginEntity(p, env);
    // Kong's plugin cache key: one instance of a plugin per scope, whatever its instance_name.
    const key = `${plugin.name}|${p.service?.id ?? ""}|${p.route?.id ?? ""}|${p.consumer?.id ?? ""}`;
    if (seen.has(key)) fail(p.where, undefined, `plugin '${plugin.name}' is configured twice on ${scopeName(p)}`);
    seen.set(key, true);
    plugins.push(plugin);
  }

  return { services, routes, consumers, plugins, servicesById, consumersById, source: input };
}

/**
 * Validates and normalizes a decoded declarative config; `undefined, message, failure`
 * when invalid (the failure in parts, see LoadFailure).
 */
export function loadDeclarative(this: void, input: unknown, env: LoaderEnv): LuaMultiReturn<[GatewayConfig | undefined, string | undefined, LoadFailure | undefined]> {
  const [ok, result] = pcall(loadOrThrow, input, env);
  if (ok) return $multi(result as GatewayConfig, undefined, undefined);
  const thrown = result as unknown;
  if (type(thrown) === "table" && (thrown as ConfigError).configError !== undefined) {
    return $multi(undefined, (thrown as ConfigError).configError, (thrown as ConfigError).failure);
  }
  const message = "declarative config could not be loaded: " + tostring(result);
  return $multi(undefined, message, { message, where: "declarative config", reason: message });
}

/**
 * The local gateway's Admin API: Kong's read endpoints for the loaded entities, their
 * writes (crud.ts), `POST /config` (DB-less reload), and the endpoints plugins declare
 * in their api.lua, in Kong's shape: `{ ["/path/:param"] = { GET = function(self, db, helpers) ... end } }`.
 */
import * as cjson from "cjson.safe";
import { pdk } from "./pdk";
import { handleWrite, pluginShown, unencodableFailure, type Reply } from "./crud";
import { pluginSchemaJson } from "./schema";
import { getOptions, getRuntime, publish, withWriteLock, type Runtime } from "./runtime";

type Params = LuaTable<string, unknown>;
type ApiHandler = (this: void, self: { params: Params }, db: unknown, helpers: unknown) => void;
interface ApiRoute {
  segments: string[];
  methods: LuaTable<string, ApiHandler>;
}

const SUITE_VERSION = "0.1.0";
const JSON_TYPE = "application/json; charset=utf-8";

function sendJson(this: void, status: number, json: string): never {
  return pdk.response.exit(status, json, { "Content-Type": JSON_TYPE });
}

function encode(this: void, value: unknown): string {
  return cjson.encode(value)[0] ?? "null";
}

/** Kong's list shape; written by hand because Debian's cjson encodes `{}` for an empty list. */
function sendList(this: void, items: unknown[]): never {
  const parts: string[] = [];
  for (const item of items) parts.push(encode(item));
  return sendJson(200, `{"data":[${table.concat(parts, ",")}],"next":null}`);
}

function respond(this: void, r: Reply): never {
  if (r.body === undefined) return pdk.response.exit(r.status);
  return sendJson(r.status, encode(r.body));
}

function notFound(this: void): never {
  return pdk.response.exit(404, { message: "Not found" });
}

function findBy<T extends { id: string }>(this: void, list: T[], key: string, nameField: keyof T): T | undefined {
  for (const item of list) if (item.id === key || item[nameField] === key) return item;
  return undefined;
}

let pluginRoutes: ApiRoute[] | undefined;

function splitPath(this: void, path: string): string[] {
  const out: string[] = [];
  for (const [segment] of string.gmatch(path, "[^/]+")) out.push(segment as string);
  return out;
}

/** Collects the api.lua endpoints of every available plugin, once per worker. */
function loadPluginRoutes(this: void): ApiRoute[] {
  if (pluginRoutes !== undefined) return pluginRoutes;
  const routes: ApiRoute[] = [];
  for (const name of getOptions().plugins) {
    const [ok, api] = pcall(require, `kong.plugins.${name}.api`);
    if (!ok) {
      if (string.find(tostring(api), "not found", 1, true)[0] === undefined) {
        ngx.log(ngx.ERR, `[kong] could not load the Admin API of plugin '${name}': ${tostring(api)}`);
      }
      continue;
    }
    if (type(api) !== "table") continue;
    for (const [path, def] of pairs(api as LuaTable<string, LuaTable<string, unknown>>)) {
      const methods = (def.get("methods") as LuaTable<string, ApiHandler> | undefined) ?? (def as unknown as LuaTable<string, ApiHandler>);
      routes.push({ segments: splitPath(path), methods });
    }
  }
  pluginRoutes = routes;
  return routes;
}

function matchRoute(this: void, route: ApiRoute, segments: string[], params: Params): boolean {
  if (route.segments.length !== segments.length) return false;
  for (let i = 0; i < segments.length; i++) {
    const want = route.segments[i];
    if (string.sub(want, 1, 1) === ":") params.set(string.sub(want, 2), segments[i]);
    else if (want !== segments[i]) return false;
  }
  return true;
}

/** Request parameters as Kong's Admin API merges them: query, then the JSON or form body. */
function requestParams(this: void): Params {
  const params = new LuaTable<string, unknown>();
  const [query] = ngx.req.get_uri_args(100);
  for (const [k, v] of pairs(query)) params.set(k as string, v);
  ngx.req.read_body();
  const body = ngx.req.get_body_data();
  const contentType = ngx.var["content_type"] ?? "";
  if (body !== undefined && string.find(contentType, "json", 1, true)[0] !== undefined) {
    const [decoded] = cjson.decode(body);
    if (type(decoded) === "table") for (const [k, v] of pairs(decoded as Params)) params.set(k, v);
  } else if (string.find(contentType, "x-www-form-urlencoded", 1, true)[0] !== undefined) {
    const [form] = ngx.req.get_post_args(100);
    if (form !== undefined) for (const [k, v] of pairs(form)) params.set(k as string, v);
  }
  return params;
}

// ---------------------------------------------------------------- POST /config

function parseYaml(this: void, text: string): LuaMultiReturn<[unknown, string | undefined]> {
  const [ok, lyaml] = pcall(require, "lyaml");
  if (!ok) return $multi(undefined, "YAML is not supported here (lyaml is not installed); send JSON");
  const [parsed, result] = pcall((lyaml as { load: (this: void, s: string) => unknown }).load, text);
  if (!parsed) return $multi(undefined, "could not parse YAML: " + tostring(result));
  return $multi(result, undefined);
}

/** Reads the declarative config from a POST /config body: JSON object, {"config": "..."} or YAML. */
function declarativeFromBody(this: void): LuaMultiReturn<[unknown, string | undefined]> {
  ngx.req.read_body();
  const body = ngx.req.get_body_data();
  if (body === undefined) {
    if (ngx.req.get_body_file() !== undefined) return $multi(undefined, "config too large (raise client_body_buffer_size)");
    return $multi(undefined, "expected a declarative configuration in the request body");
  }
  const contentType = ngx.var["content_type"] ?? "";
  if (string.find(contentType, "yaml", 1, true)[0] !== undefined) return parseYaml(body);
  const [decoded, err] = cjson.decode(body);
  if (decoded === undefined) return $multi(undefined, "could not parse JSON body: " + tostring(err));
  const inner = type(decoded) === "table" ? (decoded as Params).get("config") : undefined;
  if (type(inner) === "string") {
    const [innerDecoded] = cjson.decode(inner as string);
    if (innerDecoded !== undefined) return $multi(innerDecoded, undefined);
    return parseYaml(inner as string);
  }
  if (type(inner) === "table") return $multi(inner, undefined);
  return $multi(decoded, undefined);
}

function postConfig(this: void): never {
  const [input, parseErr] = declarativeFromBody();
  if (input === undefined) {
    return pdk.response.exit(400, { code: 14, name: "invalid declarative configuration", message: tostring(parseErr) });
  }
  const unencodable = unencodableFailure(input);
  if (unencodable !== undefined) {
    return pdk.response.exit(400, { code: 14, name: "invalid declarative configuration", message: "declarative config is invalid: " + unencodable.message });
  }
  const [published, lockErr] = withWriteLock(() => {
    const [runtime, err] = publish(input);
    return { runtime, err };
  });
  if (published === undefined) {
    ngx.log(ngx.ERR, "[kong] POST /config failed: ", lockErr);
    return pdk.response.exit(500, { message: "An unexpected error occurred" });
  }
  const { runtime, err } = published;
  if (runtime === undefined) {
    return pdk.response.exit(400, { code: 14, name: "invalid declarative configuration", message: "declarative config is invalid: " + tostring(err) });
  }
  return sendJson(201, encode(summary(runtime)));
}

function summary(this: void, runtime: Runtime): unknown {
  return {
    services: runtime.config.services.length,
    routes: runtime.config.routes.length,
    consumers: runtime.config.consumers.length,
    plugins: runtime.config.plugins.length,
    version: runtime.version,
  };
}

// ---------------------------------------------------------------- entity endpoints

function pluginsWhere(this: void, runtime: Runtime, field: "service" | "route" | "consumer", id: string): unknown[] {
  const out: unknown[] = [];
  for (const p of runtime.config.plugins) if (p[field]?.id === id) out.push(pluginShown(p));
  return out;
}

function entityEndpoints(this: void, runtime: Runtime, method: string, s: string[]): void {
  if (method !== "GET") return;
  const config = runtime.config;
  const [kind, key, sub] = [s[0], s[1], s[2]];
  if (s.length > 3) return;
  if (kind === "services") {
    if (key === undefined) return sendList(config.services);
    const service = findBy(config.services, key, "name");
    if (service === undefined) return notFound();
    if (sub === undefined) return sendJson(200, encode(service));
    if (sub === "routes") {
      const routes: unknown[] = [];
      for (const r of config.routes) if (r.service?.id === service.id) routes.push(r);
      return sendList(routes);
    }
    if (sub === "plugins") return sendList(pluginsWhere(runtime, "service", service.id));
  } else if (kind === "routes") {
    if (key === undefined) return sendList(config.routes);
    const route = findBy(config.routes, key, "name");
    if (route === undefined) return notFound();
    if (sub === undefined) return sendJson(200, encode(route));
    if (sub === "plugins") return sendList(pluginsWhere(runtime, "route", route.id));
  } else if (kind === "consumers") {
    if (key === undefined) return sendList(config.consumers);
    const consumer = findBy(config.consumers, key, "username");
    if (consumer === undefined) return notFound();
    if (sub === undefined) return sendJson(200, encode(consumer));
    if (sub === "plugins") return sendList(pluginsWhere(runtime, "consumer", consumer.id));
  } else if (kind === "plugins") {
    if (key === undefined) return sendList(config.plugins.map((p) => pluginShown(p)));
    if (key === "enabled" && sub === undefined) {
      return sendJson(200, `{"enabled_plugins":[${table.concat(getOptions().plugins.map((n) => encode(n)), ",")}]}`);
    }
    if (key === "schema" && sub !== undefined) {
      if (!getOptions().plugins.includes(sub)) return pdk.response.exit(404, { message: `No plugin named '${sub}'` });
      const [ok, schema] = pcall(require, `kong.plugins.${sub}.schema`);
      if (!ok || type(schema) !== "table") return pdk.response.exit(404, { message: `No plugin named '${sub}'` });
      return sendJson(200, pluginSchemaJson(schema as KongPluginSchema));
    }
    if (sub !== undefined) return;
    for (const p of config.plugins) if (p.id === key || p.instance_name === key) return sendJson(200, encode(pluginShown(p)));
    return notFound();
  }
}

function rootInfo(this: void): never {
  const available = new LuaTable<string, boolean>();
  for (const name of getOptions().plugins) available.set(name, true);
  const enabled: string[] = [];
  const seen = new LuaTable<string, boolean>();
  for (const p of getRuntime()!.config.plugins) {
    if (!seen.has(p.name)) {
      seen.set(p.name, true);
      enabled.push(p.name);
    }
  }
  return sendJson(200, encode({
    tagline: "Welcome to kong",
    version: pdk.version,
    edition: "community",
    node_id: pdk.node.get_id(),
    hostname: pdk.node.get_hostname(),
    lua_version: (jit as { version?: string } | undefined)?.version ?? _VERSION,
    gateway: `krs-gateway ${SUITE_VERSION} (Kong-compatible local gateway)`,
    plugins: { available_on_server: available, enabled_in_cluster: enabled.length > 0 ? enabled : undefined },
    configuration: {
      database: "off",
      proxy_listeners: [getOptions().proxy_listen],
      admin_listeners: [getOptions().admin_listen],
      nginx_worker_processes: ngx.worker.count(),
    },
  }));
}

function status(this: void): never {
  const runtime = getRuntime()!;
  return sendJson(200, encode({
    server: {
      connections_active: tonumber(ngx.var["connections_active"]) ?? 0,
      connections_reading: tonumber(ngx.var["connections_reading"]) ?? 0,
      connections_writing: tonumber(ngx.var["connections_writing"]) ?? 0,
      connections_waiting: tonumber(ngx.var["connections_waiting"]) ?? 0,
    },
    database: { reachable: true },
    configuration_version: runtime.version,
  }));
}

export function handleAdmin(this: void): void {
  const method = ngx.req.get_method();
  // Split the raw path, then decode each segment once: a "%2F" in a name stays inside its
  // segment, and "%25" is not decoded twice.
  const requestUri = ngx.var["request_uri"] ?? "/";
  const [queryAt] = string.find(requestUri, "?", 1, true);
  const path = queryAt !== undefined ? string.sub(requestUri, 1, queryAt - 1) : requestUri;
  const segments = splitPath(path);
  for (let i = 0; i < segments.length; i++) segments[i] = ngx.unescape_uri(segments[i]);
  const runtime = getRuntime()!;

  if (segments.length === 0) {
    if (method === "GET" || method === "HEAD") return rootInfo();
    return pdk.response.exit(405, { message: "Method not allowed" });
  }
  if (segments.length === 1 && segments[0] === "status" && method === "GET") return status();
  if (segments.length === 1 && segments[0] === "config") {
    if (method === "POST") return postConfig();
    if (method === "GET") {
      return sendJson(200, encode({ config: cjson.encode(runtime.config.source)[0] }));
    }
    return pdk.response.exit(405, { message: "Method not allowed" });
  }

  for (const route of loadPluginRoutes()) {
    const params = new LuaTable<string, unknown>();
    if (!matchRoute(route, segments, params)) continue;
    const handler = route.methods.get(method);
    if (handler === undefined) return pdk.response.exit(405, { message: "Method not allowed" });
    const merged = requestParams();
    for (const [k, v] of pairs(params)) merged.set(k, v);
    const [ok, err] = xpcall(handler, debug.traceback, { params: merged }, {}, {});
    if (!ok) {
      ngx.log(ngx.ERR, `[kong] Admin API error on ${method} ${path}: ${tostring(err)}`);
      return pdk.response.exit(500, { message: "An unexpected error occurred" });
    }
    return pdk.response.exit(204);
  }

  if (method === "GET") {
    entityEndpoints(runtime, method, segments);
    return notFound();
  }
  const write = handleWrite(method, segments);
  if (write !== undefined) return respond(write);
  return notFound();
}

/**
 * The live configuration of this worker: the validated config, its router and plugin
 * index. Replaced atomically; other workers pick up a new version from the shared dict.
 */
import * as cjson from "cjson.safe";
import { loadDeclarative, loaderEnv, type GatewayConfig } from "./config";
import { setConsumerLookup } from "./pdk";
import { buildIndex, runConfigure, type PluginIndex } from "./plugins";
import { newRouter, type Router } from "./router";

export interface Runtime {
  config: GatewayConfig;
  router: Router;
  plugins: PluginIndex;
  routesById: LuaTable<string, KongRoute>;
  version: number;
}

/** Gateway options the CLI writes to <prefix>/krs/gateway.json. */
export interface GatewayOptions {
  plugins: string[];
  node_id: string;
  config_file: string;
  proxy_listen: string;
  admin_listen: string;
}

const DICT = "krs_gateway";
let current: Runtime | undefined;
let options: GatewayOptions | undefined;

export function setOptions(this: void, opts: GatewayOptions): void {
  options = opts;
}

export function getOptions(this: void): GatewayOptions {
  return options!;
}

export function getRuntime(this: void): Runtime | undefined {
  return current;
}

/** Validates a decoded declarative config and builds everything a request needs. */
export function build(this: void, input: unknown, version: number): LuaMultiReturn<[Runtime | undefined, string | undefined]> {
  const [config, err] = loadDeclarative(input, loaderEnv(getOptions().plugins));
  if (config === undefined) return $multi(undefined, err);
  const [index, indexErr] = buildIndex(config);
  if (index === undefined) return $multi(undefined, indexErr);
  // The router sees each route with its service table (for upstream paths); requests see
  // Kong's shape, `service = { id }`.
  const routes: KongRoute[] = [];
  const routesById = new LuaTable<string, KongRoute>();
  for (const route of config.routes) {
    const service = route.service !== undefined ? config.servicesById.get(route.service.id) : undefined;
    routes.push({ ...route, service: service as unknown as { id: string } });
    routesById.set(route.id, route);
  }
  return $multi({ config, router: newRouter(routes), plugins: index, routesById, version }, undefined);
}

setConsumerLookup((key, byUsername) => {
  if (current === undefined) return undefined;
  const byId = current.config.consumersById.get(key);
  if (byId !== undefined || !byUsername) return byId;
  for (const consumer of current.config.consumers) if (consumer.username === key) return consumer;
  return undefined;
});

export function activate(this: void, runtime: Runtime): void {
  current = runtime;
  runConfigure(runtime.plugins, runtime.config);
}

function dict(this: void): NgxShDict {
  return ngx.shared[DICT]!;
}

/** Admin side: validate, publish to every worker, persist. Returns the new runtime or the error. */
export function publish(this: void, input: unknown): LuaMultiReturn<[Runtime | undefined, string | undefined]> {
  const [json, encodeErr] = cjson.encode(input);
  if (json === undefined) return $multi(undefined, "could not encode config: " + tostring(encodeErr));
  const [runtime, err] = build(input, 0);
  if (runtime === undefined) return $multi(undefined, err);
  dict().set("config_json", json);
  const [version] = dict().incr("config_version", 1, 0);
  runtime.version = version ?? 0;
  activate(runtime);
  return $multi(runtime, undefined);
}

/** Worker side: adopt a config published by another worker, if any. Cheap when unchanged. */
export function sync(this: void): void {
  const [version] = dict().get("config_version");
  if (version === undefined || current === undefined || version === current.version) return;
  const [json] = dict().get("config_json");
  if (type(json) !== "string") return;
  const [decoded] = cjson.decode(json as string);
  const [runtime, err] = build(decoded, version as number);
  if (runtime === undefined) {
    ngx.log(ngx.ERR, "[kong] could not apply config version ", version, ": ", err);
    return;
  }
  activate(runtime);
}

/**
 * The live configuration of this worker: the validated config, its router and plugin
 * index. Replaced atomically; other workers pick up a new version from the shared dict.
 */
import * as cjson from "cjson.safe";
import { loadDeclarative, loaderEnv, type GatewayConfig, type LoadFailure } from "./config";
import { setConsumerIndex } from "./pdk";
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
export function build(this: void, input: unknown, version: number): LuaMultiReturn<[Runtime | undefined, string | undefined, LoadFailure | undefined]> {
  const [config, err, failure] = loadDeclarative(input, loaderEnv(getOptions().plugins));
  if (config === undefined) return $multi(undefined, err, failure);
  const [index, indexErr] = buildIndex(config);
  if (index === undefined) return $multi(undefined, indexErr, undefined);
  // The router sees each route with its service table (for upstream paths); requests see
  // Kong's shape, `service = { id }`.
  const routes: KongRoute[] = [];
  const routesById = new LuaTable<string, KongRoute>();
  for (const route of config.routes) {
    const service = route.service !== undefined ? config.servicesById.get(route.service.id) : undefined;
    routesById.set(route.id, route);
    // Kong 3: the routes of a disabled service do not match.
    if (service !== undefined && service.enabled === false) continue;
    routes.push({ ...route, service: service as unknown as { id: string } });
  }
  return $multi({ config, router: newRouter(routes), plugins: index, routesById, version }, undefined, undefined);
}

setConsumerIndex({
  byId: (id) => current?.config.consumersById.get(id),
  byUsername: (username) => {
    if (current === undefined) return undefined;
    for (const consumer of current.config.consumers) if (consumer.username === username) return consumer;
    return undefined;
  },
});

export function activate(this: void, runtime: Runtime): void {
  current = runtime;
  runConfigure(runtime.plugins, runtime.config);
}

function dict(this: void): NgxShDict {
  return ngx.shared[DICT]!;
}

/**
 * Admin side: validate, persist, publish to every worker. Returns the new runtime, or the
 * error and (for an invalid config) the loader's failure in parts.
 */
export function publish(this: void, input: unknown): LuaMultiReturn<[Runtime | undefined, string | undefined, LoadFailure | undefined]> {
  const [json, encodeErr] = cjson.encode(input);
  if (json === undefined) return $multi(undefined, "could not encode config: " + tostring(encodeErr), undefined);
  const [runtime, err, failure] = build(input, 0);
  if (runtime === undefined) return $multi(undefined, err, failure);
  const persistErr = persist(json);
  if (persistErr !== undefined) return $multi(undefined, persistErr, undefined);
  dict().set("config_json", json);
  const [version] = dict().incr("config_version", 1, 0);
  runtime.version = version ?? 0;
  activate(runtime);
  return $multi(runtime, undefined, undefined);
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

// ---------------------------------------------------------------- persistence

/*
 * Admin API changes (CRUD and POST /config) survive a restart: each accepted config is
 * appended as one JSON line, {"source_md5": ..., "config": ...}, to
 * <prefix>/krs/admin-state.jsonl. `source_md5` is the MD5 of the config file as the CLI
 * converted it at start (<prefix>/krs/config.json). At the next start the last complete
 * line is used when its source_md5 matches the config file being started; a config file
 * whose content changed wins and the old state is dropped. The master opens the file
 * (it may run as root, workers as nobody, and the prefix may be private to its owner) and
 * the workers append through the inherited handle; init rewrites it to its last line.
 */

let stateLog: LuaFile | undefined;
let sourceMd5 = "";

function stateFile(this: void): string {
  const [dir] = string.match(getOptions().config_file, "^(.*)/[^/]*$");
  return (dir ?? ".") + "/admin-state.jsonl";
}

function readText(this: void, path: string): string | undefined {
  const [file] = io.open(path, "r");
  if (file === undefined) return undefined;
  const text = file.read("*a") as string | undefined;
  file.close();
  return text;
}

/** The last complete record of the state file made from the same source, if any. */
function lastRecord(this: void, text: string): string | undefined {
  let found: string | undefined;
  for (const [line] of string.gmatch(text, "[^\n]+")) {
    const [record] = cjson.decode(line as string);
    if (type(record) === "table" && (record as LuaTable<string, unknown>).get("source_md5") === sourceMd5
      && type((record as LuaTable<string, unknown>).get("config")) === "table") {
      found = line as string;
    }
  }
  return found;
}

/**
 * init (master): the declarative config to start with, its JSON text, and where it came
 * from (for error messages): the config file, or the persisted Admin API state.
 */
export function initialConfig(this: void): LuaMultiReturn<[unknown, string, string]> {
  const configFile = getOptions().config_file;
  const source = readText(configFile);
  if (source === undefined) error(`could not read ${configFile}`, 0);
  sourceMd5 = ngx.md5(source);
  const path = stateFile();
  const previous = readText(path);
  const kept = previous !== undefined ? lastRecord(previous) : undefined;
  const [rewrite, openErr] = io.open(path, "w");
  if (rewrite === undefined) error(`could not write ${path}: ${openErr}`, 0);
  if (kept !== undefined) rewrite.write(kept, "\n");
  rewrite.close();
  const [log, appendErr] = io.open(path, "a");
  if (log === undefined) error(`could not open ${path}: ${appendErr}`, 0);
  stateLog = log;
  if (kept === undefined) {
    const [decoded, err] = cjson.decode(source);
    if (decoded === undefined) error(`could not parse ${configFile}: ${err}`, 0);
    return $multi(decoded, source, configFile);
  }
  const config = (cjson.decode(kept)[0] as LuaTable<string, unknown>).get("config");
  return $multi(config, cjson.encode(config)[0]!, `${path} (the Admin API changes kept since the last start; delete it to start from the config file)`);
}

function persist(this: void, json: string): string | undefined {
  if (stateLog === undefined) return undefined;
  const [ok, err] = stateLog.write(`{"source_md5":"${sourceMd5}","config":${json}}\n`);
  if (ok === undefined) return `could not persist the change to ${stateFile()}: ${err}`;
  if (!stateLog.flush()) return `could not persist the change to ${stateFile()}: flush failed`;
  return undefined;
}

// ---------------------------------------------------------------- write lock

const LOCK_KEY = "admin_write_lock";

/**
 * Runs `fn` with the Admin API's write lock held (one writer across all workers) after
 * adopting the latest published config, so concurrent changes never lose one another.
 */
let lockSerial = 0;

export function withWriteLock<T>(this: void, fn: (this: void) => T): LuaMultiReturn<[T | undefined, string | undefined]> {
  const deadline = ngx.now() + 10;
  lockSerial++;
  const token = `${ngx.worker.pid()}:${lockSerial}`;
  for (;;) {
    const [acquired] = dict().add(LOCK_KEY, token, 30);
    if (acquired) break;
    if (ngx.now() > deadline) return $multi(undefined, "timed out waiting for another Admin API change to finish");
    ngx.sleep(0.005);
    ngx.update_time();
  }
  sync();
  const [ok, result] = xpcall(fn, debug.traceback);
  // Only our own lock: if it expired meanwhile, another writer may hold it now.
  if (dict().get(LOCK_KEY)[0] === token) dict().delete(LOCK_KEY);
  if (!ok) return $multi(undefined, tostring(result));
  return $multi(result as T, undefined);
}

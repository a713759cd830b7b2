/**
 * Admin API writes on the local gateway: POST, PATCH, PUT and DELETE for services,
 * routes, consumers and plugins (also nested: /services/{s}/routes, /{services|routes|
 * consumers}/{x}/plugins), with Kong's bodies: JSON or form-encoded (`config.tag=x`,
 * `paths[]=/a`, values typed by the entity's schema as Kong's arguments module does).
 *
 * The declarative document stays the only source of truth. A change is applied to a flat
 * copy of the live config (every entity with its id, references by id) and published
 * through the same loader as the config file, so it is validated exactly as the file is;
 * the loader's failure becomes Kong's error body (code 2 "schema violation" with `fields`),
 * duplicates are Kong's 409 (code 5), dangling references its code 4 and 13 errors.
 */
import * as bitop from "bit";
import * as cjson from "cjson.safe";
import { loadDeclarative, loaderEnv, type GatewayConfig, type LoadFailure, type PluginEntity } from "./config";
import { getOptions, getRuntime, publish, withWriteLock, type Runtime } from "./runtime";
import { withReferences } from "./schema";

type Table = LuaTable<string, unknown>;
type Kind = "services" | "routes" | "consumers" | "plugins";

/** What an operation answers; turned into the HTTP response once the write lock is released. */
export interface Reply {
  status: number;
  body?: unknown;
}

interface Thrown {
  reply: Reply;
}

const NULL: unknown = cjson.null;

function reply(this: void, status: number, body?: unknown): never {
  const thrown: Thrown = { reply: { status, body } };
  throw thrown;
}

function notFound(this: void): never {
  return reply(404, { message: "Not found" });
}

function present(this: void, v: unknown): boolean {
  return v !== undefined && v !== NULL;
}

function isTable(this: void, v: unknown): v is Table {
  return type(v) === "table";
}

function deepCopy<T>(this: void, value: T): T {
  if (type(value) !== "table") return value;
  const out = new LuaTable<AnyNotNil, unknown>();
  for (const [k, v] of pairs(value as unknown as Table)) out.set(k, deepCopy(v));
  return out as unknown as T;
}

const UUID_PATTERN = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$";

function isUuid(this: void, v: unknown): boolean {
  return type(v) === "string" && string.find(v as string, UUID_PATTERN)[0] !== undefined;
}

/** A random (version 4) uuid, as Kong gives an entity created without an id. */
function newUuid(this: void): string {
  const [ok, random] = pcall(require, "resty.random");
  let bytes: string | undefined;
  if (ok) bytes = (random as { bytes: (this: void, n: number, strong?: boolean) => string | undefined }).bytes(16, true);
  const b: number[] = [];
  for (let i = 1; i <= 16; i++) b.push(bytes !== undefined ? string.byte(bytes, i) : math.random(0, 255));
  b[6] = bitop.bor(bitop.band(b[6], 0x0f), 0x40);
  b[8] = bitop.bor(bitop.band(b[8], 0x3f), 0x80);
  const hex: string[] = [];
  for (let i = 0; i < 16; i++) {
    hex.push(string.format("%02x", b[i]));
    if (i === 3 || i === 5 || i === 7 || i === 9) hex.push("-");
  }
  return table.concat(hex);
}

/** Kong's pl.pretty rendering of a one-level key table: {name="x"}. */
function pretty(this: void, t: Table): string {
  const keys: string[] = [];
  for (const [k] of pairs(t)) keys.push(k);
  table.sort(keys);
  const parts: string[] = [];
  for (const k of keys) {
    const v = t.get(k);
    parts.push(`${k}=${v === NULL ? "null" : isTable(v) ? pretty(v) : string.format("%q", tostring(v))}`);
  }
  return `{${table.concat(parts, ",")}}`;
}

// ---------------------------------------------------------------- the flat document

interface Doc {
  services: Table[];
  routes: Table[];
  consumers: Table[];
  plugins: Table[];
}

function entityCopy(this: void, entity: object): Table {
  return deepCopy(entity as unknown as Table);
}

/** The live config as a flat declarative document: ids explicit, references by id, references to vaults kept. */
function flatten(this: void, config: GatewayConfig): Doc {
  const doc: Doc = { services: [], routes: [], consumers: [], plugins: [] };
  for (const s of config.services) doc.services.push(entityCopy(s));
  for (const r of config.routes) doc.routes.push(entityCopy(r));
  for (const c of config.consumers) doc.consumers.push(entityCopy(c));
  for (const p of config.plugins) doc.plugins.push(pluginShown(p) as Table);
  return doc;
}

function docInput(this: void, doc: Doc): Table {
  const input = new LuaTable<string, unknown>();
  input.set("_format_version", "3.0");
  input.set("services", doc.services);
  input.set("routes", doc.routes);
  input.set("consumers", doc.consumers);
  input.set("plugins", doc.plugins);
  return input;
}

/** A plugin as the Admin API shows it: vault references, not the secrets they resolve to. */
export function pluginShown(this: void, plugin: PluginEntity): unknown {
  const shown = deepCopy(plugin as unknown as Table);
  shown.set("config", withReferences(plugin.config));
  return shown;
}

// ---------------------------------------------------------------- lookups

const KEY_FIELD: { [kind in Kind]: string } = {
  services: "name",
  routes: "name",
  consumers: "username",
  plugins: "instance_name",
};

function indexOf(this: void, list: Table[], kind: Kind, key: string): number | undefined {
  const byId = isUuid(key);
  for (let i = 0; i < list.length; i++) {
    const e = list[i];
    if (byId ? e.get("id") === key : e.get(KEY_FIELD[kind]) === key) return i;
  }
  // A uuid-looking name still names an entity when no id matches, as in Kong.
  if (byId) for (let i = 0; i < list.length; i++) if (list[i].get(KEY_FIELD[kind]) === key) return i;
  return undefined;
}

function refId(this: void, e: Table, field: string): string | undefined {
  const ref = e.get(field);
  return isTable(ref) ? (ref.get("id") as string | undefined) : undefined;
}

// ---------------------------------------------------------------- request bodies

type FieldType = "string" | "integer" | "number" | "boolean" | "array" | "set" | "map" | "record" | "foreign";
interface FieldSpec {
  type: FieldType;
  elements?: FieldSpec;
  values?: FieldSpec;
  fields?: SchemaFieldEntry[];
}

function specs(this: void, list: [string, FieldType][]): LuaTable<string, FieldSpec> {
  const out = new LuaTable<string, FieldSpec>();
  for (const [name, t] of list) {
    out.set(name, t === "array" || t === "set" ? { type: t, elements: { type: "string" } } : t === "map" ? { type: t, values: { type: "string" } } : { type: t });
  }
  return out;
}

/** Field types of Kong's core entities, for typing form values (kong/db/schema/entities/*.lua). */
const CORE_FIELDS: { [kind in Kind]: LuaTable<string, FieldSpec> } = {
  services: specs([["id", "string"], ["name", "string"], ["url", "string"], ["protocol", "string"], ["host", "string"],
    ["port", "integer"], ["path", "string"], ["retries", "integer"], ["connect_timeout", "integer"],
    ["write_timeout", "integer"], ["read_timeout", "integer"], ["tags", "set"], ["enabled", "boolean"],
    ["tls_verify", "boolean"], ["tls_verify_depth", "integer"], ["ca_certificates", "array"], ["client_certificate", "foreign"]]),
  routes: specs([["id", "string"], ["name", "string"], ["protocols", "set"], ["methods", "set"], ["hosts", "array"],
    ["paths", "array"], ["headers", "map"], ["https_redirect_status_code", "integer"], ["regex_priority", "integer"],
    ["strip_path", "boolean"], ["path_handling", "string"], ["preserve_host", "boolean"], ["request_buffering", "boolean"],
    ["response_buffering", "boolean"], ["snis", "set"], ["tags", "set"], ["service", "foreign"]]),
  consumers: specs([["id", "string"], ["username", "string"], ["custom_id", "string"], ["tags", "set"]]),
  plugins: specs([["id", "string"], ["name", "string"], ["instance_name", "string"], ["protocols", "set"],
    ["enabled", "boolean"], ["tags", "set"], ["service", "foreign"], ["route", "foreign"], ["consumer", "foreign"]]),
};

function fieldIn(this: void, fields: SchemaFieldEntry[] | undefined, name: string): FieldSpec | undefined {
  if (fields === undefined) return undefined;
  for (const entry of fields) {
    const f = (entry as unknown as LuaTable<string, FieldSpec>).get(name);
    if (f !== undefined) return f;
  }
  return undefined;
}

/** Kong's arguments.infer_value: form strings typed by the field ("" is null). */
function infer(this: void, field: FieldSpec | undefined, value: unknown): unknown {
  if (field === undefined) return value;
  if (value === "") return NULL;
  const t = field.type;
  if (t === "integer" || t === "number") return type(value) === "string" ? tonumber(value) ?? value : value;
  if (t === "boolean") return value === "true" ? true : value === "false" ? false : value;
  if (t === "array" || t === "set") {
    const list = isTable(value) ? value : ([value] as unknown as Table);
    for (const [k, v] of pairs(list)) list.set(k, infer(field.elements, v));
    return list;
  }
  if (t === "map" && isTable(value)) {
    for (const [k, v] of pairs(value)) value.set(k, infer(field.values, v));
    return value;
  }
  if (t === "record" && isTable(value)) {
    for (const [k, v] of pairs(value)) value.set(k, infer(fieldIn(field.fields, k), v));
    return value;
  }
  return value;
}

/** `a.b[]`, `a[2]`, `a.b.c` → path segments; "" marks an append. */
function keyPath(this: void, key: string): (string | number)[] {
  const out: (string | number)[] = [];
  for (const [part] of string.gmatch(key, "[^.]+")) {
    const [name, rest] = string.match(part as string, "^([^%[]*)(.*)$");
    if (name !== undefined && name !== "") out.push(name);
    for (const [index] of string.gmatch(rest ?? "", "%[([^%]]*)%]")) {
      const n = tonumber(index);
      out.push(n !== undefined ? n : (index as string));
    }
  }
  return out;
}

/** Kong's form decoding: dotted and bracketed keys become nested records and arrays. */
function decodeForm(this: void, args: ArgTable): Table {
  const root = new LuaTable<string, unknown>();
  for (const [key, raw] of pairs(args)) {
    const path = keyPath(key as string);
    if (path.length === 0) continue;
    let node = root as unknown as LuaTable<AnyNotNil, unknown>;
    for (let i = 0; i < path.length - 1; i++) {
      const seg = path[i];
      const key2: AnyNotNil = seg === "" ? node.length() + 1 : seg;
      let child = node.get(key2);
      if (!isTable(child)) {
        child = new LuaTable();
        node.set(key2, child);
      }
      node = child as LuaTable<AnyNotNil, unknown>;
    }
    const last = path[path.length - 1];
    const values = isTable(raw) ? (raw as unknown as unknown[]) : [raw];
    if (last === "") {
      for (const v of values) node.set(node.length() + 1, v);
    } else {
      node.set(last, isTable(raw) ? raw : values[0]);
    }
  }
  return root;
}

/** The request body as Kong's Admin API reads it: JSON object, or form fields typed by `typed`. */
function readBody(this: void, typed: (this: void, body: Table) => void): Table {
  ngx.req.read_body();
  const contentType = string.lower(ngx.var["content_type"] ?? "");
  const data = ngx.req.get_body_data();
  if (string.find(contentType, "application/json", 1, true)[0] !== undefined) {
    if (data === undefined || data === "") return new LuaTable();
    const [decoded] = cjson.decode(data);
    if (!isTable(decoded)) return reply(400, { message: "Cannot parse JSON body" });
    return decoded;
  }
  if (string.find(contentType, "x-www-form-urlencoded", 1, true)[0] !== undefined) {
    const [args] = ngx.req.get_post_args(1000);
    const body = decodeForm(args ?? new LuaTable());
    typed(body);
    return body;
  }
  if (data !== undefined && data !== "") return reply(415, { message: "Unsupported Content-Type: use application/json or application/x-www-form-urlencoded" });
  return new LuaTable();
}

function pluginConfigField(this: void, name: unknown): FieldSpec | undefined {
  if (type(name) !== "string") return undefined;
  const [ok, schema] = pcall(require, `kong.plugins.${name}.schema`);
  if (!ok || !isTable(schema)) return undefined;
  return fieldIn((schema as unknown as KongPluginSchema).fields, "config");
}

function typer(this: void, kind: Kind, existing: Table | undefined): (this: void, body: Table) => void {
  return (body) => {
    const core = CORE_FIELDS[kind];
    for (const [k, v] of pairs(body)) {
      if (kind === "plugins" && k === "config") {
        const field = pluginConfigField(body.get("name") ?? existing?.get("name"));
        body.set(k, infer(field ?? { type: "record" }, v));
      } else {
        body.set(k, infer(core.get(k), v));
      }
    }
  };
}

// ---------------------------------------------------------------- errors in Kong's shapes

function nest(this: void, fields: Table, path: string, message: string): void {
  const segments: AnyNotNil[] = [];
  for (const [seg] of string.gmatch(path, "[^.]+")) segments.push(tonumber(seg) ?? (seg as string));
  let node = fields as unknown as LuaTable<AnyNotNil, unknown>;
  for (let i = 0; i < segments.length - 1; i++) {
    let child = node.get(segments[i]);
    if (!isTable(child)) {
      child = new LuaTable();
      node.set(segments[i], child);
    }
    node = child as LuaTable<AnyNotNil, unknown>;
  }
  const last = segments[segments.length - 1];
  if (last === "@entity") {
    const list = (node.get(last) as string[] | undefined) ?? [];
    list.push(message);
    node.set(last, list);
  } else {
    node.set(last, message);
  }
}

/** Kong's code 2: 400 with `fields` nested by path and "@entity" for whole-entity checks. */
function schemaViolation(this: void, failure: LoadFailure): never {
  const fields = new LuaTable<string, unknown>();
  const lines: string[] = [];
  const entityLines: string[] = [];
  if (failure.fields !== undefined) {
    const paths: string[] = [];
    for (const [path] of pairs(failure.fields)) paths.push(path);
    table.sort(paths);
    for (const path of paths) {
      const message = failure.fields.get(path)!;
      nest(fields, path, message);
      if (path === "@entity") entityLines.push(message);
      else lines.push(`${string.gsub(path, "%.@entity$", "")[0]}: ${message}`);
    }
  } else if (failure.field !== undefined) {
    nest(fields, failure.field, failure.reason);
    lines.push(`${failure.field}: ${failure.reason}`);
  } else {
    nest(fields, "@entity", failure.reason);
    entityLines.push(failure.reason);
  }
  const all = [...entityLines, ...lines];
  const message = all.length === 1 ? `schema violation (${all[0]})` : `${all.length} schema violations (${table.concat(all, "; ")})`;
  return reply(400, { code: 2, name: "schema violation", message, fields });
}

function uniqueViolation(this: void, key: Table): never {
  return reply(409, { code: 5, name: "unique constraint violation", message: `UNIQUE violation detected on '${pretty(key)}'`, fields: key });
}

function oneKey(this: void, name: string, value: unknown): Table {
  const t = new LuaTable<string, unknown>();
  t.set(name, value);
  return t;
}

// ---------------------------------------------------------------- references between entities

const PARENT_KIND: { [field: string]: Kind } = { service: "services", route: "routes", consumer: "consumers" };

/** Resolves `field` ({id}, {name}/{username}, or a name) against the document; leaves `{ id }`. */
function resolveForeign(this: void, doc: Doc, entity: Table, field: string): void {
  const ref = entity.get(field);
  if (!present(ref)) return;
  const kind = PARENT_KIND[field];
  const list = doc[kind];
  let id: unknown;
  let byKey: string | undefined;
  let keyValue: unknown;
  if (isTable(ref)) {
    id = ref.get("id");
    if (!present(id)) {
      byKey = KEY_FIELD[kind];
      keyValue = ref.get(byKey);
    }
  } else if (type(ref) === "string") {
    if (isUuid(ref)) id = ref;
    else {
      byKey = KEY_FIELD[kind];
      keyValue = ref;
    }
  } else {
    return schemaViolation({ message: "", where: "", field, reason: "expected a record" });
  }
  if (present(id)) {
    if (!isUuid(id)) return schemaViolation({ message: "", where: "", field: `${field}.id`, reason: "expected a valid UUID" });
    for (const e of list) {
      if (e.get("id") === id) {
        entity.set(field, oneKey("id", id));
        return;
      }
    }
    const fk = oneKey("id", id);
    return reply(400, {
      code: 4,
      name: "foreign key violation",
      message: `the foreign key '${pretty(fk)}' does not reference an existing '${kind}' entity.`,
      fields: oneKey(field, fk),
    });
  }
  if (type(keyValue) === "string") {
    for (const e of list) {
      if (e.get(byKey!) === keyValue) {
        entity.set(field, oneKey("id", e.get("id")));
        return;
      }
    }
  }
  const detail = `the foreign key cannot be resolved with '${pretty(oneKey(byKey!, keyValue))}' for an existing '${kind}' entity`;
  return reply(400, {
    code: 13,
    name: "foreign keys unresolved",
    message: `foreign key unresolved (${field}.${byKey}: ${detail})`,
    fields: oneKey(field, oneKey(byKey!, detail)),
  });
}

// ---------------------------------------------------------------- checks Kong's database makes

function checkUnique(this: void, doc: Doc, kind: Kind, entity: Table): void {
  const id = entity.get("id");
  const list = doc[kind];
  for (const other of list) {
    if (other === entity) continue;
    if (other.get("id") === id) {
      return reply(400, { code: 3, name: "primary key violation", message: `primary key violation on key '${pretty(oneKey("id", id))}'`, fields: oneKey("id", id) });
    }
  }
  const uniques = kind === "services" || kind === "routes" ? ["name"] : kind === "consumers" ? ["username", "custom_id"] : ["instance_name"];
  for (const field of uniques) {
    const value = entity.get(field);
    if (!present(value)) continue;
    for (const other of list) if (other !== entity && other.get(field) === value) return uniqueViolation(oneKey(field, value));
  }
  if (kind === "plugins") {
    // Kong's plugins cache_key: one plugin of a name per service/route/consumer combination.
    const scope = (p: Table) => `${p.get("name")}|${refId(p, "service") ?? ""}|${refId(p, "route") ?? ""}|${refId(p, "consumer") ?? ""}`;
    const mine = scope(entity);
    for (const other of list) {
      if (other === entity || scope(other) !== mine) continue;
      const key = new LuaTable<string, unknown>();
      key.set("name", entity.get("name"));
      for (const f of ["service", "route", "consumer"]) key.set(f, present(entity.get(f)) ? entity.get(f) : NULL);
      return uniqueViolation(key);
    }
  }
}

// ---------------------------------------------------------------- operations

interface Target {
  kind: Kind;
  /** Parent of a nested collection: /services/{s}/routes → service; /routes/{r}/plugins → route. */
  parentField?: string;
  parentId?: string;
  /** The entity's key in the URL (id, name, username or instance_name). */
  key?: string;
}

/** Parses the URL; undefined when it is no CRUD path. Answers 404 when a parent is missing. */
function target(this: void, doc: Doc, s: string[]): Target | undefined {
  const kinds: { [k: string]: Kind } = { services: "services", routes: "routes", consumers: "consumers", plugins: "plugins" };
  const kind = kinds[s[0]];
  if (kind === undefined || s.length > 4) return undefined;
  if (s.length <= 2) return { kind, key: s[1] };
  const child = kinds[s[2]];
  const nestedOk = (kind === "services" && child === "routes") || (kind !== "plugins" && child === "plugins");
  if (child === undefined || !nestedOk) return undefined;
  const parentIndex = indexOf(doc[kind], kind, s[1]);
  if (parentIndex === undefined) return notFound();
  const parentField = kind === "services" ? "service" : kind === "routes" ? "route" : "consumer";
  return { kind: child, parentField, parentId: doc[kind][parentIndex].get("id") as string, key: s[3] };
}

function belongs(this: void, t: Target, entity: Table): boolean {
  return t.parentField === undefined || refId(entity, t.parentField) === t.parentId;
}

function shown(this: void, runtime: Runtime, kind: Kind, id: string): unknown {
  const config = runtime.config;
  if (kind === "services") return config.servicesById.get(id);
  if (kind === "routes") return runtime.routesById.get(id);
  if (kind === "consumers") return config.consumersById.get(id);
  for (const p of config.plugins) if (p.id === id) return pluginShown(p);
  return undefined;
}

/** Where the first NaN or infinity is in `value` ("config.minute"), if anywhere. */
function nonFinitePath(this: void, value: unknown, path: string): string | undefined {
  if (type(value) === "number") {
    const n = value as number;
    return n !== n || n === math.huge || n === -math.huge ? path : undefined;
  }
  if (!isTable(value)) return undefined;
  for (const [k, v] of pairs(value)) {
    const found = nonFinitePath(v, path === "" ? tostring(k) : `${path}.${tostring(k)}`);
    if (found !== undefined) return found;
  }
  return undefined;
}

/**
 * A declarative input JSON cannot carry (NaN, Infinity, 1e309 decoded from a body) is
 * refused as invalid before it is published: the loader's own failure when it has one
 * (a port is "expected an integer"), else the field holding the number. `entity`, when
 * given, is the only part that may hold one (the rest is the live config, encoded before),
 * so only it is encoded to check.
 */
export function unencodableFailure(this: void, input: unknown, entity?: unknown): LoadFailure | undefined {
  if (cjson.encode(entity ?? input)[0] !== undefined) return undefined;
  const [, , failure] = loadDeclarative(input, loaderEnv(getOptions().plugins));
  if (failure !== undefined) return failure;
  const field = nonFinitePath(entity ?? input, "") ?? "@entity";
  const reason = "expected a number (JSON has no NaN or Infinity)";
  return { message: `${field}: ${reason}`, where: "declarative config", field, reason };
}

/** Validates the changed document with the declarative loader and makes it live. */
function commit(this: void, doc: Doc, kind: Kind, id: string, status: number, entity: Table): Reply {
  const input = docInput(doc);
  const unencodable = unencodableFailure(input, entity);
  if (unencodable !== undefined) return schemaViolation(unencodable);
  const [runtime, err, failure] = publish(input);
  if (runtime === undefined) {
    if (failure !== undefined) return schemaViolation(failure);
    ngx.log(ngx.ERR, "[kong] Admin API change not applied: ", err);
    return { status: 500, body: { message: "An unexpected error occurred" } };
  }
  return { status, body: shown(runtime, kind, id) };
}

function applyUrlShorthand(this: void, entity: Table, patch: Table): void {
  if (!present(patch.get("url"))) return;
  for (const f of ["protocol", "host", "port", "path"]) if (patch.get(f) === undefined) entity.set(f, undefined);
}

/** Kong's update: fields replaced, records (a plugin's config and its records) merged. */
function mergeInto(this: void, entity: Table, patch: Table, fields: SchemaFieldEntry[] | undefined): void {
  for (const [k, v] of pairs(patch)) {
    const field = fieldIn(fields, k);
    const current = entity.get(k);
    if (field !== undefined && field.type === "record" && isTable(v) && isTable(current)) {
      mergeInto(current, v, field.fields);
    } else {
      entity.set(k, v);
    }
  }
}

function create(this: void, doc: Doc, t: Target, body: Table): Reply {
  const entity = body;
  if (t.parentField !== undefined) entity.set(t.parentField, oneKey("id", t.parentId));
  if (!present(entity.get("id"))) entity.set("id", newUuid());
  else if (!isUuid(entity.get("id"))) return schemaViolation({ message: "", where: "", field: "id", reason: "expected a valid UUID" });
  prepare(doc, t.kind, entity);
  doc[t.kind].push(entity);
  checkUnique(doc, t.kind, entity);
  return commit(doc, t.kind, entity.get("id") as string, 201, entity);
}

/** References resolved to ids, as the flat document keeps them. */
function prepare(this: void, doc: Doc, kind: Kind, entity: Table): void {
  if (kind === "routes") resolveForeign(doc, entity, "service");
  if (kind === "plugins") for (const f of ["service", "route", "consumer"]) resolveForeign(doc, entity, f);
}

function update(this: void, doc: Doc, t: Target, body: Table): Reply {
  const list = doc[t.kind];
  const index = indexOf(list, t.kind, t.key!);
  if (index === undefined || !belongs(t, list[index])) return notFound();
  const entity = list[index];
  if (present(body.get("id")) && body.get("id") !== entity.get("id")) {
    return schemaViolation({ message: "", where: "", field: "id", reason: "cannot change the id of an entity" });
  }
  if (t.kind === "services") applyUrlShorthand(entity, body);
  const config = t.kind === "plugins" ? pluginConfigField(body.get("name") ?? entity.get("name")) : undefined;
  const recordFields: SchemaFieldEntry[] = [{ config: { type: "record", fields: config?.fields ?? [] } as SchemaField }];
  mergeInto(entity, body, t.kind === "plugins" ? recordFields : undefined);
  prepare(doc, t.kind, entity);
  checkUnique(doc, t.kind, entity);
  return commit(doc, t.kind, entity.get("id") as string, 200, entity);
}

function upsert(this: void, doc: Doc, t: Target, body: Table): Reply {
  const list = doc[t.kind];
  const key = t.key!;
  const index = indexOf(list, t.kind, key);
  if (index !== undefined && !belongs(t, list[index])) return notFound();
  const entity = body;
  if (t.parentField !== undefined) entity.set(t.parentField, oneKey("id", t.parentId));
  if (isUuid(key)) entity.set("id", index !== undefined ? list[index].get("id") : key);
  else {
    entity.set(KEY_FIELD[t.kind], key);
    entity.set("id", index !== undefined ? list[index].get("id") : newUuid());
  }
  prepare(doc, t.kind, entity);
  if (index !== undefined) list[index] = entity;
  else list.push(entity);
  checkUnique(doc, t.kind, entity);
  return commit(doc, t.kind, entity.get("id") as string, 200, entity);
}

function remove(this: void, doc: Doc, t: Target): Reply {
  const list = doc[t.kind];
  const index = indexOf(list, t.kind, t.key!);
  if (index === undefined) return t.parentField !== undefined ? notFound() : { status: 204 };
  if (!belongs(t, list[index])) return notFound();
  const id = list[index].get("id") as string;
  if (t.kind === "services") {
    for (const r of doc.routes) {
      if (refId(r, "service") === id) {
        return reply(400, {
          code: 4,
          name: "foreign key violation",
          message: "an existing 'routes' entity references this 'services' entity",
          fields: oneKey("@referenced_by", "routes"),
        });
      }
    }
  }
  table.remove(list as unknown as Table[], index + 1);
  // Plugins go with the service, route or consumer they were scoped to (on_delete = cascade).
  const field = t.kind === "services" ? "service" : t.kind === "routes" ? "route" : t.kind === "consumers" ? "consumer" : undefined;
  if (field !== undefined) {
    const kept: Table[] = [];
    for (const p of doc.plugins) if (refId(p, field) !== id) kept.push(p);
    doc.plugins = kept;
  }
  const [runtime, err] = publish(docInput(doc));
  if (runtime === undefined) {
    ngx.log(ngx.ERR, "[kong] Admin API delete not applied: ", err);
    return { status: 500, body: { message: "An unexpected error occurred" } };
  }
  return { status: 204 };
}

function guarded(this: void, op: (this: void) => Reply): Reply {
  const [ok, result] = pcall(op);
  if (ok) return result as Reply;
  if (isTable(result) && (result as unknown as Thrown).reply !== undefined) return (result as unknown as Thrown).reply;
  throw result;
}

/**
 * A write on an entity path, or undefined when `segments` is no such path (the caller
 * answers). Runs under the Admin API's write lock, on the latest config.
 */
export function handleWrite(this: void, method: string, segments: string[]): Reply | undefined {
  if (method !== "POST" && method !== "PATCH" && method !== "PUT" && method !== "DELETE") return undefined;
  const first = segments[0];
  if (first !== "services" && first !== "routes" && first !== "consumers" && first !== "plugins") return undefined;
  // Receive the body before taking the lock: a slow client must not hold up other writers.
  ngx.req.read_body();
  const [result, err] = withWriteLock(() => guarded(() => {
    const doc = flatten(getRuntime()!.config);
    const t = target(doc, segments);
    if (t === undefined) return notFound();
    const isCollection = t.key === undefined;
    if (isCollection !== (method === "POST")) return reply(405, { message: "Method not allowed" });
    const existingIndex = t.key !== undefined ? indexOf(doc[t.kind], t.kind, t.key) : undefined;
    if (method === "DELETE") return remove(doc, t);
    const body = readBody(typer(t.kind, existingIndex !== undefined ? doc[t.kind][existingIndex] : undefined));
    if (method === "POST") return create(doc, t, body);
    if (method === "PATCH") return update(doc, t, body);
    return upsert(doc, t, body);
  }));
  if (result === undefined) {
    ngx.log(ngx.ERR, `[kong] Admin API error on ${method} /${table.concat(segments, "/")}: ${err}`);
    return { status: 500, body: { message: "An unexpected error occurred" } };
  }
  return result;
}

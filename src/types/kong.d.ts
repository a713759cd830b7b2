/**
 * Kong Gateway PDK (3.x), the subset kong-redis-suite uses. Signatures follow
 * kong/pdk/*.lua; each function lists the phases Kong allows it in. The local gateway's
 * PDK implements this same interface, so the compiler checks it is complete.
 *
 * Phases: init_worker, certificate, rewrite, access, response, header_filter,
 * body_filter, log, admin_api.
 */

declare type KongPhase = "init_worker" | "rewrite" | "access" | "header_filter" | "body_filter" | "log" | "admin_api";

/** A Kong entity id (uuid string). */
declare type EntityId = string & { readonly __entity?: "id" };

declare interface KongConsumer {
  id: EntityId;
  username?: string;
  custom_id?: string;
  tags?: string[];
  created_at?: number;
}
/** Credentials vary per auth plugin; `id` and `consumer` are what Kong core reads. */
declare interface KongCredential {
  id: EntityId;
  consumer?: { id: EntityId };
  [field: string]: unknown;
}
declare interface KongService {
  id: EntityId;
  name?: string;
  protocol: string;
  host: string;
  port: number;
  path?: string;
  retries?: number;
  connect_timeout?: number;
  write_timeout?: number;
  read_timeout?: number;
  tags?: string[];
  /** A disabled service's routes do not match (Kong 3). */
  enabled?: boolean;
}
declare interface KongRoute {
  id: EntityId;
  name?: string;
  protocols?: string[];
  methods?: string[];
  hosts?: string[];
  paths?: string[];
  strip_path?: boolean;
  preserve_host?: boolean;
  regex_priority?: number;
  service?: { id: EntityId };
  tags?: string[];
}

/** Body of kong.response.exit: a string as-is, a table JSON-encoded. */
declare type KongResponseBody = string | object;
declare type KongHeaders = { [name: string]: string | number | boolean | (string | number)[] };

/** @noSelf */
declare interface KongRequestApi {
  /** Phases: rewrite, access, header_filter, response, body_filter, log, admin_api. First value of a repeated header. */
  get_header(name: string): string | undefined;
  /** Phases: as get_header. Lower-case names; a repeated header is an array. Default max 100; then "truncated" when the request has more (ngx.req.get_headers's). */
  get_headers(max_headers?: number): LuaMultiReturn<[HeaderTable, "truncated" | undefined]>;
  /** Phases: as get_header. "GET", "POST", ... */
  get_method(): string;
  /** Phases: as get_header. Normalized path, without query string. */
  get_path(): string;
  /** Phases: as get_header. The query string without "?" ("" when none). */
  get_raw_query(): string;
  /** Phases: as get_header. Default max 100 arguments. */
  get_query(max_args?: number): ArgTable;
  /** Phases: as get_header. First value of a query argument. */
  get_query_arg(name: string): string | boolean | undefined;
  /** Phases: as get_header. "http" or "https". */
  get_scheme(): string;
  /** Phases: as get_header. Lower-case host, without port. */
  get_host(): string;
  /** Phases: as get_header. */
  get_port(): number;
  /** Phases: rewrite, access, response, admin_api. */
  get_raw_body(): LuaMultiReturn<[string | undefined, string | undefined]>;
  /**
   * Phases: rewrite, access, response, admin_api. The body parsed by MIME type
   * (application/x-www-form-urlencoded, application/json, multipart/form-data): the
   * table, or nil plus an error; the third value is the MIME type used.
   */
  get_body(mimetype?: string, max_args?: number): LuaMultiReturn<[LuaTable<string, unknown> | undefined, string | undefined, string | undefined]>;
}

/** @noSelf */
declare interface KongResponseApi {
  /**
   * Phases: rewrite, access, admin_api, header_filter (body must be nil).
   * Ends the current phase: plugins after this one do not run in it, but header_filter,
   * body_filter and log still run. A table body is JSON-encoded with
   * `Content-Type: application/json; charset=utf-8`.
   */
  exit(status: number, body?: KongResponseBody, headers?: KongHeaders): never;
  /** Phases: rewrite, access, admin_api, header_filter. Status 400..599; body `{"message": ...}`. */
  error(status: number, message?: string, headers?: KongHeaders): never;
  /** Phases: rewrite, access, header_filter, response, admin_api. */
  set_header(name: string, value: string | number | boolean): void;
  /** Phases: rewrite, access, header_filter, response, admin_api. */
  add_header(name: string, value: string | number | boolean): void;
  /** Phases: rewrite, access, header_filter, response, admin_api. */
  clear_header(name: string): void;
  /** Phases: header_filter, response, body_filter, log, admin_api. */
  get_header(name: string): string | undefined;
  /** Phases: header_filter, response, body_filter, log, admin_api. Then "truncated" when there are more (ngx.resp.get_headers's). */
  get_headers(max_headers?: number): LuaMultiReturn<[HeaderTable, "truncated" | undefined]>;
  /** Phases: header_filter, response, body_filter, log, admin_api. */
  get_status(): number;
  /** Phases: header_filter, response, body_filter, log. "service", "exit" or "error". */
  get_source(): "service" | "exit" | "error";
  /** Phases: rewrite, access, header_filter, response, admin_api. */
  set_status(status: number): void;
}

/** @noSelf */
declare interface KongServiceRequestApi {
  /** Phases: rewrite, access, balancer. */
  set_header(name: string, value: string | number | boolean): void;
  /** Phases: rewrite, access, balancer. */
  clear_header(name: string): void;
  /** Phases: rewrite, access. */
  set_raw_query(query: string): void;
  /** Phases: rewrite, access. */
  set_path(path: string): void;
  /** Phases: rewrite, access. Replaces the body sent upstream (Content-Length follows). */
  set_raw_body(body: string): void;
}

/** @noSelf */
declare interface KongServiceApi {
  request: KongServiceRequestApi;
}

/** @noSelf */
declare interface KongClientApi {
  /** Phases: certificate, rewrite, access, header_filter, response, body_filter, log. The peer's address. */
  get_ip(): string;
  /** Phases: as get_ip. The client address after trusted-proxy processing. */
  get_forwarded_ip(): string;
  /** Phases: access. At least one of consumer and credential must be given. */
  authenticate(consumer: KongConsumer | undefined, credential: KongCredential | undefined): void;
  /** Phases: access, header_filter, response, body_filter, log. */
  get_consumer(): KongConsumer | undefined;
  /** Phases: access, header_filter, response, body_filter, log. */
  get_credential(): KongCredential | undefined;
  /**
   * Phases: access, header_filter, response, body_filter, log (it raises elsewhere, e.g. in
   * an Admin API endpoint: use kong.db.consumers there). Looks a consumer up by id, or by
   * username when `search_by_username` is true and no id matches; an id that is not a
   * uuid raises unless `search_by_username`.
   */
  load_consumer(consumer_id: string, search_by_username?: boolean): LuaMultiReturn<[KongConsumer | undefined, string | undefined]>;
}

/** A DAO failure (kong/db/errors.lua): `tostring` gives "[<strategy>] <message>". */
declare interface KongDbError {
  code: number;
  name: string;
  message: string;
  strategy?: string;
  fields?: { [field: string]: string };
}

/**
 * kong.db.consumers (kong/db/dao/init.lua), the part the suite uses; callable in every
 * phase, the Admin API's included. Not found: nil and no error.
 */
declare interface KongConsumersDao {
  /** By primary key table; a key that is not a table raises, an invalid one is an error (code 1). */
  select(this: KongConsumersDao, primary_key: { id: string }): LuaMultiReturn<[KongConsumer | undefined, string | undefined, KongDbError | undefined]>;
  /** By username; one that is not a string raises, an invalid one is an error (code 10). */
  select_by_username(this: KongConsumersDao, username: string): LuaMultiReturn<[KongConsumer | undefined, string | undefined, KongDbError | undefined]>;
}

declare interface KongDb {
  consumers: KongConsumersDao;
}

/** @noSelf */
declare interface KongRouterApi {
  /** Phases: access, header_filter, response, body_filter, log. */
  get_route(): KongRoute | undefined;
  /** Phases: access, header_filter, response, body_filter, log. */
  get_service(): KongService | undefined;
}

/** @noSelf */
declare interface KongCtxApi {
  /** Shared by every plugin for one request. */
  shared: { [key: string]: unknown };
  /** Private to the running plugin (instance) for one request. */
  plugin: { [key: string]: unknown };
}

/** The table kong.log.serialize() returns (fields this suite reads). */
declare interface KongSerializedLog {
  request: { method: string; uri: string; url: string; size: number; querystring: ArgTable; headers: HeaderTable; id?: string };
  response: { status: number; size: number; headers: HeaderTable };
  route?: KongRoute;
  service?: KongService;
  consumer?: KongConsumer;
  latencies: { request: number; kong: number; proxy: number };
  client_ip: string;
  started_at: number;
  upstream_uri?: string;
  source?: string;
  /** nginx's $upstream_status ("" when not proxied). */
  upstream_status?: string;
  /** One per balancer attempt. */
  tries?: { ip: string; port: number; balancer_start: number; balancer_latency: number }[];
  /** Present when a credential authenticated the request. */
  authenticated_entity?: { id: string; consumer_id?: string };
  [extra: string]: unknown;
}

/** @noSelf */
declare interface KongLogApi {
  /** Phases: all. Logged with the running plugin's name as prefix. */
  err(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  notice(...args: unknown[]): void;
  info(...args: unknown[]): void;
  debug(...args: unknown[]): void;
  /** Phases: log. */
  serialize(): KongSerializedLog;
  /** Phases: rewrite, access, header_filter, response, body_filter, log. */
  /** `key` may be dotted ("request.headers.x"); nil removes; mode "set" (default), "add" (only if absent), "replace" (only if present). */
  set_serialize_value(key: string, value: unknown, options?: { mode?: "set" | "add" | "replace" }): void;
}

/** @noSelf */
declare interface KongNodeApi {
  /** Phases: all. This node's uuid. */
  get_id(): string;
  get_hostname(): string;
  /** Phases: all but init. Bytes, without a unit argument. */
  get_memory_stats(): KongMemoryStats;
}

/** kong.node.get_memory_stats(): shared dicts of this node, Lua VM of each worker. */
declare interface KongMemoryStats {
  lua_shared_dicts: { [name: string]: { allocated_slabs: number; capacity: number } };
  workers_lua_vms: { http_allocated_gc: number; pid: number; err?: string }[];
}

/** kong.nginx.get_statistics(): nginx's connection and request counters (stub_status's). */
declare interface KongNginxStatistics {
  connections_active: number;
  connections_reading: number;
  connections_writing: number;
  connections_waiting: number;
  connections_accepted: number;
  connections_handled: number;
  total_requests: number;
}

/** @noSelf */
declare interface KongNginxApi {
  /** Phases: all. */
  get_subsystem(): "http" | "stream";
  /** Phases: all but init. */
  get_statistics(): KongNginxStatistics;
}

declare interface KongPdk {
  /** PDK major.minor version string, e.g. "3.9.0". */
  version: string;
  request: KongRequestApi;
  response: KongResponseApi;
  service: KongServiceApi;
  client: KongClientApi;
  router: KongRouterApi;
  db: KongDb;
  ctx: KongCtxApi;
  log: KongLogApi;
  node: KongNodeApi;
  nginx: KongNginxApi;
}

declare const kong: KongPdk;

/** What Kong calls on a plugin: `handler:<phase>(conf)`. */
declare interface KongPluginHandler<Conf> {
  PRIORITY: number;
  VERSION: string;
  init_worker?(this: KongPluginHandler<Conf>): void;
  configure?(this: KongPluginHandler<Conf>, configs: Conf[] | undefined): void;
  rewrite?(this: KongPluginHandler<Conf>, conf: Conf): void;
  access?(this: KongPluginHandler<Conf>, conf: Conf): void;
  header_filter?(this: KongPluginHandler<Conf>, conf: Conf): void;
  body_filter?(this: KongPluginHandler<Conf>, conf: Conf): void;
  log?(this: KongPluginHandler<Conf>, conf: Conf): void;
}

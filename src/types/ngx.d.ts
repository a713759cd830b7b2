/**
 * lua-nginx-module's `ngx` API, the parts this project uses (lua-nginx-module 0.10.23,
 * the version Debian ships; nothing newer). Dot-called throughout, hence `@noSelf`.
 */

/** `ngx.null`: the light userdata Redis nil replies and cjson's null decode to. Never `null`. */
declare interface NgxNull {
  readonly __ngxNullBrand: unique symbol;
}

/** Seconds as a float (ngx.now()). */
declare type Seconds = number & { readonly __unit?: "seconds" };
/** Milliseconds. */
declare type Millis = number & { readonly __unit?: "millis" };

/** Request or response header table: a header repeated is a Lua array of its values. */
declare type HeaderTable = LuaTable<string, string | string[]>;
/** Query or form arguments: `true` for a bare `?flag`, an array for a repeated name. */
declare type ArgTable = LuaTable<string, string | boolean | (string | boolean)[]>;

/** A shared dict (`ngx.shared.NAME`): colon-called. */
declare interface NgxShDict {
  get(this: NgxShDict, key: string): LuaMultiReturn<[string | number | boolean | undefined, number | undefined]>;
  set(this: NgxShDict, key: string, value: string | number | boolean | undefined, exptime?: number, flags?: number): LuaMultiReturn<[boolean, string | undefined, boolean]>;
  add(this: NgxShDict, key: string, value: string | number | boolean, exptime?: number, flags?: number): LuaMultiReturn<[boolean, string | undefined, boolean]>;
  /** As add, but "no memory" instead of evicting other items when the zone is full. */
  safe_add(this: NgxShDict, key: string, value: string | number | boolean, exptime?: number, flags?: number): LuaMultiReturn<[boolean, string | undefined]>;
  /** As set, but "no memory" instead of evicting other items when the zone is full. */
  safe_set(this: NgxShDict, key: string, value: string | number | boolean | undefined, exptime?: number, flags?: number): LuaMultiReturn<[boolean, string | undefined]>;
  incr(this: NgxShDict, key: string, value: number, init?: number, init_ttl?: number): LuaMultiReturn<[number | undefined, string | undefined]>;
  delete(this: NgxShDict, key: string): void;
  flush_all(this: NgxShDict): void;
  get_keys(this: NgxShDict, max_count?: number): string[];
  /** Bytes of the zone (lua-resty-core). */
  capacity(this: NgxShDict): number;
  /** Bytes in free pages (lua-resty-core); a partly used slab page counts as used. */
  free_space(this: NgxShDict): number;
}

/** A cosocket (ngx.socket.tcp()): colon-called. */
declare interface NgxTcpSocket {
  connect(this: NgxTcpSocket, host: string, port: number, opts?: { pool?: string; pool_size?: number; backlog?: number }): LuaMultiReturn<[1 | undefined, string | undefined]>;
  sslhandshake(this: NgxTcpSocket, reused_session?: unknown, server_name?: string, ssl_verify?: boolean): LuaMultiReturn<[unknown, string | undefined]>;
  send(this: NgxTcpSocket, data: string): LuaMultiReturn<[number | undefined, string | undefined]>;
  receive(this: NgxTcpSocket, pattern?: string | number): LuaMultiReturn<[string | undefined, string | undefined, string | undefined]>;
  settimeout(this: NgxTcpSocket, ms: number): void;
  settimeouts(this: NgxTcpSocket, connect_ms: number, send_ms: number, read_ms: number): void;
  setkeepalive(this: NgxTcpSocket, timeout_ms?: number, size?: number): LuaMultiReturn<[1 | undefined, string | undefined]>;
  getreusedtimes(this: NgxTcpSocket): LuaMultiReturn<[number | undefined, string | undefined]>;
  close(this: NgxTcpSocket): LuaMultiReturn<[1 | undefined, string | undefined]>;
}

declare interface NgxRegexCaptures {
  [index: number]: string | undefined | false;
  [name: string]: string | undefined | false;
}

/** @noSelf */
declare interface NgxApi {
  null: NgxNull;
  /** `ngx.var.NAME`: nginx variables, strings or nil. Some are writable. */
  var: { [name: string]: string | undefined };
  /** Per-request Lua table (shared by all phases of one request). */
  ctx: LuaTable<string, unknown> & { [key: string]: unknown };
  /** Response status; assignable before headers are sent. */
  status: number;
  /** Response headers to send; assignable; `undefined` clears. */
  header: { [name: string]: string | string[] | undefined };
  /** body_filter phase: `ngx.arg[1]` the chunk, `ngx.arg[2]` eof. */
  arg: { [index: number]: string | boolean | undefined };
  shared: { [dict: string]: NgxShDict | undefined };

  OK: 0;
  ERROR: -1;
  AGAIN: -2;
  DONE: -4;
  DECLINED: -5;
  HTTP_OK: 200;
  HTTP_NOT_FOUND: 404;
  HTTP_INTERNAL_SERVER_ERROR: 500;
  HTTP_BAD_GATEWAY: 502;
  HTTP_SERVICE_UNAVAILABLE: 503;
  STDERR: 0;
  EMERG: 1;
  ALERT: 2;
  CRIT: 3;
  ERR: 4;
  WARN: 5;
  NOTICE: 6;
  INFO: 7;
  DEBUG: 8;

  log(level: number, ...args: unknown[]): void;
  say(...args: unknown[]): LuaMultiReturn<[1 | undefined, string | undefined]>;
  print(...args: unknown[]): LuaMultiReturn<[1 | undefined, string | undefined]>;
  exit(status: number): never;
  eof(): void;
  flush(wait?: boolean): void;
  sleep(seconds: number): void;
  now(): Seconds;
  time(): number;
  update_time(): void;
  today(): string;
  localtime(): string;
  utctime(): string;
  http_time(sec: number): string;
  parse_http_time(s: string): number | undefined;
  get_phase(): string;
  /** True once the response header has been sent. */
  headers_sent: boolean;
  md5(s: string): string;
  md5_bin(s: string): string;
  sha1_bin(s: string): string;
  crc32_short(s: string): number;
  crc32_long(s: string): number;
  hmac_sha1(key: string, data: string): string;
  encode_base64(s: string, no_padding?: boolean): string;
  decode_base64(s: string): string | undefined;
  escape_uri(s: string): string;
  unescape_uri(s: string): string;
  encode_args(args: LuaTable): string;
  decode_args(s: string, max?: number): ArgTable;
  quote_sql_str(s: string): string;

  req: NgxReqApi;
  resp: NgxRespApi;
  worker: NgxWorkerApi;
  timer: NgxTimerApi;
  re: NgxReApi;
  socket: NgxSocketApi;
  thread: NgxThreadApi;
  config: NgxConfigApi;
}

/** @noSelf */
declare interface NgxReqApi {
  get_headers(max?: number, raw?: boolean): LuaMultiReturn<[HeaderTable, string | undefined]>;
  get_uri_args(max?: number): LuaMultiReturn<[ArgTable, string | undefined]>;
  get_post_args(max?: number): LuaMultiReturn<[ArgTable | undefined, string | undefined]>;
  get_method(): string;
  set_method(method: number): void;
  http_version(): number | undefined;
  start_time(): Seconds;
  set_header(name: string, value: string | string[] | undefined): void;
  clear_header(name: string): void;
  set_uri(uri: string, jump?: boolean): void;
  set_uri_args(args: string | LuaTable): void;
  read_body(): void;
  get_body_data(): string | undefined;
  get_body_file(): string | undefined;
  set_body_data(data: string): void;
  is_internal(): boolean;
}

/** @noSelf */
declare interface NgxRespApi {
  get_headers(max?: number, raw?: boolean): LuaMultiReturn<[HeaderTable, string | undefined]>;
}

/** @noSelf */
declare interface NgxWorkerApi {
  id(): number | undefined;
  pid(): number;
  count(): number;
  exiting(): boolean;
}

/** @noSelf */
declare interface NgxTimerApi {
  at(delay: number, callback: (premature: boolean, ...args: any[]) => void, ...args: unknown[]): LuaMultiReturn<[1 | undefined, string | undefined]>;
  every(delay: number, callback: (premature: boolean, ...args: any[]) => void, ...args: unknown[]): LuaMultiReturn<[1 | undefined, string | undefined]>;
  running_count(): number;
  pending_count(): number;
}

/** @noSelf */
declare interface NgxReApi {
  match(subject: string, regex: string, options?: string): LuaMultiReturn<[NgxRegexCaptures | undefined, string | undefined]>;
  find(subject: string, regex: string, options?: string): LuaMultiReturn<[number | undefined, number | undefined, string | undefined]>;
  sub(subject: string, regex: string, replace: string, options?: string): LuaMultiReturn<[string | undefined, number, string | undefined]>;
  gsub(subject: string, regex: string, replace: string, options?: string): LuaMultiReturn<[string | undefined, number, string | undefined]>;
  gmatch(subject: string, regex: string, options?: string): LuaMultiReturn<[LuaIterable<NgxRegexCaptures> | undefined, string | undefined]>;
}

/** @noSelf */
declare interface NgxSocketApi {
  tcp(): NgxTcpSocket;
}

/** @noSelf */
declare interface NgxThreadApi {
  spawn(fn: (...args: any[]) => unknown, ...args: unknown[]): LuaThread;
  wait(...threads: LuaThread[]): LuaMultiReturn<[boolean, ...unknown[]]>;
}

/** @noSelf */
declare interface NgxConfigApi {
  prefix: () => string;
  ngx_lua_version: number;
  nginx_version: number;
  subsystem: "http" | "stream";
  debug: boolean;
}

declare const ngx: NgxApi;

/** The `ngx.balancer` module from lua-resty-core. */
declare module "ngx.balancer" {
  /** @noSelf */
  interface NgxBalancer {
    set_current_peer(host: string, port: number): LuaMultiReturn<[boolean | undefined, string | undefined]>;
    set_more_tries(count: number): LuaMultiReturn<[boolean | undefined, string | undefined]>;
    get_last_failure(): LuaMultiReturn<[string | undefined, number | undefined, string | undefined]>;
    set_timeouts(connect_s?: number, send_s?: number, read_s?: number): LuaMultiReturn<[boolean | undefined, string | undefined]>;
  }
  const balancer: NgxBalancer;
  export = balancer;
}

/** The `ngx.semaphore` module from lua-resty-core. */
declare module "ngx.semaphore" {
  interface NgxSemaphore {
    post(this: NgxSemaphore, n?: number): void;
    wait(this: NgxSemaphore, timeout_s: number): LuaMultiReturn<[boolean | undefined, string | undefined]>;
    count(this: NgxSemaphore): number;
  }
  /** @noSelf */
  interface NgxSemaphoreModule {
    "new"(n?: number): LuaMultiReturn<[NgxSemaphore | undefined, string | undefined]>;
  }
  const semaphore: NgxSemaphoreModule;
  export = semaphore;
}

/** LuaJIT's BitOp module, required explicitly (`require("bit")`). */
declare module "bit" {
  const bitop: typeof bit;
  export = bitop;
}

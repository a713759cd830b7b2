/** lua-resty-redis, lua-resty-lrucache, lua-resty-string: colon-called objects, `value, err` returns. */

/** A Redis reply: nil bulk replies are `ngx.null`; arrays nest. */
declare type RedisReply = string | number | NgxNull | RedisReply[];
/**
 * What a lua-resty-redis command returns: the reply; or `false, msg` for a Redis error
 * reply (-ERR ...); or `nil, err` for a network/protocol failure.
 */
declare type RedisResult = LuaMultiReturn<[RedisReply | false | undefined, string | undefined]>;
declare type RedisCommandFn = (this: RestyRedis, ...args: (string | number)[]) => RedisResult;

/** One connection object (`redis:new()`); never kept across requests. */
declare interface RestyRedis {
  set_timeouts(this: RestyRedis, connect_ms: number, send_ms: number, read_ms: number): void;
  set_timeout(this: RestyRedis, ms: number): void;
  /** Debian's 0.27 has no ssl options; Kong's ≥0.30 has `ssl`, `ssl_verify`, `server_name`. */
  connect(this: RestyRedis, host: string, port: number, opts?: { pool?: string; pool_size?: number; backlog?: number; ssl?: boolean; ssl_verify?: boolean; server_name?: string }): LuaMultiReturn<[1 | undefined, string | undefined]>;
  set_keepalive(this: RestyRedis, max_idle_ms: number, pool_size: number): LuaMultiReturn<[1 | undefined, string | undefined]>;
  get_reused_times(this: RestyRedis): LuaMultiReturn<[number | undefined, string | undefined]>;
  close(this: RestyRedis): LuaMultiReturn<[1 | undefined, string | undefined]>;
  init_pipeline(this: RestyRedis, n?: number): void;
  cancel_pipeline(this: RestyRedis): void;
  /** Each entry: a reply, or `[false, errmsg]` for a Redis error reply inside the pipeline. */
  commit_pipeline(this: RestyRedis): LuaMultiReturn<[(RedisReply | [false, string])[] | undefined, string | undefined]>;
  /** Every Redis command is a method: `red:evalsha(...)`, `red:auth(...)`. */
  [command: string]: unknown;
}

/** The raw socket the redis object holds (used for the TLS handshake on 0.27). */
declare interface RestyRedisWithSock extends RestyRedis {
  _sock?: NgxTcpSocket;
}

declare module "resty.redis" {
  /** @noSelf */
  interface RestyRedisModule {
    "new"(this: void): LuaMultiReturn<[RestyRedis | undefined, string | undefined]>;
    _VERSION: string;
  }
  const redis: RestyRedisModule;
  export = redis;
}

declare interface LruCache<V> {
  get(this: LruCache<V>, key: string): LuaMultiReturn<[V | undefined, V | undefined, number | undefined]>;
  set(this: LruCache<V>, key: string, value: V, ttl_s?: number, flags?: number): void;
  delete(this: LruCache<V>, key: string): boolean;
  flush_all(this: LruCache<V>): void;
  count(this: LruCache<V>): number;
  capacity(this: LruCache<V>): number;
}

declare module "resty.lrucache" {
  /** @noSelf */
  interface LruCacheModule {
    "new"<V>(size: number): LuaMultiReturn<[LruCache<V> | undefined, string | undefined]>;
  }
  const lrucache: LruCacheModule;
  export = lrucache;
}

declare module "resty.string" {
  /** @noSelf */
  interface RestyStringModule {
    to_hex(bin: string): string;
  }
  const str: RestyStringModule;
  export = str;
}

declare interface RestySha256 {
  update(this: RestySha256, s: string): boolean;
  final(this: RestySha256): string;
  reset(this: RestySha256): boolean;
}
declare module "resty.sha256" {
  /** @noSelf */
  interface RestySha256Module {
    "new"(this: void): RestySha256 | undefined;
  }
  const sha256: RestySha256Module;
  export = sha256;
}

declare module "resty.random" {
  /** @noSelf */
  interface RestyRandomModule {
    bytes(len: number, strong?: boolean): string | undefined;
  }
  const random: RestyRandomModule;
  export = random;
}

/** lua-cjson's `cjson.safe`: errors are returned, never raised. */
declare module "cjson.safe" {
  /** @noSelf */
  interface CjsonSafe {
    encode(value: unknown): LuaMultiReturn<[string | undefined, string | undefined]>;
    decode(text: string): LuaMultiReturn<[unknown, string | undefined]>;
    null: NgxNull;
    /** Upstream lua-cjson has it; true = encode empty tables as `{}`. */
    encode_empty_table_as_object?: (enabled: boolean | "on" | "off") => void;
    /** OpenResty's fork only (Kong): a sentinel encoded as `[]`. */
    empty_array?: unknown;
    /** OpenResty's fork only. */
    array_mt?: LuaTable;
    empty_array_mt?: LuaTable;
    encode_sparse_array(convert?: boolean, ratio?: number, safe?: number): void;
    "new"(): CjsonSafe;
  }
  const cjson: CjsonSafe;
  export = cjson;
}

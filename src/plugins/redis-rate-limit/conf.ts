/** redis-rate-limit's validated configuration and the enums its schema reuses. */
import type { RedisConf } from "../../lib/redis/schema";

export type Algorithm = "sliding-window" | "fixed-window";
export type Sync = "lease" | "exact";
export type LimitBy = "consumer" | "credential" | "ip" | "service" | "route" | "header" | "path";

export const ALGORITHMS: Algorithm[] = ["sliding-window", "fixed-window"];
export const SYNCS: Sync[] = ["lease", "exact"];
export const LIMIT_BY: LimitBy[] = ["consumer", "credential", "ip", "service", "route", "header", "path"];

/** The sliding-window arithmetic in redis-lua/rate-limit-1.lua is exact on integers up to this limit. */
export const MAX_LIMIT = 10000000000;

export interface Conf {
  second?: number;
  minute?: number;
  hour?: number;
  day?: number;
  month?: number;
  year?: number;
  algorithm: Algorithm;
  /** lease: workers reserve admissions in batches (redis-lua/rate-limit-lease-1.lua); exact: one script call per request. */
  sync: Sync;
  /** Seconds a lease may be used before what is left of it goes back to Redis. */
  lease_ttl: number;
  /** The most admissions one lease reserves. */
  lease_max: number;
  limit_by: LimitBy;
  header_name?: string;
  path?: string;
  hide_client_headers: boolean;
  error_code: number;
  error_message: string;
  fault_tolerant: boolean;
  redis: RedisConf;
  /** Set by Kong (3.x) on the config table it hands the handler: the plugin entity's id. */
  __plugin_id?: string;
  /** Set by Kong on the config table: the plugin's scope. */
  route_id?: string;
  service_id?: string;
}

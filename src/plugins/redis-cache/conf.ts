/** redis-cache's validated configuration and the lists its schema reuses. */
import type { RedisConf } from "../../lib/redis/schema";

export const PLUGIN_NAME = "redis-cache";

/** Request methods a response may be cached for (Kong proxy-cache's list). */
export const METHODS = ["GET", "HEAD", "POST", "PATCH", "PUT"];

export interface Conf {
  request_method: string[];
  response_code: number[];
  content_type: string[];
  /** Seconds. */
  cache_ttl: number;
  cache_control: boolean;
  vary_headers?: string[];
  /** Unset: every query argument is part of the key. */
  vary_query_params?: string[];
  ignore_uri_case: boolean;
  cache_per_consumer: boolean;
  /** Bytes. */
  max_body_size: number;
  /** Seconds; 0 disables the worker cache. */
  l1_ttl: number;
  l1_size: number;
  /** Bytes, for the whole worker (the smallest value among enabled instances applies). */
  l1_max_bytes: number;
  /** Milliseconds. */
  lock_timeout: number;
  /** Fraction of the TTL (0 = off). */
  refresh_ahead: number;
  sliding_ttl: boolean;
  /** Seals new entries. */
  encryption_key?: string;
  /** Also accepted when reading (key rotation); never used to seal. */
  decryption_keys?: string[];
  fault_tolerant: boolean;
  redis: RedisConf;
}

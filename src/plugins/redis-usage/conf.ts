/** redis-usage's validated configuration and the enums its schema reuses. */
import type { RedisConf } from "../../lib/redis/schema";

export type Fallback = "ip" | "credential" | "none";
export type QuotaUnit = "requests" | "cost";
export type QuotaMode = "batched" | "exact";

export const FALLBACKS: Fallback[] = ["ip", "credential", "none"];
export const QUOTA_UNITS: QuotaUnit[] = ["requests", "cost"];
export const QUOTA_MODES: QuotaMode[] = ["batched", "exact"];

/** Largest cost one request may carry: counters stay exact integers (HINCRBY, Lua doubles) far beyond any bill. */
export const MAX_COST = 1000000000;

export interface Conf {
  fallback: Fallback;
  cost: number;
  cost_header?: string;
  hide_cost_header: boolean;
  cost_per_kb?: number;
  daily_retention_days: number;
  monthly_retention_months: number;
  flush_interval: number;
  flush_batch: number;
  max_pending: number;
  quota_day?: number;
  quota_month?: number;
  quota_unit: QuotaUnit;
  quota_mode: QuotaMode;
  quota_status: number;
  quota_message: string;
  fault_tolerant: boolean;
  redis: RedisConf;
}

/** redis-jwt's config after schema validation (schema.ts). */
import type { RedisConf } from "../../lib/redis/schema";

export interface JwtConf {
  uri_param_names: string[];
  cookie_names: string[];
  header_names: string[];
  key_claim_name: string;
  secret_is_base64: boolean;
  claims_to_verify?: string[];
  anonymous?: string;
  run_on_preflight: boolean;
  maximum_expiration: number;
  realm?: string;
  clock_skew: number;
  cache_ttl: number;
  credential_encryption_key?: string;
  revocation_max_ttl: number;
  fault_tolerant: boolean;
  redis: RedisConf;
}

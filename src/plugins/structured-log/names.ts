/** Enums the schema and the sinks share, so that the validator and the registry cannot drift. */
export const SINKS = ["file", "redis-stream", "stdout"];
export const PLUGIN = "structured-log";
export const DEFAULT_REDACT_HEADERS = ["authorization", "proxy-authorization", "cookie", "set-cookie", "apikey", "x-api-key"];
export const DEFAULT_REDACT_QUERY = ["apikey", "api_key", "access_token", "jwt", "token"];

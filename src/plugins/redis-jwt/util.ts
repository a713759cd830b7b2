/**
 * redis-jwt's pure helpers (no Redis): the WWW-Authenticate values, the token out of a
 * `Bearer` header, how long cached answers outlive a Redis outage.
 */

const find = string.find;
const gsub = string.gsub;
const match = string.match;

/** Seconds past their own bound cached answers keep working while Redis cannot be asked. */
export const STALE_GRACE = 5;
/** Seconds a revocation without an expiry of its own is kept (schema default of revocation_max_ttl). */
export const DEFAULT_REVOCATION_MAX_TTL = 2592000;

/**
 * Kong's jwt challenge: `Bearer realm="<realm>"`, or bare `Bearer`; with
 * `error="invalid_token"` once a token was sent. The realm's quotes and backslashes are
 * escaped (RFC 7235 quoted-string).
 */
export function challenges(this: void, realm: string | undefined): LuaMultiReturn<[string, string]> {
  let base = "Bearer";
  if (realm !== undefined) {
    const [escaped] = gsub(realm, '[\\"]', (c: string) => "\\" + c);
    base = `Bearer realm="${escaped}"`;
  }
  return $multi(base, base + ' error="invalid_token"');
}

/**
 * The token of a `Bearer <token>` header value (anywhere in it, as Kong's unanchored
 * match; `Bearer` in any case), or nil.
 */
let lastValue: string | undefined;
let lastToken: string | undefined;

export function bearerToken(this: void, value: string): string | undefined {
  // Clients send the same header again and again: the warm path pays one string
  // comparison (interned strings) instead of a pattern match and a substring.
  if (value === lastValue) return lastToken;
  // A case-insensitive pattern, not lower(): no copy of the token.
  const [at] = find(value, "[Bb][Ee][Aa][Rr][Ee][Rr]%s");
  let token: string | undefined;
  if (at !== undefined) [token] = match(value, "^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(.+)$", at);
  // Kong's `(.+)` keeps trailing blanks; nginx has already trimmed the header's own.
  if (token === "") token = undefined;
  lastValue = value;
  lastToken = token;
  return token;
}

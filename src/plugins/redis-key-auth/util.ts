/**
 * redis-key-auth's pure helpers (no ngx, no Redis): key and id formats, how stale a
 * cached key may be during a Redis outage, the WWW-Authenticate value, removing an
 * argument from a raw query string.
 */

const find = string.find;
const gsub = string.gsub;
const sub = string.sub;

/** Keys are 32 random bytes, base64url without padding: 43 characters of [A-Za-z0-9_-]. */
export const KEY_LENGTH = 43;

/**
 * Could this be one of our keys? Anything else (too long, odd bytes) is refused before
 * it costs a hash, a cache slot or a Redis call.
 */
export function wellFormed(this: void, candidate: string): boolean {
  return candidate.length === KEY_LENGTH && find(candidate, "[^%w_%-]")[0] === undefined;
}

const UUID_PATTERN = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$";

/** Key ids are uuids; keys never look like one (43 characters, no fixed dashes). */
export function isId(this: void, value: string): boolean {
  return find(value, UUID_PATTERN)[0] !== undefined;
}

/**
 * Seconds past `cache_ttl` a key this worker last saw valid keeps working while Redis
 * cannot be asked: a blip does not turn every key whose entry just expired into a 500.
 */
export const STALE_GRACE = 5;
/** The same with fault_tolerant: the request would go on anyway, unauthenticated. */
export const STALE_GRACE_FAULT_TOLERANT = 300;

/**
 * May a key that Redis confirmed valid `age` seconds ago still be used while Redis is
 * unreachable? Bounded, so a revocation whose invalidation was missed cannot outlive
 * `cache_ttl` by more than the grace, however long the outage.
 */
export function staleUsable(this: void, age: number, cacheTtl: number, faultTolerant: boolean): boolean {
  return age <= cacheTtl + (faultTolerant ? STALE_GRACE_FAULT_TOLERANT : STALE_GRACE);
}

/**
 * Kong's key-auth challenge: `Key realm="<realm>"` with a realm, bare `Key` without one.
 * Unlike Kong, the realm's quotes and backslashes are escaped (RFC 7235 quoted-string),
 * so a realm cannot end the quoted string early.
 */
export function wwwAuthenticate(this: void, realm: string | undefined): string {
  if (realm === undefined) return "Key";
  const [escaped] = gsub(realm, '[\\"]', (c: string) => "\\" + c);
  return `Key realm="${escaped}"`;
}

/** application/x-www-form-urlencoded decoding of one name: `+` is a space, then %XX. */
function decodeName(this: void, raw: string, unescape: (this: void, s: string) => string): string {
  const [spaced] = gsub(raw, "+", " ");
  return unescape(spaced);
}

/**
 * `query` without every `name=value` (or bare `name`) argument whose decoded name is
 * `name`; the other arguments keep their order and their encoding.
 */
export function removeQueryArg(this: void, query: string, name: string, unescape: (this: void, s: string) => string): string {
  const kept: string[] = [];
  let start = 1;
  const length = query.length;
  while (start <= length + 1) {
    let [stop] = find(query, "&", start, true);
    if (stop === undefined) stop = length + 1;
    const arg = sub(query, start, stop - 1);
    if (arg !== "") {
      const [eq] = find(arg, "=", 1, true);
      const rawName = eq !== undefined ? sub(arg, 1, eq - 1) : arg;
      if (decodeName(rawName, unescape) !== name) kept.push(arg);
    }
    start = stop + 1;
  }
  return table.concat(kept, "&");
}

/**
 * Redis key builder: `krs:<plugin>:v1:{<tag>}:<part>:<part>…` (docs/redis-keys.md).
 *
 * Parts that come from clients (header values, paths, IPs, consumer names) go through
 * `part()`: a short value made only of [A-Za-z0-9._@-] is kept as-is, anything else is
 * replaced by `#` + base64url(SHA-1). Because `#`, `:`, `{` and `}` never appear in a kept
 * value, no input can break out of its part, forge a hash tag or collide with a hashed
 * one, and every part is at most 64 bytes.
 */

const MAX_PLAIN = 64;
const VERSION = "v1";

export function part(this: void, value: string): string {
  if (value.length <= MAX_PLAIN && value !== "" && string.find(value, "^[%w%._@%-]+$")[0] !== undefined) return value;
  const [encoded] = string.gsub(ngx.encode_base64(ngx.sha1_bin(value), true), "[+/]", (c: string) => (c === "+" ? "-" : "_"));
  return "#" + encoded;
}

/**
 * A key. `tag` is the Redis Cluster hash tag (every key one script call touches must share
 * it); `tag` and `parts` must already be safe (literals, or values from `part()`).
 */
export function key(this: void, plugin: string, tag: string, ...parts: string[]): string {
  let k = `krs:${plugin}:${VERSION}:{${tag}}`;
  for (const p of parts) k = k + ":" + p;
  return k;
}

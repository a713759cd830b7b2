/**
 * Every kind of Redis key the suite writes: the one table `krs inspect`, `krs purge` and
 * docs/redis-keys.md share. The markdown table in docs/redis-keys.md is generated from
 * this file (`npm run docs:keys`); spec/integration/10-krs-key-kinds.test.ts fails when
 * the two differ. A new plugin adds its rows here, and only here.
 */

/** What the table says about a key's TTL; `inspect` flags keys that break it. */
export type TtlRule =
  /** Must always have a TTL: a key of this kind without one is flagged. */
  | "required"
  /** May live without a TTL (e.g. an API key created without expiry). */
  | "optional"
  /** Meant to live forever. */
  | "none";

export interface KeyKind {
  plugin: string;
  /** Short name, unique within its plugin: `krs purge --kind`, `inspect` rows. */
  kind: string;
  /** The key as docs/redis-keys.md shows it (markdown). */
  pattern: string;
  /** Matches every key name of this kind and no other kind's. */
  match: RegExp;
  /** Redis type and fields (markdown). */
  type: string;
  ttlRule: TtlRule;
  /** TTL as docs/redis-keys.md says it (markdown). */
  ttl: string;
  /** What it is for (markdown). */
  what: string;
  /**
   * Removed after every other key of the plugin by `krs purge`: removing it first would
   * let keys still in Redis be read with its default value.
   */
  purgeLast?: boolean;
  /** Pub/sub channels are listed in the docs but are not keys: never scanned or purged. */
  channel?: boolean;
}

const HASH_TAG = String.raw`\{[^{}]*\}`;

export const KEY_KINDS: readonly KeyKind[] = [
  {
    plugin: "redis-rate-limit",
    kind: "counters",
    pattern: "`krs:redis-rate-limit:v1:{<plugin id>:<kind>:<identifier>}` (kind: `consumer`, `credential`, `ip`, `service`, `route`, `header` or `path`, the one actually used; identifier through `part()`)",
    match: new RegExp(`^krs:redis-rate-limit:v1:${HASH_TAG}$`),
    type: "hash: `<window>:start` (epoch ms), `<window>:count`, `<window>:prev` per configured window (`second` … `year`); with `sync: lease`, `lease:until` (epoch ms: the latest moment a lease of more than one admission may still be out)",
    ttlRule: "required",
    ttl: "set on each admitted request (`sync: exact`) or granted lease (`sync: lease`): until the end of the longest configured window (fixed-window), or of the window after it (sliding-window), plus 2 s for clock skew; never touched by a rejected request, nor by giving a lease back (HSET keeps it; an expired hash is not created again)",
    what: "the counters of one plugin instance for one client: admitted requests in the current and the previous window of every configured window length, admissions leased to workers counted as admitted until given back (redis-lua/rate-limit-1.lua, rate-limit-lease-1.lua, rate-limit-return-1.lua)",
  },
  {
    plugin: "redis-key-auth",
    kind: "key",
    pattern: "`krs:redis-key-auth:v1:{k}:key:<sha256 hex of the API key>`",
    match: /^krs:redis-key-auth:v1:\{k\}:key:[0-9a-f]{64}$/,
    type: "hash: `id` (the key's uuid), `consumer_id` (`\"\"` when not pinned), `consumer_username`, `consumer_custom_id` (`\"\"` when none), `created_at`, `expires_at` (unix seconds; `0` = never)",
    ttlRule: "optional",
    ttl: "the key's own lifetime plus one second (`EXPIRE ttl + 1` at creation: the gateway refuses the key from its `expires_at`, creation time + `ttl` rounded up to a whole second, and Redis's cleanup must not come first); **none for keys created without a TTL: they live until revoked**",
    what: "one API key; the key itself is never stored. Read by the gateway with one HGETALL on a worker-cache miss; written by redis-lua/key-auth-create-3.lua, deleted by key-auth-revoke-3.lua",
  },
  {
    plugin: "redis-key-auth",
    kind: "ids",
    pattern: "`krs:redis-key-auth:v1:{k}:ids`",
    match: /^krs:redis-key-auth:v1:\{k\}:ids$/,
    type: "hash: key id → JSON `{sha256, consumer_id, consumer_username, consumer_custom_id, created_at, expires_at}`",
    ttlRule: "none",
    ttl: "**none: lives forever**; an entry goes with its key's revocation, or (for an expired key) at the next create or revoke (at most 100 per call)",
    what: "the index of every key, for `list` and revoke-by-id; holds hashes, never keys",
  },
  {
    plugin: "redis-key-auth",
    kind: "expiring",
    pattern: "`krs:redis-key-auth:v1:{k}:expiring`",
    match: /^krs:redis-key-auth:v1:\{k\}:expiring$/,
    type: "sorted set: key id, score `expires_at`",
    ttlRule: "none",
    ttl: "**none: lives forever**; members leave as `ids` entries do",
    what: "which index entries to drop once their key has expired",
  },
  {
    plugin: "redis-key-auth",
    kind: "invalidations",
    pattern: "channel `krs:redis-key-auth:v1:invalidations` (pub/sub, not a key)",
    match: /^krs:redis-key-auth:v1:invalidations$/,
    type: "message: the revoked key's sha256 hex",
    ttlRule: "none",
    ttl: "-",
    what: "published by key-auth-revoke-3.lua in the same script that deletes the key; every gateway worker subscribes and evicts that hash from its cache",
    channel: true,
  },
  {
    plugin: "redis-jwt",
    kind: "credentials",
    pattern: "`krs:redis-jwt:v1:{c}:credentials`",
    match: /^krs:redis-jwt:v1:\{c\}:credentials$/,
    type: "hash: `key:<key>` (a credential, matched against the token's key claim) or `kid:<kid>` (a key imported from a JWKS, matched against the token's `kid`) → JSON `{id, key, algorithm, secret_sealed (HS*: base64 of AES-256-GCM nonce‖ciphertext‖tag under SHA-256 of credential_encryption_key, never the secret), rsa_public_key (PEM), consumer, created_at, jwks (set name, JWKS keys only)}`",
    ttlRule: "none",
    ttl: "**none: lives forever**; a credential goes when deleted, a JWKS key when its set is re-imported without it",
    what: "every redis-jwt credential; read by the gateway with one HMGET on a worker-cache miss, changed only by redis-lua/jwt-credentials-1.lua (which publishes the change)",
  },
  {
    plugin: "redis-jwt",
    kind: "revoked-token",
    pattern: "`krs:redis-jwt:v1:{r}:jti:<part(jti, or the SHA-256 hex of the token when it has none)>`",
    match: /^krs:redis-jwt:v1:\{r\}:jti:[^:]+$/,
    type: "string: `1`",
    ttlRule: "required",
    ttl: "`EXPIREAT` the token's `exp` + `clock_skew` (the moment the token would be refused anyway), or `revocation_max_ttl` (30 days by default) from the revocation for a token without `exp` or a `jti` revoked without its `exp`; re-revoking never shortens it",
    what: "one revoked token; read with the subject and consumer markers in one MGET when a worker has no current \"not revoked\" answer; written by redis-lua/jwt-revoke-1.lua",
  },
  {
    plugin: "redis-jwt",
    kind: "revoked-subject",
    pattern: "`krs:redis-jwt:v1:{r}:sub:<part(sub)>`",
    match: /^krs:redis-jwt:v1:\{r\}:sub:[^:]+$/,
    type: "string: T, unix seconds",
    ttlRule: "required",
    ttl: "`revocation_max_ttl` from the revocation (30 days by default); a later revocation may extend it, never shorten it",
    what: "\"log out everywhere\" for one `sub`: its tokens with `iat` before T (or without `iat`) are refused; T never moves back",
  },
  {
    plugin: "redis-jwt",
    kind: "revoked-consumer",
    pattern: "`krs:redis-jwt:v1:{r}:consumer:<part(consumer id or username)>`",
    match: /^krs:redis-jwt:v1:\{r\}:consumer:[^:]+$/,
    type: "string: T, unix seconds",
    ttlRule: "required",
    ttl: "as `revoked-subject`",
    what: "the same for every token of one Kong consumer (checked under both its id and its username)",
  },
  {
    plugin: "redis-jwt",
    kind: "invalidations",
    pattern: "channel `krs:redis-jwt:v1:invalidations` (pub/sub, not a key)",
    match: /^krs:redis-jwt:v1:invalidations$/,
    type: "message: `c` (credentials changed) or `r` (a revocation)",
    ttlRule: "none",
    ttl: "-",
    what: "published by jwt-credentials-1.lua and jwt-revoke-1.lua in the same script as the change; every gateway worker subscribes: `c` drops its credentials and verified tokens, `r` makes it ask Redis again about each token's revocation",
    channel: true,
  },
  {
    plugin: "redis-ip-access",
    kind: "entries",
    pattern: "`krs:redis-ip-access:v1:{<list>}:entries` (list: the shared list's name, `[A-Za-z0-9._-]{1,64}`, kept as-is by `part()`)",
    match: /^krs:redis-ip-access:v1:\{[^{}]*\}:entries$/,
    type: "sorted set: entry (address or CIDR as written) → expiry, epoch ms (`+inf`: never)",
    ttlRule: "optional",
    ttl: "`PEXPIREAT` the latest entry's expiry, set by every add; **none while the list holds an entry without TTL: such an entry lives until removed**",
    what: "one shared allow/deny list; read whole by each gateway worker (redis-lua/ip-access-load-3.lua), changed only by ip-access-add-3.lua, ip-access-remove-3.lua and (for the ban list) ip-access-hit-4.lua, each of which drops expired entries and their reasons",
  },
  {
    plugin: "redis-ip-access",
    kind: "reasons",
    pattern: "`krs:redis-ip-access:v1:{<list>}:reasons`",
    match: /^krs:redis-ip-access:v1:\{[^{}]*\}:reasons$/,
    type: "hash: entry → reason",
    ttlRule: "optional",
    ttl: "as `:entries`",
    what: "why an entry is there, for `list`",
  },
  {
    plugin: "redis-ip-access",
    kind: "version",
    pattern: "`krs:redis-ip-access:v1:{<list>}:version`",
    match: /^krs:redis-ip-access:v1:\{[^{}]*\}:version$/,
    type: "string: `<epoch ms of the change>-<sequence>`",
    ttlRule: "optional",
    ttl: "the latest entry's expiry plus one day; **none while the list holds an entry without TTL**; one day once the list is emptied",
    what: "the list's version: each worker compares it every `sync_interval` and reloads on a difference (how a lost pub/sub message is caught up). Outlives the entries so that a worker still sees the change",
  },
  {
    plugin: "redis-ip-access",
    kind: "hits",
    pattern: "`krs:redis-ip-access:v1:{<ban list>}:hits:<part(client address)>`",
    match: /^krs:redis-ip-access:v1:\{[^{}]*\}:hits:.+$/,
    type: "string: an integer",
    ttlRule: "required",
    ttl: "`ban.window` from the client's first counted response (`PEXPIRE` when the counter is created); deleted when the ban is added",
    what: "automatic bans: the client's responses with `ban.statuses`, counted by redis-lua/ip-access-hit-4.lua, which bans the client (adds it to `:entries`) when the counter reaches `ban.threshold`",
  },
  {
    plugin: "redis-ip-access",
    kind: "changes",
    pattern: "channel `krs:redis-ip-access:v1:changes` (pub/sub, not a key)",
    match: /^krs:redis-ip-access:v1:changes$/,
    type: "message: the list's name",
    ttlRule: "none",
    ttl: "-",
    what: "published by the add/remove scripts in the same script that changes the list; every gateway worker subscribes and reloads that list",
    channel: true,
  },
  {
    plugin: "redis-cache",
    kind: "generation",
    pattern: "`krs:redis-cache:v1:{ns}:generation`",
    match: /^krs:redis-cache:v1:\{ns\}:generation$/,
    type: "string: an integer (absent = 0)",
    ttlRule: "none",
    ttl: "**none: lives forever** (one small key per Redis)",
    what: "the cache generation; `DELETE /redis-cache` and `krs cache purge` increment it (redis-lua/cache-flush-1.lua), which drops every entry in O(1). Read by the gateway in the same pipeline as each lookup",
    purgeLast: true,
  },
  {
    plugin: "redis-cache",
    kind: "entry",
    pattern: "`krs:redis-cache:v1:{<generation>.<cache key>}:entry` (cache key: the 64 hex digits of SHA-256 the response shows in `X-Cache-Key`)",
    match: /^krs:redis-cache:v1:\{\d+\.[0-9a-f]{64}\}:entry$/,
    type: "string: `1\\|<ttl ms>\\|<stored at, epoch ms>\\|<kind>\\|…`: kind `E` status, the upstream's headers and body; `K` the same encrypted with AES-256-GCM, as `<key id>\\|` (8 hex digits naming the key, not the key) then nonce, ciphertext, tag (the prefix is authenticated); `C` the same without a key id (written by older versions, read only); `V` a Vary marker (the request header names the variants of this key vary on)",
    ttlRule: "required",
    ttl: "the entry's TTL (`cache_ttl`, or the response's s-maxage/max-age with `cache_control`), set by `SET … PX`; restarted on every hit with `sliding_ttl`, by nodes that can read the entry only; a node that cannot read it deletes it once its stored-at time plus its TTL has passed",
    what: "one cached response (or Vary marker). Entries of an older generation are never read again and expire with their TTL",
  },
  {
    plugin: "redis-cache",
    kind: "fill",
    pattern: "`krs:redis-cache:v1:{<generation>.<cache key>}:fill`",
    match: /^krs:redis-cache:v1:\{\d+\.[0-9a-f]{64}\}:fill$/,
    type: "string: the holder request's token, or `!`",
    ttlRule: "required",
    ttl: "`lock_timeout`",
    what: "stampede lock: the one request fetching a cold key holds it (redis-lua/cache-lookup-3.lua); released when its response is stored, or replaced by `!` for `lock_timeout` when the response could not be cached or may not be stored (a fresh entry this node cannot read is in the way), so waiting requests go upstream at once (cache-release-1.lua). Never taken for `only-if-cached`",
  },
  {
    plugin: "redis-cache",
    kind: "refresh",
    pattern: "`krs:redis-cache:v1:{<generation>.<cache key>}:refresh`",
    match: /^krs:redis-cache:v1:\{\d+\.[0-9a-f]{64}\}:refresh$/,
    type: "string: the holder request's token",
    ttlRule: "required",
    ttl: "`lock_timeout`",
    what: "refresh-ahead lock: the one request refreshing an entry inside the last `refresh_ahead` fraction of its TTL holds it; released after its store",
  },
  {
    plugin: "redis-usage",
    kind: "day",
    pattern: "`krs:redis-usage:v1:{<kind>:<subject>}:d:<YYYYMMDD>` (kind: `consumer` (its username, else custom_id, else id), `ip`, `credential`, `route` or `service` (name, else id); subject through `part()`; the UTC day)",
    match: /^krs:redis-usage:v1:\{(consumer|ip|credential|route|service):[^{}]*\}:d:\d{8}$/,
    type: "hash: `requests`, `bytes_in`, `bytes_out`, `cost`, `2xx` … `5xx`, `quota_requests` and `quota_cost` (admitted requests only), `subject` (the name, when the key part is a hash), `w:<node>:<pid>:<start ms>` (the last flush number applied from that worker)",
    ttlRule: "required",
    ttl: "until the end of the day plus `daily_retention_days` (PEXPIREAT, set by every flush)",
    what: "one subject's counts of one UTC day; written only by redis-lua/usage-flush-2.lua (one worker's buffered increments, once per flush number) and, for quotas in `exact` mode, usage-quota-3.lua",
  },
  {
    plugin: "redis-usage",
    kind: "month",
    pattern: "`krs:redis-usage:v1:{<kind>:<subject>}:m:<YYYYMM>` (as the day buckets; the UTC calendar month)",
    match: /^krs:redis-usage:v1:\{(consumer|ip|credential|route|service):[^{}]*\}:m:\d{6}$/,
    type: "hash: as the day buckets",
    ttlRule: "required",
    ttl: "until the end of the month plus `monthly_retention_months` calendar months (PEXPIREAT, set by every flush)",
    what: "one subject's counts of one UTC month; what billing reads (`krs usage show --csv`)",
  },
  {
    plugin: "redis-usage",
    kind: "quota",
    pattern: "`krs:redis-usage:v1:{consumer:<subject>}:quota`",
    match: /^krs:redis-usage:v1:\{(consumer|ip|credential):[^{}]*\}:quota$/,
    type: "hash: `day`, `month` (the consumer's quotas, in the config's `quota_unit`)",
    ttlRule: "none",
    ttl: "**none: lives until deleted** (an operator's per-consumer setting, like an API key without expiry); `DELETE /redis-usage/quotas/{consumer}` or `krs usage quota clear` removes it",
    what: "per-consumer quota overrides; read by usage-quota-3.lua (exact) and returned with every flush (batched)",
  },
  {
    plugin: "redis-metrics",
    kind: "node",
    pattern: "`krs:redis-metrics:v1:{cluster}:node:<part(node id)>`",
    match: /^krs:redis-metrics:v1:\{cluster\}:node:.+$/,
    type: "string: JSON `{node_id, boot, at, values}`, values: series → count (the node's counters and histogram parts, plus its previous run's when it restarted)",
    ttlRule: "required",
    ttl: "3 × `push_interval` (`PX`, set by every push): a stopped node drops out of the cluster view after that",
    what: "one node's snapshot for `GET /redis-metrics/cluster`, pushed by the node's first worker in a timer (redis-lua/metrics-push-2.lua)",
  },
  {
    plugin: "redis-metrics",
    kind: "nodes",
    pattern: "`krs:redis-metrics:v1:{cluster}:nodes`",
    match: /^krs:redis-metrics:v1:\{cluster\}:nodes$/,
    type: "sorted set: node id → its snapshot's expiry, epoch ms",
    ttlRule: "required",
    ttl: "the latest-expiring node's snapshot lifetime (`PEXPIRE` by every push); expired members removed by every push",
    what: "the live nodes: `GET /redis-metrics/cluster` reads the snapshots of the members not yet expired",
  },
  {
    plugin: "structured-log",
    kind: "stream",
    pattern: "`krs:structured-log:v1:{<stream_key>}:stream` (stream_key: the config's name, `[A-Za-z0-9._-]{1,64}`, kept as-is by `part()`)",
    match: /^krs:structured-log:v1:\{[^{}]*\}:stream$/,
    type: "stream: one entry per request, field `log` = the JSON line (what the log file would hold), ids `*` (Redis time)",
    ttlRule: "required",
    ttl: "`stream_ttl` (7 days) after the last batch written (`EXPIRE` in every batch's script call); its length is bounded by `XADD MAXLEN ~ max_len` (100,000)",
    what: "the request log every node shares, written in batches per worker (one EVALSHA of redis-lua/structured-log-append-1.lua: XADD per line + one EXPIRE); read with `krs logs tail`",
  },
];

/** Plugins that have keys in the table, in table order. */
export function knownPlugins(): string[] {
  return [...new Set(KEY_KINDS.map((k) => k.plugin))];
}

/** The kinds of one plugin that are keys (not channels). */
export function keyKindsOf(plugin: string): KeyKind[] {
  return KEY_KINDS.filter((k) => k.plugin === plugin && !k.channel);
}

/** Every key of a plugin starts with this, whatever its schema version. */
export function pluginPrefix(plugin: string): string {
  return `krs:${plugin}:`;
}

export interface Classified {
  plugin: string;
  /** undefined: under the plugin's prefix but of no kind in the table (another schema version, or a stray key). */
  kind?: KeyKind;
}

/** Which plugin and kind a key belongs to; undefined when it is not the suite's. */
export function classify(key: string): Classified | undefined {
  if (!key.startsWith("krs:")) return undefined;
  const colon = key.indexOf(":", 4);
  if (colon <= 4) return undefined;
  const plugin = key.slice(4, colon);
  for (const kind of KEY_KINDS) if (!kind.channel && kind.plugin === plugin && kind.match.test(key)) return { plugin, kind };
  return { plugin };
}

export const DOC_BEGIN = "<!-- key-kinds:begin (generated from src/cli/key-kinds.ts by `npm run docs:keys`; edit there) -->";
export const DOC_END = "<!-- key-kinds:end -->";

/** The markdown table of docs/redis-keys.md, as generated from KEY_KINDS. */
export function renderKeyTable(): string {
  const rows = KEY_KINDS.map((k) => `| ${k.plugin} | ${k.pattern} | ${k.type} | ${k.ttl} | ${k.what} |`);
  return ["| plugin | key | type | TTL | what |", "|---|---|---|---|---|", ...rows].join("\n");
}

/** docs/redis-keys.md with its table section replaced by a fresh render. */
export function withRenderedTable(doc: string): string {
  const begin = doc.indexOf(DOC_BEGIN);
  const end = doc.indexOf(DOC_END);
  if (begin < 0 || end < begin) throw new Error(`docs/redis-keys.md has no ${DOC_BEGIN} … ${DOC_END} section`);
  return doc.slice(0, begin + DOC_BEGIN.length) + "\n" + renderKeyTable() + "\n" + doc.slice(end);
}

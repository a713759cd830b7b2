/**
 * redis-jwt: Kong jwt's behaviour (where tokens come from, messages, headers, anonymous,
 * run_on_preflight, realm) with the credentials and revocations in Redis.
 *
 * Warm path (a token this worker verified before): one LRU lookup, the exp bound, and two
 * generation numbers; no Redis call, no signature check. A token is verified (and its
 * credential fetched with one HMGET when not cached) on first sight; its revocation state
 * costs one MGET the first time and again only after a revocation message (or while the
 * subscription is down: then on every request).
 */
import * as lrucache from "resty.lrucache";
import * as auth from "../../lib/auth";
import * as crypto from "../../lib/crypto";
import * as sign from "../../lib/crypto/sign";
import * as facts from "../../lib/facts";
import * as fault from "../../lib/redis/fault";
import { SUITE_VERSION } from "../../lib/version";
import * as workerCache from "./cache";
import type { CachedCredential, PoolState } from "./cache";
import * as store from "./store";
import type { CredentialRecord } from "./store";
import * as jwt from "./token";
import type { ClaimErrors, Token } from "./token";
import type { JwtConf } from "./conf";
import { bearerToken, challenges, STALE_GRACE } from "./util";

const PLUGIN = "redis-jwt";

const ERR_UNEXPECTED = auth.ERR_UNEXPECTED;
const ERR_REVOKED = "Token revoked";
/** Verified tokens per plugin instance and worker. */
const MAX_TOKENS = 10000;
/** Tokens longer than this are cached under their SHA-256, not as themselves. */
const MAX_PLAIN_CACHE_KEY = 4096;
/** A `kid` or key claim longer than this names no credential (never sent to Redis). */
const MAX_KEY_BYTES = 1024;
/** Seconds an unknown credential is remembered as unknown. */
const NEGATIVE_TTL = 1;

const type_ = type;
/** Credentials already reported as unusable by this worker: one warning each, not one per token. */
const warned = new LuaTable<string, boolean>();


/** A token this worker verified, as cached. */
interface VerifiedToken {
  consumer: KongConsumer;
  credential: KongCredential & { key: string };
  record: CredentialRecord;
  /** Revocation keys to MGET: jti (or hash) first, then subject and consumer markers. */
  revocationKeys: string[];
  iat?: number;
  /** Unix seconds after which the entry must not be used (exp + clock_skew), or undefined. */
  valid_until?: number;
  credential_generation: number;
  resolved_in: number;
  /** The revocation generation the "not revoked" answer was obtained in; -1: none yet. */
  revocation_generation: number;
  revocation_checked_at: number;
  /** Set once Redis said the token is revoked: revocations are never undone, so this holds without Redis. */
  revoked?: string;
}

interface Prepared {
  base: string;
  withError: string;
  anonymous?: string;
  claims: string[];
  tokens: LruCache<VerifiedToken>;
  anonymousSlot: auth.AnonymousSlot;
  /** Where tokens are looked for, copied out of the config; the only header name when there is one (the default). */
  queryNames: string[];
  cookieVariables: string[];
  headerNames: string[];
  onlyHeader?: string;
  /** Where this config reads tokens, for the request facts (a logger redacts them). */
  credentialNames: facts.CredentialNames;
}
const prepared = setmetatable(new LuaTable<JwtConf, Prepared>(), { __mode: "k" });

function optional(this: void, value: string | undefined): string | undefined {
  return type_(value) === "string" ? value : undefined;
}

function prepare(this: void, conf: JwtConf): Prepared {
  let p = prepared.get(conf);
  if (p === undefined) {
    const [base, withError] = challenges(optional(conf.realm));
    const [tokens, err] = lrucache.new<VerifiedToken>(MAX_TOKENS);
    if (tokens === undefined) return error(`redis-jwt: could not create the token cache: ${err}`);
    const claims: string[] = [];
    if (type_(conf.claims_to_verify) === "table") for (const c of conf.claims_to_verify!) claims.push(c);
    const headers: string[] = [];
    for (const name of conf.header_names) headers.push(name);
    const query: string[] = [];
    for (const name of conf.uri_param_names) query.push(name);
    const cookieVariables: string[] = [];
    for (const name of conf.cookie_names) cookieVariables.push("cookie_" + name);
    const credentialNames = { plugin: PLUGIN, headers, query, cookies: conf.cookie_names.length > 0 };
    p = {
      base,
      withError,
      anonymous: optional(conf.anonymous),
      claims,
      tokens,
      anonymousSlot: auth.newAnonymousSlot(),
      queryNames: query,
      cookieVariables,
      headerNames: headers,
      onlyHeader: headers.length === 1 ? headers[0] : undefined,
      credentialNames,
    };
    prepared.set(conf, p);
  }
  return p;
}

// ---------------------------------------------------------------- consumer headers

function setAnonymous(this: void, conf: JwtConf, p: Prepared, anonymous: string): void {
  // Kong's jwt hands later plugins the token it authenticated with: none here.
  if (auth.setAnonymous(p.anonymousSlot, anonymous, math.max(conf.cache_ttl, 1), workerCache.configVersion())) kong.ctx.shared.authenticated_jwt_token = undefined;
}

// ---------------------------------------------------------------- finding the token

// The token being collected (nothing between collecting and reading yields).
let foundToken: string | undefined;
let foundAnother = false;

function note(this: void, t: unknown): void {
  if (type_(t) !== "string" || t === "") return;
  if (foundToken === undefined) foundToken = t as string;
  else if (foundToken !== t) foundAnother = true;
}

/**
 * Every distinct token of the request, as Kong's jwt collects them: query arguments,
 * cookies, then `Bearer` headers. One token, nil (none), or a table (several).
 */
function retrieveToken(this: void, p: Prepared): string | undefined | LuaTable<number, string> {
  foundToken = undefined;
  foundAnother = false;
  // Most requests have no query string: no argument table is built for them.
  const queryNames = p.queryNames;
  if (queryNames.length > 0 && kong.request.get_raw_query() !== "") {
    const args = kong.request.get_query();
    for (const name of queryNames) {
      const value = args.get(name);
      if (type_(value) === "table") for (const v of value as unknown[]) note(v);
      else note(value);
    }
  }
  const cookieVariables = p.cookieVariables;
  if (cookieVariables.length > 0) for (const variable of cookieVariables) note(ngx.var[variable]);
  // A repeated header counts by its first value, as in Kong. One name (the default) needs
  // no loop: LuaJIT cannot compile one that runs once per request.
  const onlyHeader = p.onlyHeader;
  if (onlyHeader !== undefined) {
    const value = kong.request.get_header(onlyHeader);
    if (value !== undefined) note(bearerToken(value));
  } else {
    for (const name of p.headerNames) {
      const value = kong.request.get_header(name);
      if (value !== undefined) note(bearerToken(value));
    }
  }
  if (foundAnother) return new LuaTable<number, string>();
  return foundToken;
}

// ---------------------------------------------------------------- credentials

/** A record made ready to verify with: its secret opened or its public key parsed, once. */
function prepareCredential(this: void, conf: JwtConf, field: string, record: CredentialRecord, now: number): CachedCredential {
  const entry: CachedCredential = { record, checked_at: now };
  if (!sign.isAlgorithm(record.algorithm)) {
    entry.unusable = `unknown algorithm ${record.algorithm}`;
    return entry;
  }
  if (sign.isHmac(record.algorithm)) {
    const encryptionKey = optional(conf.credential_encryption_key);
    if (encryptionKey === undefined || encryptionKey === "" || record.secret_sealed === undefined) {
      entry.unusable = "HS* credential and no credential_encryption_key";
      return entry;
    }
    const secret = store.openSecret(encryptionKey, field, record.secret_sealed);
    if (secret === undefined) entry.unusable = "its secret does not open with credential_encryption_key";
    else entry.secret = secret;
    return entry;
  }
  const [key, err] = sign.publicKey(record.rsa_public_key ?? "");
  if (key === undefined) {
    entry.unusable = err;
    return entry;
  }
  const mismatch = sign.keyMismatch(record.algorithm, key);
  if (mismatch !== undefined) entry.unusable = mismatch;
  else entry.publicKey = key;
  return entry;
}

/**
 * What a cached credential depends on besides Redis: the key its HS* secret was opened
 * with (or that there was none). Instances on one Redis share the credential cache, and
 * one without credential_encryption_key (or with another) must not leave "unusable" (or
 * an opened secret) behind for the others.
 */
const sealScopes = setmetatable(new LuaTable<JwtConf, string>(), { __mode: "k" });
function sealScope(this: void, conf: JwtConf): string {
  let scope = sealScopes.get(conf);
  if (scope === undefined) {
    const encryptionKey = optional(conf.credential_encryption_key);
    scope = encryptionKey === undefined || encryptionKey === "" ? "-|" : crypto.toHex(crypto.sha256(encryptionKey)) + "|";
    sealScopes.set(conf, scope);
  }
  return scope;
}

/**
 * The credential for a token: the JWKS key named by `kid` when there is one, else the
 * credential named by the key claim. Nil when there is none; nil plus the Redis error
 * when Redis could not be asked and nothing cached could stand in.
 */
function findCredential(this: void, conf: JwtConf, state: PoolState, keyValue: string, kid: string | undefined): LuaMultiReturn<[CachedCredential | undefined, string | undefined, string | undefined]> {
  const fields: string[] = [];
  if (kid !== undefined) fields.push(store.jwksField(kid));
  fields.push(store.credentialField(keyValue));
  const now = ngx.now();
  const scope = sealScope(conf);
  const found: (CachedCredential | undefined)[] = [];
  const stale: (CachedCredential | undefined)[] = [];
  const missing: string[] = [];
  for (let i = 0; i < fields.length; i++) {
    const [hit, old] = state.credentials.get(scope + fields[i]);
    const fresh = hit !== undefined && now - hit.checked_at <= (hit.record === false ? NEGATIVE_TTL : conf.cache_ttl);
    found[i] = fresh ? hit : undefined;
    stale[i] = hit ?? old;
    if (!fresh) missing.push(fields[i]);
  }
  if (missing.length > 0) {
    const generation = state.credentialGeneration;
    // The Redis calls are this plugin's (facts.redisCall); the warm path makes none, so it does not say so.
    facts.enter(PLUGIN);
    const [records, err] = store.lookup(conf.redis, missing);
    if (records === undefined) {
      for (let i = 0; i < fields.length; i++) {
        const old = stale[i];
        if (found[i] === undefined && old !== undefined && old.record !== false && now - old.checked_at <= conf.cache_ttl + STALE_GRACE) found[i] = old;
      }
      if (found[0] === undefined && found[fields.length - 1] === undefined) return $multi(undefined, err ?? "unknown error", undefined);
    } else {
      let j = 0;
      for (let i = 0; i < fields.length; i++) {
        if (found[i] !== undefined) continue;
        const record = records[j++];
        const entry: CachedCredential = record === false ? { record: false, checked_at: now } : prepareCredential(conf, fields[i], record, now);
        found[i] = entry;
        // A change announced while Redis was being asked may concern this credential.
        if (generation === state.credentialGeneration && conf.cache_ttl > 0) state.credentials.set(scope + fields[i], entry, record === false ? NEGATIVE_TTL : conf.cache_ttl);
      }
    }
  }
  for (let i = 0; i < fields.length; i++) {
    const entry = found[i];
    if (entry !== undefined && entry.record !== false) {
      const record = entry.record;
      // A kid only ever names a JWKS key; the key claim only a credential created as such.
      if (i === 0 && kid !== undefined && record.jwks === undefined) continue;
      return $multi(entry, undefined, fields[i]);
    }
  }
  return $multi(undefined, undefined, undefined);
}

// ---------------------------------------------------------------- revocation

/**
 * Refusal message when the token is revoked, nil when not; nil plus the Redis error when
 * the state is unknown (and no recent answer can stand in).
 */
function checkRevocation(this: void, conf: JwtConf, state: PoolState, entry: VerifiedToken): LuaMultiReturn<[string | undefined, string | undefined]> {
  if (entry.revoked !== undefined) return $multi(entry.revoked, undefined);
  const generation = state.revocationGeneration;
  facts.enter(PLUGIN);
  const [revoked, before, err] = store.revocationState(conf.redis, entry.revocationKeys);
  const now = ngx.now();
  if (revoked === undefined) {
    // Nobody can revoke while Redis is down; what this worker knew stays good for as long
    // as a lost message may cost (cache_ttl), plus the grace, unless a revocation was
    // announced since: it may have been this token's.
    if (entry.revocation_generation >= 0 && entry.revocation_generation === generation && now - entry.revocation_checked_at <= conf.cache_ttl + STALE_GRACE) {
      fault.logThrottled(PLUGIN, `redis unavailable: ${err ?? "unknown error"} (recently checked tokens keep working)`, conf);
      return $multi(undefined, undefined);
    }
    return $multi(undefined, err ?? "unknown error");
  }
  if (revoked || (before > 0 && (entry.iat === undefined || entry.iat < before))) {
    // Remembered, so that an outage (when the "not revoked" answer of before would stand in) cannot bring it back.
    entry.revoked = ERR_REVOKED;
    return $multi(ERR_REVOKED, undefined);
  }
  entry.revocation_generation = generation;
  entry.revocation_checked_at = now;
  return $multi(undefined, undefined);
}

// ---------------------------------------------------------------- verification

interface Refusal {
  message?: string;
  errors?: ClaimErrors;
  /** Kong sends no WWW-Authenticate with "Could not find consumer". */
  bare?: boolean;
  result: facts.AuthResult;
}

function refusal(this: void, message: string, result: facts.AuthResult = "invalid"): Refusal {
  return { message, result };
}

function consumerOf(this: void, record: CredentialRecord): KongConsumer | undefined {
  const [consumer, err] = kong.client.load_consumer(record.consumer, true);
  if (err !== undefined) error(err);
  return consumer;
}

/** Verifies a token seen for the first time (or again after a change). */
function verifyToken(this: void, conf: JwtConf, p: Prepared, state: PoolState, raw: string): LuaMultiReturn<[VerifiedToken | undefined, Refusal | undefined, string | undefined]> {
  const [token, parseErr] = jwt.parse(raw);
  if (token === undefined) return $multi(undefined, refusal(`Bad token; ${parseErr}`), undefined);
  const claimName = conf.key_claim_name;
  const keyValue = token.claims.get(claimName) ?? token.header.get(claimName);
  if (keyValue === undefined) return $multi(undefined, refusal(`No mandatory '${claimName}' in claims`), undefined);
  if (type_(keyValue) !== "string" || keyValue === "") return $multi(undefined, refusal(`Invalid '${claimName}' in claims`), undefined);
  const kidValue = token.header.get("kid");
  const kid = type_(kidValue) === "string" && (kidValue as string).length <= MAX_KEY_BYTES && kidValue !== "" ? (kidValue as string) : undefined;

  const notFound = refusal(`No credentials found for given '${claimName}'`, "unknown");
  if ((keyValue as string).length > MAX_KEY_BYTES) return $multi(undefined, notFound, undefined);
  const generation = state.credentialGeneration;
  const [credential, redisErr, field] = findCredential(conf, state, keyValue as string, kid);
  if (redisErr !== undefined) return $multi(undefined, undefined, redisErr);
  if (credential === undefined || credential.record === false) return $multi(undefined, notFound, undefined);
  const record = credential.record;
  if (token.alg !== record.algorithm) return $multi(undefined, refusal("Invalid algorithm"), undefined);
  if (credential.unusable !== undefined) {
    if (!warned.has(record.id)) {
      warned.set(record.id, true);
      kong.log.warn(`credential ${record.id} (key '${record.key}') cannot verify tokens: ${credential.unusable}`);
    }
    return $multi(undefined, refusal("Invalid key/secret"), undefined);
  }
  let secret = credential.secret;
  if (secret !== undefined && conf.secret_is_base64) {
    secret = jwt.base64urlDecode(secret);
    if (secret === undefined) return $multi(undefined, refusal("Invalid key/secret"), undefined);
  }
  if (!sign.verify(token.alg, token.signingInput, token.signature, secret, credential.publicKey)) {
    return $multi(undefined, refusal("Invalid signature"), undefined);
  }
  const now = ngx.time();
  const errors = jwt.verifyClaims(token.claims, p.claims, now, conf.clock_skew);
  if (errors !== undefined) return $multi(undefined, { errors, result: errors.get("exp") === "token expired" ? "expired" : "invalid" }, undefined);
  if (conf.maximum_expiration > 0 && jwt.exceedsMaximum(token.claims, conf.maximum_expiration, now)) {
    const tooLong = new LuaTable<string, string>();
    tooLong.set("exp", "exceeds maximum allowed expiration");
    return $multi(undefined, { errors: tooLong, result: "invalid" }, undefined);
  }
  const consumer = consumerOf(record);
  if (consumer === undefined) {
    return $multi(undefined, { message: `Could not find consumer for '${claimName}=${keyValue as string}'`, bare: true, result: "unknown" }, undefined);
  }
  return $multi(newEntry(conf, token, record, consumer, generation, field!), undefined, undefined);
}

function newEntry(this: void, conf: JwtConf, token: Token, record: CredentialRecord, consumer: KongConsumer, generation: number, _field: string): VerifiedToken {
  const jti = jwt.jtiOf(token.claims) ?? crypto.toHex(crypto.sha256(token.raw));
  const keys = [store.tokenRevocationKey(jti)];
  const sub = jwt.stringClaim(token.claims, "sub");
  if (sub !== undefined) keys.push(store.subjectRevocationKey(sub));
  if (consumer.id !== undefined) keys.push(store.consumerRevocationKey(consumer.id));
  if (consumer.username !== undefined) keys.push(store.consumerRevocationKey(consumer.username));
  const exp = jwt.numericClaim(token.claims, "exp");
  return {
    consumer,
    credential: { id: record.id, key: record.key, consumer: { id: consumer.id } } as KongCredential & { key: string },
    record,
    revocationKeys: keys,
    iat: jwt.numericClaim(token.claims, "iat"),
    valid_until: exp !== undefined ? exp + conf.clock_skew : undefined,
    credential_generation: generation,
    resolved_in: workerCache.configVersion(),
    revocation_generation: -1,
    revocation_checked_at: 0,
  };
}

function cacheKey(this: void, raw: string): string {
  return raw.length <= MAX_PLAIN_CACHE_KEY ? raw : "#" + crypto.sha256(raw);
}

function cacheEntry(this: void, conf: JwtConf, p: Prepared, k: string, entry: VerifiedToken): void {
  if (conf.cache_ttl <= 0) return;
  let ttl = conf.cache_ttl;
  if (entry.valid_until !== undefined) ttl = math.min(ttl, entry.valid_until - ngx.now());
  if (ttl > 0) p.tokens.set(k, entry, ttl);
}

/** A cached token still usable as verified: same credentials, same config, not past its exp. */
function usable(this: void, state: PoolState, entry: VerifiedToken): boolean {
  return entry.credential_generation === state.credentialGeneration
    && entry.resolved_in === workerCache.configVersion()
    && (entry.valid_until === undefined || ngx.time() < entry.valid_until);
}

// ---------------------------------------------------------------- phases

function refuse(this: void, p: Prepared, r: Refusal): void {
  facts.auth(PLUGIN, r.result, undefined, r.message ?? "claims");
  if (r.bare === true) return kong.response.exit(401, { message: r.message });
  return kong.response.exit(401, r.errors ?? { message: r.message }, { "WWW-Authenticate": p.withError });
}

function redisFailed(this: void, conf: JwtConf, p: Prepared, err: string): void {
  facts.auth(PLUGIN, "error", undefined, ERR_UNEXPECTED);
  fault.onRedisFailure(PLUGIN, conf, err);
  if (p.anonymous !== undefined) setAnonymous(conf, p, p.anonymous);
  else auth.clearConsumerHeaders();
}

const handler: KongPluginHandler<JwtConf> = {
  PRIORITY: 1450,
  VERSION: SUITE_VERSION,

  configure(configs) {
    const redisConfs = [];
    if (configs !== undefined) for (const conf of configs) redisConfs.push(conf.redis);
    workerCache.configure(redisConfs);
    if (configs !== undefined) for (const conf of configs) workerCache.rememberSettings(conf.redis, conf);
  },

  access(conf) {
    if (!conf.run_on_preflight && kong.request.get_method() === "OPTIONS") return;
    const p = prepare(conf);
    const anonymous = p.anonymous;
    if (anonymous !== undefined && kong.client.get_credential() !== undefined) return;

    facts.credentialNames(p.credentialNames);
    const found = retrieveToken(p);
    let failure: Refusal | undefined;
    if (found === undefined) {
      failure = refusal("Unauthorized", "missing");
    } else if (type_(found) === "table") {
      failure = refusal("Multiple tokens provided");
    } else {
      const raw = found as string;
      const state = workerCache.stateFor(conf.redis);
      const k = cacheKey(raw);
      let [entry] = p.tokens.get(k);
      if (entry !== undefined && !usable(state, entry)) entry = undefined;
      if (entry === undefined) {
        const [verified, refused, redisErr] = verifyToken(conf, p, state, raw);
        if (redisErr !== undefined) {
          redisFailed(conf, p, redisErr);
          return;
        }
        failure = refused;
        entry = verified;
        if (entry !== undefined) cacheEntry(conf, p, k, entry);
      }
      if (entry !== undefined) {
        if (entry.revoked !== undefined || !state.subscribed || entry.revocation_generation !== state.revocationGeneration) {
          const [revoked, redisErr] = checkRevocation(conf, state, entry);
          if (redisErr !== undefined) {
            redisFailed(conf, p, redisErr);
            return;
          }
          if (revoked !== undefined) failure = refusal(revoked, "revoked");
        }
        if (failure === undefined) {
          // Not tail calls (here and below): see lib/auth.ts.
          auth.authenticated(PLUGIN, entry.consumer, entry.credential, entry.credential.key);
          kong.ctx.shared.authenticated_jwt_token = raw;
          return;
        }
      }
    }
    if (anonymous !== undefined) {
      facts.auth(PLUGIN, "anonymous", undefined, failure!.message);
      setAnonymous(conf, p, anonymous);
      return;
    }
    if (failure!.result === "missing") {
      facts.auth(PLUGIN, "missing", undefined, failure!.message);
      kong.response.exit(401, { message: failure!.message }, { "WWW-Authenticate": p.base });
      return;
    }
    refuse(p, failure!);
  },
};

export = handler;

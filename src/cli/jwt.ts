/**
 * `krs jwt`: redis-jwt's credentials, JWKS imports, revocations and test tokens, straight
 * in Redis with the plugin's layout and scripts (src/plugins/redis-jwt/store.ts,
 * redis-lua/jwt-*.lua, docs/redis-keys.md): every change is published from inside its
 * script, so every gateway worker sees it at once.
 *
 * HS* secrets are sealed as the plugin seals them (AES-256-GCM under SHA-256 of the
 * plugin's credential_encryption_key, given here as KRS_JWT_ENCRYPTION_KEY or
 * --encryption-key) and never printed back, except a secret generated here, once.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, createPrivateKey, createPublicKey, randomBytes, randomUUID, sign as nodeSign, constants, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Cluster, Redis } from "ioredis";
import { parseArgs, UsageError } from "./args.js";
import { defineScripts, openRedis, REDIS_FLAGS, REDIS_TARGET_HELP, REDIS_TARGET_USAGE, redisTargetFromFlags } from "./redis.js";

export const CHANNEL = "krs:redis-jwt:v1:invalidations";
export const CREDENTIALS_KEY = "krs:redis-jwt:v1:{c}:credentials";
const SEAL_AAD_PREFIX = "redis-jwt:secret:";
export const DEFAULT_REVOCATION_MAX_TTL = 2592000;
export const ALGORITHMS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"] as const;
export type Algorithm = (typeof ALGORITHMS)[number];
const MIN_RSA_BITS = 2048;

export class JwtError extends Error {}

// ---------------------------------------------------------------- key names (as src/lib/keys.ts)

/** keys.part(): plain short values as they are, anything else `#` + base64url(SHA-1). */
export function part(value: string): string {
  if (value.length <= 64 && value !== "" && /^[A-Za-z0-9._@-]+$/.test(value)) return value;
  return "#" + createHash("sha1").update(value, "utf8").digest("base64url");
}
export const tokenRevocationKey = (jti: string) => `krs:redis-jwt:v1:{r}:jti:${part(jti)}`;
export const subjectRevocationKey = (sub: string) => `krs:redis-jwt:v1:{r}:sub:${part(sub)}`;
export const consumerRevocationKey = (consumer: string) => `krs:redis-jwt:v1:{r}:consumer:${part(consumer)}`;
export const credentialField = (key: string) => `key:${key}`;
export const jwksField = (kid: string) => `kid:${kid}`;

// ---------------------------------------------------------------- records

export interface CredentialRecord {
  id: string;
  key: string;
  algorithm: Algorithm;
  secret_sealed?: string;
  rsa_public_key?: string;
  consumer: string;
  created_at: number;
  jwks?: string;
}

export function isHmac(alg: string): boolean {
  return alg.startsWith("HS");
}

export function seal(encryptionKey: string, field: string, secret: string): string {
  const key = createHash("sha256").update(encryptionKey, "utf8").digest();
  const nonce = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  cipher.setAAD(Buffer.from(SEAL_AAD_PREFIX + field, "utf8"));
  const body = Buffer.concat([cipher.update(Buffer.from(secret, "utf8")), cipher.final()]);
  return Buffer.concat([nonce, body, cipher.getAuthTag()]).toString("base64");
}

export function openSealed(encryptionKey: string, field: string, sealed: string): Buffer {
  const bytes = Buffer.from(sealed, "base64");
  const key = createHash("sha256").update(encryptionKey, "utf8").digest();
  const decipher = createDecipheriv("aes-256-gcm", key, bytes.subarray(0, 12));
  decipher.setAAD(Buffer.from(SEAL_AAD_PREFIX + field, "utf8"));
  decipher.setAuthTag(bytes.subarray(bytes.length - 16));
  return Buffer.concat([decipher.update(bytes.subarray(12, bytes.length - 16)), decipher.final()]);
}

/** Why `pem` cannot verify `alg` (the plugin's rules: RSA ≥ 2048 bits, the curve of the alg, Ed25519), or undefined. */
export function keyProblem(alg: Algorithm, pem: string): string | undefined {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: "pem" });
  } catch {
    return "not a PEM public key";
  }
  if (key.type !== "public") return "not a PEM public key";
  const kind = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails ?? {};
  if (alg.startsWith("RS") || alg.startsWith("PS")) {
    if (kind !== "rsa") return `${alg} needs an RSA key, got ${kind}`;
    if ((details.modulusLength ?? 0) < MIN_RSA_BITS) return `${alg} needs an RSA key of at least ${MIN_RSA_BITS} bits, got ${details.modulusLength}`;
  } else if (alg.startsWith("ES")) {
    const curve = { ES256: "prime256v1", ES384: "secp384r1", ES512: "secp521r1" }[alg as "ES256"];
    if (kind !== "ec") return `${alg} needs an EC key, got ${kind}`;
    if (details.namedCurve !== curve) return `${alg} needs curve ${curve}, got ${details.namedCurve}`;
  } else if (alg === "EdDSA") {
    if (kind !== "ed25519") return `EdDSA needs an Ed25519 key, got ${kind}`;
  }
  return undefined;
}

type CredentialsReply = [number, ...(string | number)[]];
type RevokeReply = [number, number, number];
interface JwtScripts {
  jwtCredentials(...keysAndArgs: (string | number)[]): Promise<CredentialsReply>;
  jwtRevoke(...keysAndArgs: (string | number)[]): Promise<RevokeReply>;
}
export type JwtRedis = (Redis | Cluster) & JwtScripts;

export function withScripts<R extends Redis | Cluster>(redis: R): R & JwtScripts {
  return defineScripts<JwtScripts, R>(redis, { jwtCredentials: "jwt-credentials", jwtRevoke: "jwt-revoke" });
}

export interface NewCredential {
  consumer: string;
  key?: string;
  algorithm?: Algorithm;
  secret?: string;
  rsa_public_key?: string;
  encryptionKey?: string;
}

/** Creates a credential; the secret is returned only when it was generated here. */
export async function createCredential(redis: JwtRedis, input: NewCredential): Promise<{ record: CredentialRecord; generatedSecret?: string }> {
  const algorithm = input.algorithm ?? "HS256";
  if (!ALGORITHMS.includes(algorithm)) throw new JwtError(`algorithm: expected one of ${ALGORITHMS.join(", ")}`);
  const key = input.key ?? randomBytes(24).toString("base64url");
  const record: CredentialRecord = { id: randomUUID(), key, algorithm, consumer: input.consumer, created_at: Math.floor(Date.now() / 1000) };
  let generatedSecret: string | undefined;
  if (isHmac(algorithm)) {
    if (input.rsa_public_key !== undefined) throw new JwtError(`rsa_public_key: not used by ${algorithm}`);
    if (input.encryptionKey === undefined || input.encryptionKey.length < 16) throw new JwtError("secret: HS* credentials are sealed with the plugin's credential_encryption_key: set KRS_JWT_ENCRYPTION_KEY (or --encryption-key) to the same value (16 characters or more)");
    let secret = input.secret;
    if (secret === undefined) secret = generatedSecret = randomBytes(32).toString("base64url");
    record.secret_sealed = seal(input.encryptionKey, credentialField(key), secret);
  } else {
    if (input.secret !== undefined) throw new JwtError(`secret: not used by ${algorithm}`);
    if (input.rsa_public_key === undefined) throw new JwtError(`rsa_public_key: required for ${algorithm}`);
    const problem = keyProblem(algorithm, input.rsa_public_key);
    if (problem !== undefined) throw new JwtError(`rsa_public_key: ${problem}`);
    record.rsa_public_key = input.rsa_public_key;
  }
  const [stored] = await redis.jwtCredentials(CREDENTIALS_KEY, "put", CHANNEL, credentialField(key), JSON.stringify(record));
  if (stored !== 1) throw new JwtError(`key: a credential with key '${key}' exists already`);
  return { record, generatedSecret };
}

export async function listCredentials(redis: JwtRedis): Promise<CredentialRecord[]> {
  const all = await redis.hgetall(CREDENTIALS_KEY);
  const out: CredentialRecord[] = [];
  for (const json of Object.values(all)) {
    try {
      out.push(JSON.parse(json) as CredentialRecord);
    } catch {
      // not a record of ours
    }
  }
  return out.sort((a, b) => a.created_at - b.created_at || a.key.localeCompare(b.key));
}

export async function deleteCredential(redis: JwtRedis, keyOrId: string): Promise<boolean> {
  let [removed] = await redis.jwtCredentials(CREDENTIALS_KEY, "delete", CHANNEL, credentialField(keyOrId));
  if (removed !== 1) [removed] = await redis.jwtCredentials(CREDENTIALS_KEY, "delete", CHANNEL, keyOrId);
  return removed === 1;
}

// ---------------------------------------------------------------- JWKS

interface Jwk {
  kty?: string;
  kid?: string;
  alg?: string;
  use?: string;
  crv?: string;
  [k: string]: unknown;
}

function algorithmOf(jwk: Jwk): Algorithm | undefined {
  if (jwk.alg !== undefined) return (ALGORITHMS as readonly string[]).includes(jwk.alg) && !isHmac(jwk.alg) ? (jwk.alg as Algorithm) : undefined;
  if (jwk.kty === "RSA") return "RS256";
  if (jwk.kty === "EC") return ({ "P-256": "ES256", "P-384": "ES384", "P-521": "ES512" } as Record<string, Algorithm>)[jwk.crv ?? ""];
  if (jwk.kty === "OKP" && jwk.crv === "Ed25519") return "EdDSA";
  return undefined;
}

/**
 * Replaces the JWKS set of `consumer` by the signing keys of `jwks`, in one script:
 * tokens signed by a key of the old set keep working until the new set is in, and those
 * of a key left out stop at once. Returns what was stored and what was skipped (why).
 */
export async function importJwks(redis: JwtRedis, consumer: string, jwks: unknown): Promise<{ added: string[]; removed: number; skipped: string[] }> {
  const keys = (jwks as { keys?: unknown }).keys;
  if (!Array.isArray(keys)) throw new JwtError("not a JWKS: no \"keys\" array");
  const args: string[] = [];
  const added: string[] = [];
  const skipped: string[] = [];
  const now = Math.floor(Date.now() / 1000);
  for (const jwk of keys as Jwk[]) {
    const kid = typeof jwk.kid === "string" && jwk.kid !== "" ? jwk.kid : undefined;
    if (kid === undefined) {
      skipped.push("a key without kid");
      continue;
    }
    if (jwk.use !== undefined && jwk.use !== "sig") {
      skipped.push(`${kid}: use ${jwk.use}`);
      continue;
    }
    const algorithm = algorithmOf(jwk);
    if (algorithm === undefined) {
      skipped.push(`${kid}: unsupported key (${jwk.kty ?? "?"} ${jwk.alg ?? jwk.crv ?? ""})`);
      continue;
    }
    let pem: string;
    try {
      pem = createPublicKey({ key: jwk as never, format: "jwk" }).export({ type: "spki", format: "pem" }).toString();
    } catch (e) {
      skipped.push(`${kid}: ${(e as Error).message}`);
      continue;
    }
    const problem = keyProblem(algorithm, pem);
    if (problem !== undefined) {
      skipped.push(`${kid}: ${problem}`);
      continue;
    }
    const record: CredentialRecord = { id: randomUUID(), key: kid, algorithm, rsa_public_key: pem, consumer, created_at: now, jwks: consumer };
    args.push(jwksField(kid), JSON.stringify(record));
    added.push(kid);
  }
  if (added.length === 0) throw new JwtError(`no usable signing key in the JWKS${skipped.length > 0 ? ` (${skipped.join("; ")})` : ""}`);
  const reply = await redis.jwtCredentials(CREDENTIALS_KEY, "jwks", CHANNEL, consumer, ...args);
  if (reply[0] !== 1) throw new JwtError(`kid '${reply[1]}' belongs to another consumer's JWKS: nothing imported`);
  return { added, removed: Number(reply[1]), skipped };
}

// ---------------------------------------------------------------- revocations

export interface Revocation {
  jti?: string;
  exp?: number;
  token?: string;
  sub?: string;
  consumer?: string;
  before?: number;
  clockSkew?: number;
  maxTtl?: number;
}

function decodeSegment(segment: string): Record<string, unknown> | undefined {
  try {
    const value = JSON.parse(Buffer.from(segment, "base64url").toString("utf8")) as unknown;
    return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Records one revocation; returns the revocation key and its expiry (0: nothing stored, the token has expired). */
export async function revoke(redis: JwtRedis, r: Revocation): Promise<{ key: string; expiresAt: number; jti?: string }> {
  const now = Math.floor(Date.now() / 1000);
  const skew = r.clockSkew ?? 0;
  const maxTtl = r.maxTtl ?? DEFAULT_REVOCATION_MAX_TTL;
  let key: string;
  let kind = "token";
  let before = 0;
  let until: number;
  let jti: string | undefined;
  if (r.token !== undefined) {
    const parts = r.token.split(".");
    const claims = parts.length === 3 ? decodeSegment(parts[1]) : undefined;
    if (claims === undefined) throw new JwtError("token: not a JWT");
    // As the plugin names it (token.ts jtiOf): a string, or an integer in decimal.
    const claimed = typeof claims.jti === "string" && claims.jti !== "" ? claims.jti : Number.isSafeInteger(claims.jti) ? String(claims.jti) : undefined;
    jti = claimed ?? createHash("sha256").update(r.token, "utf8").digest("hex");
    key = tokenRevocationKey(jti);
    until = typeof claims.exp === "number" && Number.isFinite(claims.exp) ? Math.floor(claims.exp) + skew : now + maxTtl;
  } else if (r.jti !== undefined) {
    jti = r.jti;
    key = tokenRevocationKey(r.jti);
    until = r.exp !== undefined ? r.exp + skew : now + maxTtl;
  } else if (r.sub !== undefined || r.consumer !== undefined) {
    kind = "before";
    before = r.before ?? now;
    key = r.sub !== undefined ? subjectRevocationKey(r.sub) : consumerRevocationKey(r.consumer!);
    until = now + maxTtl;
  } else {
    throw new JwtError("give one of jti, token, sub or consumer");
  }
  const [stored, expiresAt] = await redis.jwtRevoke(key, kind, before, until, now, CHANNEL);
  return { key, expiresAt: stored === 1 ? Number(expiresAt) : 0, jti };
}

// ---------------------------------------------------------------- test tokens

const HASH_OF: Record<string, string> = { "256": "sha256", "384": "sha384", "512": "sha512" };

/** Signs `claims` as a JWS compact token (test tokens, and the tests' own). */
export function signToken(alg: Algorithm, key: string | Buffer | KeyObject, claims: Record<string, unknown>, header: Record<string, unknown> = {}): string {
  const input = `${Buffer.from(JSON.stringify({ alg, typ: "JWT", ...header })).toString("base64url")}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}`;
  const hash = HASH_OF[alg.slice(2)];
  let sig: Buffer;
  if (isHmac(alg)) sig = createHmac(hash, key as string | Buffer).update(input).digest();
  else {
    const privateKey = typeof key === "string" || Buffer.isBuffer(key) ? createPrivateKey(key) : key;
    if (alg === "EdDSA") sig = nodeSign(null, Buffer.from(input), privateKey);
    else if (alg.startsWith("PS")) sig = nodeSign(hash, Buffer.from(input), { key: privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST });
    else if (alg.startsWith("ES")) sig = nodeSign(hash, Buffer.from(input), { key: privateKey, dsaEncoding: "ieee-p1363" });
    else sig = nodeSign(hash, Buffer.from(input), privateKey);
  }
  return `${input}.${sig.toString("base64url")}`;
}

// ---------------------------------------------------------------- command

const USAGE = `usage:
  krs jwt credentials create --consumer C [--key K] [--algorithm HS256|RS256|…|EdDSA]
                             [--secret S | --public-key-file PEM] [--json] [REDIS]
  krs jwt credentials list [--json] [REDIS]
  krs jwt credentials delete KEY_OR_ID [REDIS]
  krs jwt jwks import (--file F | --url URL [--timeout S]) --consumer C [REDIS]
  krs jwt revoke (--jti J [--exp T] | --token T | --sub S [--before T] | --consumer C [--before T])
                 [--clock-skew S] [--max-ttl S] [REDIS]
  krs jwt token --key K [--private-key-file PEM] [--sub S] [--ttl S] [--jti J] [--kid K]
                [--claims JSON] [REDIS]

HS* secrets are sealed with $KRS_JWT_ENCRYPTION_KEY (or --encryption-key): the same value
as the plugin's config.credential_encryption_key. A secret given is never printed; one
generated (no --secret) is printed once. \`jwt token\` mints a test token for a credential:
HS* with its sealed secret, others with --private-key-file.
T: unix seconds (--before defaults to now).
REDIS: ${REDIS_TARGET_USAGE}
${REDIS_TARGET_HELP}`;

function seconds(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,12}$/.test(value)) throw new UsageError(`--${flag}: expected whole seconds, got '${value}'`);
  return Number(value);
}

function algorithmFlag(value: string | undefined): Algorithm | undefined {
  if (value === undefined) return undefined;
  if (!(ALGORITHMS as readonly string[]).includes(value)) throw new UsageError(`--algorithm: expected one of ${ALGORITHMS.join(", ")}, got '${value}'`);
  return value as Algorithm;
}

function readText(flag: string, path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    throw new UsageError(`--${flag}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

async function withRedis<T>(flags: Map<string, string>, fn: (redis: JwtRedis) => Promise<T>): Promise<T> {
  const redis = withScripts(await openRedis(redisTargetFromFlags(flags)));
  try {
    return await fn(redis);
  } finally {
    redis.disconnect();
  }
}

function shown(r: CredentialRecord): Record<string, unknown> {
  return { id: r.id, key: r.key, algorithm: r.algorithm, consumer: r.consumer, created_at: r.created_at, jwks: r.jwks ?? null, rsa_public_key: r.rsa_public_key ?? null };
}

export async function jwtCommand(argv: string[]): Promise<number> {
  const [group, ...rest] = argv;
  if (group === undefined || group === "help" || group === "--help") {
    console.log(USAGE);
    return group === undefined ? 2 : 0;
  }
  try {
    if (group === "credentials") return await credentialsCommand(rest);
    if (group === "jwks") return await jwksCommand(rest);
    if (group === "revoke") return await revokeCommand(rest);
    if (group === "token") return await tokenCommand(rest);
  } catch (e) {
    if (e instanceof JwtError) {
      console.error(`krs: jwt: ${e.message}`);
      return 1;
    }
    throw e;
  }
  throw new UsageError(`jwt: unknown command '${group}'\n${USAGE}`);
}

async function credentialsCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "create") {
    const args = parseArgs(rest, ["consumer", "key", "algorithm", "secret", "public-key-file", "encryption-key", ...REDIS_FLAGS], ["json"]);
    const consumer = args.flags.get("consumer");
    if (consumer === undefined || consumer === "") throw new UsageError("jwt credentials create: --consumer is required (the consumer's username or id)");
    const pemFile = args.flags.get("public-key-file");
    const input: NewCredential = {
      consumer,
      key: args.flags.get("key"),
      algorithm: algorithmFlag(args.flags.get("algorithm")) ?? (pemFile !== undefined ? "RS256" : "HS256"),
      secret: args.flags.get("secret"),
      rsa_public_key: pemFile !== undefined ? readText("public-key-file", pemFile) : undefined,
      encryptionKey: args.flags.get("encryption-key") ?? process.env.KRS_JWT_ENCRYPTION_KEY,
    };
    const { record, generatedSecret } = await withRedis(args.flags, (redis) => createCredential(redis, input));
    if (args.switches.has("json")) {
      console.log(JSON.stringify({ ...shown(record), ...(generatedSecret !== undefined ? { secret: generatedSecret } : {}) }, null, 2));
    } else {
      console.log(`created credential ${record.id} for consumer ${record.consumer}`);
      console.log(`key: ${record.key}`);
      console.log(`algorithm: ${record.algorithm}`);
      if (generatedSecret !== undefined) console.log(`secret: ${generatedSecret}   (shown once: Redis keeps it sealed)`);
    }
    return 0;
  }
  if (sub === "list") {
    const args = parseArgs(rest, REDIS_FLAGS, ["json"]);
    const records = await withRedis(args.flags, listCredentials);
    if (args.switches.has("json")) console.log(JSON.stringify(records.map(shown), null, 2));
    else if (records.length === 0) console.log("no credentials");
    else for (const r of records) console.log(`${r.id}\t${r.key}\t${r.algorithm}\t${r.consumer}${r.jwks !== undefined ? "\t(jwks)" : ""}`);
    return 0;
  }
  if (sub === "delete") {
    const args = parseArgs(rest, REDIS_FLAGS);
    if (args.positional.length !== 1) throw new UsageError("jwt credentials delete: give KEY_OR_ID");
    const removed = await withRedis(args.flags, (redis) => deleteCredential(redis, args.positional[0]));
    if (!removed) {
      console.error(`krs: no credential ${args.positional[0]}`);
      return 1;
    }
    console.log(`deleted credential ${args.positional[0]}`);
    return 0;
  }
  throw new UsageError(`jwt credentials: expected create, list or delete\n${USAGE}`);
}

/** Seconds `jwt jwks import --url` waits for the whole document. */
const DEFAULT_FETCH_TIMEOUT = 10;
/** A JWKS is a few keys: a larger document is not one. */
const MAX_JWKS_BYTES = 1024 * 1024;

/**
 * The body of `res` as text, read as it arrives and given up (`tooLarge()` thrown) once
 * it passes MAX_JWKS_BYTES: a chunked or endless body, with no Content-Length to check
 * first, must not be held in memory whole before its size is known.
 */
async function readLimited(res: Response, tooLarge: () => Error): Promise<string> {
  const declared = Number(res.headers.get("content-length") ?? "");
  if (declared > MAX_JWKS_BYTES) {
    await res.body?.cancel();
    throw tooLarge();
  }
  if (res.body === null) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_JWKS_BYTES) {
      await reader.cancel();
      throw tooLarge();
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/**
 * The JSON document at `url` (krs fetches it; the gateway never does), with one clear
 * error for each way that fails: not an http(s) URL, no connection, no answer within
 * `timeoutMs`, an HTTP error status, too large, not JSON. Errors name the URL without
 * its credentials or query, which may hold secrets.
 */
export async function fetchJwks(url: string, timeoutMs = DEFAULT_FETCH_TIMEOUT * 1000): Promise<unknown> {
  let target: URL;
  try {
    target = new URL(url);
  } catch {
    throw new UsageError("--url: not a URL");
  }
  if (target.protocol !== "http:" && target.protocol !== "https:") throw new UsageError(`--url: expected an http:// or https:// URL, got ${target.protocol}`);
  const shown = `${target.origin}${target.pathname}`;
  const headers: Record<string, string> = { accept: "application/json" };
  // fetch() refuses a URL with credentials: they go as Basic authentication instead.
  if (target.username !== "" || target.password !== "") {
    headers.authorization = `Basic ${Buffer.from(`${decodeURIComponent(target.username)}:${decodeURIComponent(target.password)}`).toString("base64")}`;
    target.username = "";
    target.password = "";
  }
  // Only the error's code: its message may quote the URL.
  const failure = (e: unknown): JwtError => {
    if ((e as Error).name === "TimeoutError") return new JwtError(`${shown}: no answer within ${timeoutMs / 1000} s`);
    const cause = (e as { cause?: { code?: string } }).cause;
    return new JwtError(`${shown}: could not fetch: ${cause?.code ?? (e as Error).name}`);
  };
  let text: string;
  try {
    const res = await fetch(target, { signal: AbortSignal.timeout(timeoutMs), headers });
    if (!res.ok) {
      await res.body?.cancel();
      throw new JwtError(`${shown}: HTTP ${res.status}${res.statusText !== "" ? ` ${res.statusText}` : ""}`);
    }
    text = await readLimited(res, () => new JwtError(`${shown}: not a JWKS: more than ${MAX_JWKS_BYTES} bytes`));
  } catch (e) {
    throw e instanceof JwtError ? e : failure(e);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new JwtError(`${shown}: not a JWKS: not JSON`);
  }
}

async function jwksCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== "import") throw new UsageError(`jwt jwks: expected import\n${USAGE}`);
  const args = parseArgs(rest, ["file", "url", "timeout", "consumer", ...REDIS_FLAGS]);
  const consumer = args.flags.get("consumer");
  if (consumer === undefined || consumer === "") throw new UsageError("jwt jwks import: --consumer is required");
  const file = args.flags.get("file");
  const url = args.flags.get("url");
  if ((file === undefined) === (url === undefined)) throw new UsageError("jwt jwks import: give --file or --url");
  const timeout = seconds("timeout", args.flags.get("timeout")) ?? DEFAULT_FETCH_TIMEOUT;
  if (timeout < 1) throw new UsageError("--timeout: expected at least 1 second");
  let jwks: unknown;
  if (url !== undefined) jwks = await fetchJwks(url, timeout * 1000);
  else {
    try {
      jwks = JSON.parse(readText("file", file!));
    } catch (e) {
      if (e instanceof UsageError) throw e;
      throw new JwtError(`${file}: not a JWKS: not JSON`);
    }
  }
  const result = await withRedis(args.flags, (redis) => importJwks(redis, consumer, jwks));
  console.log(`imported ${result.added.length} key(s) for ${consumer}: ${result.added.join(", ")} (replaced ${result.removed})`);
  for (const s of result.skipped) console.error(`skipped ${s}`);
  return 0;
}

async function revokeCommand(argv: string[]): Promise<number> {
  const args = parseArgs(argv, ["jti", "exp", "token", "sub", "consumer", "before", "clock-skew", "max-ttl", ...REDIS_FLAGS]);
  const given = ["jti", "token", "sub", "consumer"].filter((f) => args.flags.has(f));
  if (given.length !== 1) throw new UsageError("jwt revoke: give exactly one of --jti, --token, --sub, --consumer");
  const r: Revocation = {
    jti: args.flags.get("jti"),
    exp: seconds("exp", args.flags.get("exp")),
    token: args.flags.get("token"),
    sub: args.flags.get("sub"),
    consumer: args.flags.get("consumer"),
    before: seconds("before", args.flags.get("before")),
    clockSkew: seconds("clock-skew", args.flags.get("clock-skew")),
    maxTtl: seconds("max-ttl", args.flags.get("max-ttl")),
  };
  const done = await withRedis(args.flags, (redis) => revoke(redis, r));
  if (done.expiresAt === 0) console.log("nothing to revoke: the token has expired already");
  else console.log(`revoked ${given[0]} ${done.jti ?? r.sub ?? r.consumer ?? ""} until ${new Date(done.expiresAt * 1000).toISOString()}`);
  return 0;
}

async function tokenCommand(argv: string[]): Promise<number> {
  const args = parseArgs(argv, ["key", "private-key-file", "sub", "ttl", "jti", "kid", "claims", "encryption-key", ...REDIS_FLAGS]);
  const keyValue = args.flags.get("key");
  if (keyValue === undefined) throw new UsageError("jwt token: --key is required (the credential's key)");
  let extra: Record<string, unknown> = {};
  const claimsFlag = args.flags.get("claims");
  if (claimsFlag !== undefined) {
    try {
      extra = JSON.parse(claimsFlag) as Record<string, unknown>;
    } catch {
      throw new UsageError("--claims: expected a JSON object");
    }
  }
  const ttl = seconds("ttl", args.flags.get("ttl")) ?? 3600;
  const now = Math.floor(Date.now() / 1000);
  const record = await withRedis(args.flags, async (redis) => {
    const json = await redis.hget(CREDENTIALS_KEY, credentialField(keyValue));
    return json !== null ? (JSON.parse(json) as CredentialRecord) : undefined;
  });
  if (record === undefined) throw new JwtError(`no credential with key '${keyValue}'`);
  let signingKey: string | Buffer;
  if (isHmac(record.algorithm)) {
    const encryptionKey = args.flags.get("encryption-key") ?? process.env.KRS_JWT_ENCRYPTION_KEY;
    if (encryptionKey === undefined) throw new JwtError("an HS* credential: set KRS_JWT_ENCRYPTION_KEY (or --encryption-key) to open its secret");
    try {
      signingKey = openSealed(encryptionKey, credentialField(keyValue), record.secret_sealed ?? "");
    } catch {
      throw new JwtError("the secret does not open with this encryption key");
    }
  } else {
    const file = args.flags.get("private-key-file");
    if (file === undefined) throw new UsageError(`jwt token: ${record.algorithm} needs --private-key-file`);
    signingKey = readText("private-key-file", file);
  }
  const claims: Record<string, unknown> = { iss: keyValue, iat: now, exp: now + ttl, ...(args.flags.has("sub") ? { sub: args.flags.get("sub") } : {}), ...(args.flags.has("jti") ? { jti: args.flags.get("jti") } : {}), ...extra };
  console.log(signToken(record.algorithm, signingKey, claims, args.flags.has("kid") ? { kid: args.flags.get("kid") } : {}));
  return 0;
}

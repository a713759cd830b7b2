/**
 * redis-jwt's Admin API, in Kong's api.lua shape:
 *
 *   POST   /redis-jwt/credentials              key, algorithm, secret | rsa_public_key, consumer → 201
 *   GET    /redis-jwt/credentials              every credential (never a secret)
 *   DELETE /redis-jwt/credentials/:key_or_id   204, or 404
 *   POST   /redis-jwt/revocations              {jti[, exp]} | {token} | {sub[, before]} | {consumer[, before]} → 201
 *
 * Which Redis: the one of the first enabled redis-jwt instance (`redis=HOST:PORT[/DB]`
 * picks another configured one); the same instance's credential_encryption_key seals HS*
 * secrets, and its clock_skew and revocation_max_ttl time revocations.
 */
import * as cjson from "cjson.safe";
import * as consumers from "../../lib/consumers";
import * as crypto from "../../lib/crypto";
import * as sign from "../../lib/crypto/sign";
import type { RedisConf } from "../../lib/redis/schema";
import { configuredRedis, settingsOf } from "./cache";
import type { JwtConf } from "./conf";
import { DEFAULT_REVOCATION_MAX_TTL } from "./util";
import * as store from "./store";
import type { CredentialRecord } from "./store";
import * as jwt from "./token";

type Params = LuaTable<string, unknown>;
interface Self {
  params: Params;
}
type Endpoint = (this: void, self: Self, db: unknown, helpers: unknown) => void;

const JSON_TYPE = "application/json; charset=utf-8";
const MAX_NAME = 1024;
const MAX_PEM = 16384;
const MAX_SECRET = 4096;

function fail(this: void, status: number, message: string): never {
  return kong.response.exit(status, { message });
}

/** The enabled instance whose Redis is used, and its settings (only those Kong handed to configure). */
function instanceFor(this: void, params: Params): { redis: RedisConf; conf?: Partial<JwtConf> } {
  const confs = configuredRedis();
  if (confs.length === 0) return fail(409, "no enabled redis-jwt plugin: credentials live in the Redis of one");
  const wanted = params.get("redis");
  let redis = confs[0];
  if (wanted !== undefined) {
    if (type(wanted) !== "string") return fail(400, "redis: expected HOST:PORT or HOST:PORT/DB");
    let match: RedisConf | undefined;
    for (const conf of confs) {
      if (wanted === `${conf.host}:${conf.port}` || wanted === `${conf.host}:${conf.port}/${conf.database}`) match = conf;
    }
    if (match === undefined) return fail(400, `redis: no enabled redis-jwt plugin uses ${wanted as string}`);
    redis = match;
  }
  return { redis, conf: settingsOf(redis) as Partial<JwtConf> | undefined };
}

function optionalString(this: void, params: Params, name: string, max = MAX_NAME): string | undefined {
  const value = params.get(name);
  if (value === undefined || value === cjson.null || value === "") return undefined;
  if (type(value) !== "string" || (value as string).length > max) return fail(400, `${name}: expected a string of at most ${max} bytes`);
  return value as string;
}

function optionalSeconds(this: void, params: Params, name: string): number | undefined {
  const raw = params.get(name);
  if (raw === undefined || raw === cjson.null || raw === "") return undefined;
  const n = type(raw) === "number" || type(raw) === "string" ? tonumber(raw) : undefined;
  if (n === undefined || n < 0 || n > 253402300799 || n !== math.floor(n)) return fail(400, `${name}: expected unix seconds`);
  return n;
}

function randomToken(this: void, bytes: number): string {
  const [raw] = crypto.randomBytes(bytes);
  if (raw === undefined) return fail(500, "no strong random bytes available");
  return string.gsub(ngx.encode_base64(raw, true), "[+/]", (c: string) => (c === "+" ? "-" : "_"))[0];
}

function newId(this: void): string {
  const hex = crypto.toHex(crypto.randomBytes(16)[0] ?? error("no strong random bytes available"));
  const variant = string.format("%x", 8 + (tonumber(string.sub(hex, 17, 17), 16)! % 4));
  return `${string.sub(hex, 1, 8)}-${string.sub(hex, 9, 12)}-4${string.sub(hex, 14, 16)}-${variant}${string.sub(hex, 18, 20)}-${string.sub(hex, 21, 32)}`;
}

function shown(this: void, r: CredentialRecord): unknown {
  return {
    id: r.id,
    key: r.key,
    algorithm: r.algorithm,
    rsa_public_key: r.rsa_public_key ?? cjson.null,
    consumer: r.consumer,
    created_at: r.created_at,
    jwks: r.jwks ?? cjson.null,
  };
}

const createCredential: Endpoint = (self) => {
  const params = self.params;
  const consumer = optionalString(params, "consumer");
  if (consumer === undefined) return fail(400, "consumer: required (the consumer's username or id)");
  const algorithm = optionalString(params, "algorithm") ?? "HS256";
  if (!sign.isAlgorithm(algorithm)) return fail(400, `algorithm: expected one of ${table.concat(sign.ALGORITHMS, ", ")}`);
  const keyValue = optionalString(params, "key") ?? randomToken(24);
  const instance = instanceFor(params);
  const [known, lookupErr] = consumers.byIdOrUsername(consumer);
  if (lookupErr !== undefined) {
    kong.log.err("could not look the consumer up: ", lookupErr);
    return fail(500, "could not look the consumer up in Kong");
  }
  if (known === undefined) return fail(400, `consumer: no consumer with id or username '${consumer}'`);
  const record: CredentialRecord = { id: newId(), key: keyValue, algorithm, consumer, created_at: ngx.time() };
  let generated: string | undefined;
  if (sign.isHmac(algorithm)) {
    if (params.get("rsa_public_key") !== undefined) return fail(400, `rsa_public_key: not used by ${algorithm} (give secret)`);
    let secret = optionalString(params, "secret", MAX_SECRET);
    if (secret === undefined) {
      secret = randomToken(32);
      generated = secret;
    }
    const encryptionKey = instance.conf?.credential_encryption_key;
    if (type(encryptionKey) !== "string" || encryptionKey === "") return fail(400, "secret: HS* credentials need config.credential_encryption_key on the plugin (secrets are sealed in Redis)");
    const [sealed, err] = store.sealSecret(encryptionKey!, store.credentialField(keyValue), secret);
    if (sealed === undefined) return fail(500, `could not seal the secret: ${err}`);
    record.secret_sealed = sealed;
  } else {
    if (params.get("secret") !== undefined) return fail(400, `secret: not used by ${algorithm} (give rsa_public_key)`);
    const pem = optionalString(params, "rsa_public_key", MAX_PEM);
    if (pem === undefined) return fail(400, `rsa_public_key: required for ${algorithm} (a PEM public key)`);
    const [key, err] = sign.publicKey(pem);
    if (key === undefined) return fail(400, `rsa_public_key: ${err}`);
    const mismatch = sign.keyMismatch(algorithm, key);
    if (mismatch !== undefined) return fail(400, `rsa_public_key: ${mismatch}`);
    record.rsa_public_key = pem;
  }
  const [stored, err] = store.put(instance.redis, record);
  if (stored === undefined) {
    kong.log.err("could not store a credential: ", err);
    return fail(503, "could not store the credential in Redis");
  }
  if (!stored) return fail(409, `key: a credential with key '${keyValue}' exists already`);
  const body = shown(record) as LuaTable<string, unknown>;
  if (generated !== undefined) body.set("secret", generated);
  return kong.response.exit(201, body);
};

const listCredentials: Endpoint = (self) => {
  const instance = instanceFor(self.params);
  const [records, err] = store.list(instance.redis);
  if (records === undefined) {
    kong.log.err("could not list credentials: ", err);
    return fail(503, "could not read the credentials from Redis");
  }
  const parts: string[] = [];
  for (const r of records) parts.push(cjson.encode(shown(r))[0] ?? "null");
  return kong.response.exit(200, `{"data":[${table.concat(parts, ",")}],"next":null}`, { "Content-Type": JSON_TYPE });
};

const deleteCredential: Endpoint = (self) => {
  const keyOrId = self.params.get("key_or_id");
  if (type(keyOrId) !== "string" || keyOrId === "") return fail(404, "Not found");
  const instance = instanceFor(self.params);
  const [removed, err] = store.remove(instance.redis, keyOrId as string);
  if (removed === undefined) {
    kong.log.err("could not delete a credential: ", err);
    return fail(503, "could not delete the credential in Redis");
  }
  if (!removed) return fail(404, "Not found");
  return kong.response.exit(204);
};

const revoke: Endpoint = (self) => {
  const params = self.params;
  const instance = instanceFor(params);
  const skew = instance.conf?.clock_skew ?? 0;
  const maxTtl = instance.conf?.revocation_max_ttl ?? DEFAULT_REVOCATION_MAX_TTL;
  const now = ngx.time();
  let key: string;
  let kind: "token" | "before" = "token";
  let before = 0;
  let untilTime: number;
  let what: LuaTable<string, unknown>;
  const tokenText = optionalString(params, "token", jwt.MAX_TOKEN_BYTES);
  const jti = optionalString(params, "jti");
  const sub = optionalString(params, "sub");
  const consumer = optionalString(params, "consumer");
  const given = (tokenText !== undefined ? 1 : 0) + (jti !== undefined ? 1 : 0) + (sub !== undefined ? 1 : 0) + (consumer !== undefined ? 1 : 0);
  if (given !== 1) return fail(400, "give exactly one of jti, token, sub or consumer");
  if (tokenText !== undefined) {
    const [token, err] = jwt.parse(tokenText);
    if (token === undefined) return fail(400, `token: not a JWT (${err})`);
    const tokenJti = jwt.jtiOf(token.claims) ?? crypto.toHex(crypto.sha256(tokenText));
    const exp = jwt.numericClaim(token.claims, "exp");
    key = store.tokenRevocationKey(tokenJti);
    untilTime = exp !== undefined ? exp + skew : now + maxTtl;
    what = new LuaTable();
    what.set("jti", tokenJti);
  } else if (jti !== undefined) {
    const exp = optionalSeconds(params, "exp");
    key = store.tokenRevocationKey(jti);
    untilTime = exp !== undefined ? exp + skew : now + maxTtl;
    what = new LuaTable();
    what.set("jti", jti);
  } else {
    kind = "before";
    before = optionalSeconds(params, "before") ?? now;
    key = sub !== undefined ? store.subjectRevocationKey(sub) : store.consumerRevocationKey(consumer!);
    untilTime = now + maxTtl;
    what = new LuaTable();
    if (sub !== undefined) what.set("sub", sub);
    else what.set("consumer", consumer);
    what.set("before", before);
  }
  const [expiresAt, err] = store.revoke(instance.redis, key, kind, before, untilTime);
  if (expiresAt === undefined) {
    kong.log.err("could not revoke: ", err);
    return fail(503, "could not store the revocation in Redis");
  }
  what.set("expires_at", expiresAt !== 0 ? expiresAt : cjson.null);
  return kong.response.exit(201, what);
};

const api = {
  "/redis-jwt/credentials": { GET: listCredentials, POST: createCredential },
  "/redis-jwt/credentials/:key_or_id": { DELETE: deleteCredential },
  "/redis-jwt/revocations": { POST: revoke },
};

export = api;

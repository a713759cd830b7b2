/**
 * redis-jwt through real gateways and a real Redis: tokens signed by Node's crypto for
 * every algorithm verify and one flipped bit fails; Kong jwt's messages, headers and
 * token sources (query, cookie, Bearer header, several tokens); bad input refused with
 * Kong's reasons and no error log; the Admin API and `krs jwt` (credentials, JWKS import
 * with rotation, revocations, test tokens); revocations seen by every worker of a second
 * gateway (delay measured) and a credential's change too, on a single Redis and on a
 * Redis Cluster (the same spec body, spec/helpers/backends.ts), the subject marker, a revocation entry expiring exactly at
 * the token's exp, no key without a TTL except credentials; the warm path with no Redis
 * call; Redis down.
 */
import { createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCredential, CREDENTIALS_KEY, importJwks, revoke, signToken, tokenRevocationKey, withScripts, type Algorithm, type JwtRedis } from "../../src/cli/jwt.js";
import type { UpstreamServer } from "../../src/cli/upstream.js";
import { runKrs } from "../helpers/krs-main.js";
import { BACKENDS, redisBackend } from "../helpers/backends.js";
import { freePort, gateway, stopAll, tempDir, upstream, type RedisServer, type TestGateway } from "../helpers/services.js";

const ENCRYPTION_KEY = "test-encryption-key-0123456789";
const ALICE = "9f1c2d3e-4b5a-4c6d-8e7f-a1b2c3d4e5f6";
const ANON = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
const consumers = [
  { id: ALICE, username: "alice", custom_id: "alice-cid" },
  { id: ANON, username: "anonymous-user" },
];
const EXPECTED_REDIS_ERRORS = [/\[redis-jwt\] redis unavailable/, /redis-jwt:subscriber/];

let redisServer: RedisServer;
let redis: JwtRedis;
let up: UpstreamServer;
let gw: TestGateway;
let gw2: TestGateway;

function config(redisFields: object) {
  const plugin = (extra: Record<string, unknown> = {}) => [{ name: "redis-jwt", config: { redis: redisFields, credential_encryption_key: ENCRYPTION_KEY, ...extra } }];
  const route = (name: string, extra: Record<string, unknown> = {}) => ({ name, paths: [`/${name}`], plugins: plugin(extra) });
  return {
    _format_version: "3.0",
    services: [{
      name: "svc",
      url: `http://127.0.0.1:${up.port}/anything`,
      routes: [
        route("jwt", { claims_to_verify: ["exp"] }),
        route("nbf", { claims_to_verify: ["nbf"] }),
        route("plain", { realm: "api", cookie_names: ["session"], header_names: ["authorization", "x-token"] }),
        route("anon", { anonymous: "anonymous-user" }),
        route("max", { maximum_expiration: 60, claims_to_verify: ["exp"] }),
        route("skew", { clock_skew: 30, claims_to_verify: ["exp", "nbf"] }),
        route("sub-claim", { key_claim_name: "kid_name" }),
        route("b64", { secret_is_base64: true }),
        route("preflight", { run_on_preflight: false }),
        route("tolerant", { fault_tolerant: true, claims_to_verify: ["exp"] }),
        route("nokey", { credential_encryption_key: undefined }),
      ],
    }],
    consumers,
  };
}

interface Res {
  status: number;
  headers: Headers;
  text: string;
  json: () => any;
}

async function get(url: string, headers: Record<string, string> = {}, method = "GET"): Promise<Res> {
  const res = await fetch(url, { headers, method });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: () => JSON.parse(text) };
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const now = () => Math.floor(Date.now() / 1000);

async function hs256(key: string, secret = `secret-of-${key}`, on: JwtRedis = redis) {
  await createCredential(on, { consumer: "alice", key, algorithm: "HS256", secret, encryptionKey: ENCRYPTION_KEY });
  return (claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}) => signToken("HS256", secret, { iss: key, exp: now() + 600, ...claims }, header);
}

function keyPair(alg: Algorithm): { publicPem: string; privateKey: KeyObject } {
  const kind = alg.startsWith("ES") ? "ec" : alg === "EdDSA" ? "ed25519" : "rsa";
  const options = kind === "ec" ? { namedCurve: { ES256: "P-256", ES384: "P-384", ES512: "P-521" }[alg as "ES256"] } : kind === "rsa" ? { modulusLength: 2048 } : {};
  const pair = (generateKeyPairSync as unknown as (k: string, o: object) => { publicKey: KeyObject; privateKey: KeyObject })(kind, options);
  return { publicPem: pair.publicKey.export({ type: "spki", format: "pem" }).toString(), privateKey: pair.privateKey };
}

function flipBit(token: string, at: number): string {
  const c = token[at];
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const i = alphabet.indexOf(c);
  return token.slice(0, at) + alphabet[i ^ 1] + token.slice(at + 1);
}

/** The ids of the connections subscribed to something (every gateway worker has one). */
async function subscriberIds(): Promise<number[]> {
  const list = (await redis.call("CLIENT", "LIST", "TYPE", "pubsub")) as string;
  return [...list.matchAll(/^id=(\d+) /gm)].map((m) => Number(m[1]));
}

/** The ids of every connection (Redis numbers them in the order they were made). */
async function clientIds(): Promise<number[]> {
  const list = (await redis.call("CLIENT", "LIST")) as string;
  return [...list.matchAll(/^id=(\d+) /gm)].map((m) => Number(m[1]));
}

/**
 * Kills every subscription, then waits (bounded) until `n` new ones are up. New means
 * newer than every connection there was, the idle ones of the gateways' keepalive pools
 * included: a subscriber owns a connection it opened, never one a request pooled.
 */
async function dropSubscriptions(n: number): Promise<void> {
  const before = Math.max(0, ...(await clientIds()));
  await redis.call("CLIENT", "KILL", "TYPE", "pubsub");
  // A subscriber that failed a few times in a row waits up to 5 s (its backoff) to reconnect.
  for (let i = 0; i < 300; i++) {
    if ((await subscriberIds()).filter((id) => id > before).length >= n) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`fewer than ${n} new subscribers after 15 s`);
}

/** Waits (bounded) until `n` connections are subscribed. */
async function subscribers(n: number): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if ((await subscriberIds()).length >= n) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`fewer than ${n} subscribers after 15 s`);
}

/** Requests each worker sees: enough requests that both workers of a gateway served some. */
async function everyWorker(url: string, headers: Record<string, string>, n = 16): Promise<number[]> {
  const statuses: number[] = [];
  for (let i = 0; i < n; i++) statuses.push((await get(url, headers)).status);
  return statuses;
}

beforeAll(async () => {
  const single = await redisBackend("single");
  redisServer = single.server!;
  redis = withScripts(single.client as Redis);
  up = await upstream();
  gw = await gateway(config(single.redis));
  gw2 = await gateway(config(single.redis));
}, 60_000);

afterAll(async () => {
  await stopAll();
});

describe("verification with Kong jwt's semantics", () => {
  it("verifies tokens signed by Node's crypto for every algorithm, and one flipped bit in header, payload or signature fails", async () => {
    for (const alg of ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"] as Algorithm[]) {
      const { publicPem, privateKey } = keyPair(alg);
      await createCredential(redis, { consumer: "alice", key: `interop-${alg}`, algorithm: alg, rsa_public_key: publicPem });
      const token = signToken(alg, privateKey, { iss: `interop-${alg}`, exp: now() + 600 });
      const ok = await get(`${gw.proxyUrl}/jwt`, bearer(token));
      expect(ok.status, alg).toBe(200);
      const seen = ok.json().headers;
      expect(seen["x-consumer-username"], alg).toBe("alice");
      expect(seen["x-consumer-id"]).toBe(ALICE);
      expect(seen["x-consumer-custom-id"]).toBe("alice-cid");
      expect(seen["x-credential-identifier"]).toBe(`interop-${alg}`);
      const [h, p] = token.split(".");
      for (const at of [h.length - 2, h.length + 1 + Math.floor(p.length / 2), token.length - 3]) {
        const bad = await get(`${gw.proxyUrl}/jwt`, bearer(flipBit(token, at)));
        expect(bad.status, `${alg} flipped at ${at}`).toBe(401);
        expect(bad.text).not.toContain("alice");
      }
    }
    for (const alg of ["HS256", "HS384", "HS512"] as Algorithm[]) {
      await createCredential(redis, { consumer: "alice", key: `interop-${alg}`, algorithm: alg, secret: `s-${alg}`, encryptionKey: ENCRYPTION_KEY });
      const token = signToken(alg, `s-${alg}`, { iss: `interop-${alg}` });
      expect((await get(`${gw.proxyUrl}/plain`, bearer(token))).status, alg).toBe(200);
      expect((await get(`${gw.proxyUrl}/plain`, bearer(flipBit(token, token.length - 3)))).json()).toEqual({ message: "Invalid signature" });
    }
    expect(gw.unexpectedErrors()).toEqual([]);
  });

  it("answers Kong's 401s with WWW-Authenticate", async () => {
    const sign = await hs256("kong-messages");
    const none = await get(`${gw.proxyUrl}/jwt`);
    expect(none.status).toBe(401);
    expect(none.json()).toEqual({ message: "Unauthorized" });
    expect(none.headers.get("www-authenticate")).toBe("Bearer");
    const realm = await get(`${gw.proxyUrl}/plain`);
    expect(realm.headers.get("www-authenticate")).toBe('Bearer realm="api"');
    const unknown = await get(`${gw.proxyUrl}/jwt`, bearer(signToken("HS256", "x", { iss: "nobody" })));
    expect(unknown.json()).toEqual({ message: "No credentials found for given 'iss'" });
    expect(unknown.headers.get("www-authenticate")).toBe('Bearer error="invalid_token"');
    expect((await get(`${gw.proxyUrl}/plain`, bearer(signToken("HS256", "x", { iss: "nobody" })))).headers.get("www-authenticate")).toBe('Bearer realm="api" error="invalid_token"');
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(signToken("HS256", "x", { sub: "x" })))).json()).toEqual({ message: "No mandatory 'iss' in claims" });
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(signToken("HS256", "x", { iss: "" })))).json()).toEqual({ message: "Invalid 'iss' in claims" });
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(signToken("HS384", "secret-of-kong-messages", { iss: "kong-messages" })))).json()).toEqual({ message: "Invalid algorithm" });
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(sign({ exp: now() - 1 })))).json()).toEqual({ exp: "token expired" });
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(sign({ exp: String(now() + 60) })))).json()).toEqual({ exp: "must be a number" });
    expect((await get(`${gw.proxyUrl}/nbf`, bearer(sign({ nbf: now() + 60 })))).json()).toEqual({ nbf: "token not valid yet" });
    expect((await get(`${gw.proxyUrl}/nbf`, bearer(sign({})))).json()).toEqual({ nbf: "must be a number" });
    expect((await get(`${gw.proxyUrl}/nbf`, bearer(sign({ nbf: now() })))).status).toBe(200);
    // Without claims_to_verify (Kong's default) neither is checked.
    expect((await get(`${gw.proxyUrl}/plain`, bearer(sign({ exp: now() - 1 })))).status).toBe(200);
    expect((await get(`${gw.proxyUrl}/max`, bearer(sign({ exp: now() + 600 })))).json()).toEqual({ exp: "exceeds maximum allowed expiration" });
    expect((await get(`${gw.proxyUrl}/max`, bearer(sign({ exp: now() + 30 })))).status).toBe(200);
    // clock_skew: 30 s of leeway either way.
    expect((await get(`${gw.proxyUrl}/skew`, bearer(sign({ exp: now() - 10, nbf: now() + 10 })))).status).toBe(200);
    expect((await get(`${gw.proxyUrl}/skew`, bearer(sign({ exp: now() - 45, nbf: now() })))).json()).toEqual({ exp: "token expired" });
    expect((await get(`${gw.proxyUrl}/skew`, bearer(sign({ exp: now() + 60, nbf: now() + 45 })))).json()).toEqual({ nbf: "token not valid yet" });
  });

  it("finds the token in the query, a cookie or a Bearer header (any case); one token twice is fine, two are not", async () => {
    const sign = await hs256("sources");
    const token = sign();
    expect((await get(`${gw.proxyUrl}/jwt?jwt=${token}`)).status).toBe(200);
    expect((await get(`${gw.proxyUrl}/plain`, { cookie: `session=${token}` })).status).toBe(200);
    expect((await get(`${gw.proxyUrl}/plain`, { "x-token": `bearer ${token}` })).status).toBe(200);
    expect((await get(`${gw.proxyUrl}/jwt`, { authorization: `BEARER ${token}` })).status).toBe(200);
    expect((await get(`${gw.proxyUrl}/jwt`, { authorization: `Basic abc` })).json()).toEqual({ message: "Unauthorized" });
    expect((await get(`${gw.proxyUrl}/jwt?jwt=${token}`, bearer(token))).status).toBe(200);
    const two = await get(`${gw.proxyUrl}/jwt?jwt=${sign({ x: 1 })}`, bearer(token));
    expect(two.status).toBe(401);
    expect(two.json()).toEqual({ message: "Multiple tokens provided" });
  });

  it("sets kong.client.authenticate's consumer, anonymous, and skips preflight when told to", async () => {
    const sign = await hs256("anon-test");
    const anon = await get(`${gw.proxyUrl}/anon`);
    expect(anon.status).toBe(200);
    expect(anon.json().headers["x-anonymous-consumer"]).toBe("true");
    expect(anon.json().headers["x-consumer-username"]).toBe("anonymous-user");
    const bad = await get(`${gw.proxyUrl}/anon`, bearer("a.b.c"));
    expect(bad.json().headers["x-consumer-id"]).toBe(ANON);
    const good = await get(`${gw.proxyUrl}/anon`, bearer(sign()));
    expect(good.json().headers["x-consumer-username"]).toBe("alice");
    expect(good.json().headers["x-anonymous-consumer"]).toBeUndefined();
    expect((await get(`${gw.proxyUrl}/preflight`, {}, "OPTIONS")).status).toBe(200);
    expect((await get(`${gw.proxyUrl}/jwt`, {}, "OPTIONS")).status).toBe(401);
  });

  it("secret_is_base64 decodes the stored secret; key_claim_name may name a header field", async () => {
    const raw = "raw secret bytes \u0001";
    await createCredential(redis, { consumer: "alice", key: "b64", algorithm: "HS256", secret: Buffer.from(raw).toString("base64url"), encryptionKey: ENCRYPTION_KEY });
    expect((await get(`${gw.proxyUrl}/b64`, bearer(signToken("HS256", raw, { iss: "b64" })))).status).toBe(200);
    await createCredential(redis, { consumer: "alice", key: "in-header", algorithm: "HS256", secret: "h", encryptionKey: ENCRYPTION_KEY });
    expect((await get(`${gw.proxyUrl}/sub-claim`, bearer(signToken("HS256", "h", {}, { kid_name: "in-header" })))).status).toBe(200);
  });
});

describe("bad input: 401 with Kong's message, never 500, nothing logged above info", () => {
  it("refuses malformed tokens", async () => {
    const sign = await hs256("bad-input");
    const good = sign();
    const [h, p, s] = good.split(".");
    const b64 = (v: string) => Buffer.from(v).toString("base64url");
    const cases: [string, string][] = [
      [`${h}.${p}`, "Bad token; invalid JSON"],
      [`${h}.${p}.${s}.${s}`, "Bad token; invalid JSON"],
      [`${h}!.${p}.${s}`, "Bad token; invalid JSON"],
      [`${b64("[1]")}.${p}.${s}`, "Bad token; invalid JSON"],
      [`${b64("not json")}.${p}.${s}`, "Bad token; invalid JSON"],
      [`${h}.${b64("[]")}.${s}`, "Bad token; invalid claims"],
      [`${b64('{"typ":"JWT"}')}.${p}.${s}`, "Bad token; invalid alg"],
      [`${b64('{"alg":"none"}')}.${p}.`, "Bad token; invalid alg"],
      [`${b64('{"alg":"XS999"}')}.${p}.${s}`, "Bad token; invalid alg"],
      [`${h}.${p}.###`, "Bad token; invalid signature"],
      [sign({}, { kid: "{bad:kid}" }), ""],
      [sign({}, { kid: "k".repeat(4000) }), ""],
      [signToken("HS256", "secret-of-bad-input", { iss: { nested: 1 } }), "Invalid 'iss' in claims"],
    ];
    for (const [token, message] of cases) {
      const res = await get(`${gw.proxyUrl}/jwt`, bearer(token));
      if (message === "") {
        expect(res.status, token.slice(0, 60)).toBe(200);
        continue;
      }
      expect(res.status, token.slice(0, 60)).toBe(401);
      expect(res.json(), token.slice(0, 60)).toEqual({ message });
    }
    // A token as large as the request line allows is refused as a bad token, not a crash.
    const huge = `${b64(JSON.stringify({ alg: "HS256", pad: "x".repeat(5000) }))}.${p}.${s}`;
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(huge))).json()).toEqual({ message: "Invalid signature" });
    const lines = gw.errorLog().filter((l) => /\[(warn|error|alert|crit|emerg)\]/.test(l) && /redis-jwt|jwt/.test(l));
    expect(lines).toEqual([]);
  });

  it("refuses alg none, an alg other than the credential's and a key of the wrong type or size", async () => {
    const { publicPem, privateKey } = keyPair("ES256");
    await createCredential(redis, { consumer: "alice", key: "wrong-type", algorithm: "ES256", rsa_public_key: publicPem });
    // An RS256 token for an ES256 credential, and the same key pretending to be ES384.
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(signToken("ES256", privateKey, { iss: "wrong-type" }, { alg: "ES384" })))).json()).toEqual({ message: "Invalid algorithm" });
    // A credential stored (bypassing the checks) with a 1024-bit RSA key.
    const small = generateKeyPairSync("rsa", { modulusLength: 1024 });
    await redis.hset(CREDENTIALS_KEY, "key:small-rsa", JSON.stringify({ id: "x", key: "small-rsa", algorithm: "RS256", rsa_public_key: small.publicKey.export({ type: "spki", format: "pem" }), consumer: "alice", created_at: 0 }));
    await redis.publish("krs:redis-jwt:v1:invalidations", "c");
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(signToken("RS256", small.privateKey, { iss: "small-rsa" })))).json()).toEqual({ message: "Invalid key/secret" });
    expect(gw.unexpectedErrors()).toEqual([]);
  });
});

describe("Admin API and krs jwt", () => {
  it("creates, lists and deletes credentials; secrets never come back; a PEM that is not a key is a 400 naming the field", async () => {
    const created = await get(`${gw.adminUrl}/redis-jwt/credentials`, {}, "GET");
    expect(created.status).toBe(200);
    const post = (body: object) => fetch(`${gw.adminUrl}/redis-jwt/credentials`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const res = await post({ key: "admin-hs", algorithm: "HS256", secret: "admin-secret", consumer: "alice" });
    expect(res.status).toBe(201);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ key: "admin-hs", algorithm: "HS256", consumer: "alice" });
    expect(JSON.stringify(body)).not.toContain("admin-secret");
    expect(body.secret_sealed).toBeUndefined();
    const generated = (await (await post({ key: "admin-generated", consumer: "alice" })).json()) as Record<string, string>;
    expect(generated.secret).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(signToken("HS256", generated.secret, { iss: "admin-generated", exp: now() + 60 })))).status).toBe(200);
    const stored = await redis.hget(CREDENTIALS_KEY, "key:admin-hs");
    expect(stored).not.toContain("admin-secret");
    const listed = await (await fetch(`${gw.adminUrl}/redis-jwt/credentials`)).text();
    expect(listed).toContain("admin-hs");
    expect(listed).not.toContain("admin-secret");
    expect(listed).not.toContain(generated.secret);
    expect(listed).not.toContain("secret_sealed");
    const badPem = await post({ key: "bad-pem", algorithm: "RS256", rsa_public_key: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", consumer: "alice" });
    expect(badPem.status).toBe(400);
    expect(((await badPem.json()) as { message: string }).message).toMatch(/^rsa_public_key: /);
    const ecForRs = await post({ key: "ec-for-rs", algorithm: "RS256", rsa_public_key: keyPair("ES256").publicPem, consumer: "alice" });
    expect(((await ecForRs.json()) as { message: string }).message).toBe("rsa_public_key: RS256 needs an RSA key, got EC");
    expect((await post({ key: "admin-hs", secret: "x", consumer: "alice" })).status).toBe(409);
    expect((await post({ key: "nobody", secret: "x", consumer: "nobody" })).status).toBe(400);
    // That deleting reaches every worker of a second gateway: "changes reach every worker" below.
    // The consumer by id (kong.db.consumers:select), then by username; an unknown id is a 400 too.
    expect((await post({ key: "by-id", secret: "x", consumer: ALICE })).status).toBe(201);
    const unknownId = await post({ key: "unknown-id", secret: "x", consumer: "00000000-0000-4000-8000-000000000000" });
    expect(unknownId.status).toBe(400);
    expect(await unknownId.json()).toEqual({ message: "consumer: no consumer with id or username '00000000-0000-4000-8000-000000000000'" });
    expect((await fetch(`${gw.adminUrl}/redis-jwt/credentials/admin-hs`, { method: "DELETE" })).status).toBe(204);
    expect((await fetch(`${gw.adminUrl}/redis-jwt/credentials/admin-hs`, { method: "DELETE" })).status).toBe(404);
    expect(gw.unexpectedErrors()).toEqual([]);
  });

  it("takes form-encoded bodies as Kong's Admin API does; a consumer Kong does not know is Kong's 401", async () => {
    const form = (path: string, body: Record<string, string>) => fetch(`${gw.adminUrl}${path}`, { method: "POST", body: new URLSearchParams(body) });
    const res = await form("/redis-jwt/credentials", { consumer: "alice", key: "form-issuer", secret: "form-secret" });
    expect(res.status).toBe(201);
    const token = signToken("HS256", "form-secret", { iss: "form-issuer", exp: now() + 60 });
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(token))).status).toBe(200);
    expect((await form("/redis-jwt/revocations", { token })).status).toBe(201);
    await new Promise((r) => setTimeout(r, 100));
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(token))).json()).toEqual({ message: "Token revoked" });
    await createCredential(redis, { consumer: "ghost", key: "ghost-issuer", secret: "g", encryptionKey: ENCRYPTION_KEY });
    const ghost = await get(`${gw.proxyUrl}/jwt`, bearer(signToken("HS256", "g", { iss: "ghost-issuer", exp: now() + 60 })));
    expect(ghost.status).toBe(401);
    expect(ghost.json()).toEqual({ message: "Could not find consumer for 'iss=ghost-issuer'" });
  });

  it("krs jwt credentials, token, revoke and jwks import work as a new user would use them", async () => {
    const url = `redis://127.0.0.1:${redisServer.port}/0`;
    const env = process.env.KRS_JWT_ENCRYPTION_KEY;
    process.env.KRS_JWT_ENCRYPTION_KEY = ENCRYPTION_KEY;
    try {
      const created = await runKrs("jwt", "credentials", "create", "--consumer", "alice", "--key", "cli-hs", "--redis", url);
      expect(created.code).toBe(0);
      expect(created.out).toMatch(/secret: [A-Za-z0-9_-]{43}/);
      const token = await runKrs("jwt", "token", "--key", "cli-hs", "--sub", "cli-user", "--redis", url);
      expect(token.code).toBe(0);
      expect((await get(`${gw.proxyUrl}/jwt`, bearer(token.out.trim()))).status).toBe(200);
      const listed = await runKrs("jwt", "credentials", "list", "--json", "--redis", url);
      expect(listed.out).toContain("cli-hs");
      expect(listed.out).not.toContain("secret");
      const revoked = await runKrs("jwt", "revoke", "--token", token.out.trim(), "--redis", url);
      expect(revoked.code).toBe(0);
      await new Promise((r) => setTimeout(r, 100));
      expect((await get(`${gw.proxyUrl}/jwt`, bearer(token.out.trim()))).json()).toEqual({ message: "Token revoked" });
      expect((await runKrs("jwt", "credentials", "delete", "cli-hs", "--redis", url)).code).toBe(0);
      expect((await runKrs("jwt", "credentials", "delete", "cli-hs", "--redis", url)).code).toBe(1);
      expect((await runKrs("jwt", "revoke", "--redis", url)).code).toBe(2);
      expect((await runKrs("jwt", "credentials", "create", "--consumer", "alice", "--algorithm", "XX1", "--redis", url)).code).toBe(2);

      // JWKS: keys by kid; re-importing replaces the set at once (rotation without a gap).
      const k1 = keyPair("RS256");
      const k2 = keyPair("ES256");
      const jwk = (k: { publicPem: string }, kid: string, alg: string) => ({ ...createPublicKey(k.publicPem).export({ format: "jwk" }), kid, alg, use: "sig" });
      const dir = tempDir("jwks");
      const file = join(dir, "jwks.json");
      writeFileSync(file, JSON.stringify({ keys: [jwk(k1, "kid-1", "RS256")] }));
      expect((await runKrs("jwt", "jwks", "import", "--file", file, "--consumer", "alice", "--redis", url)).code).toBe(0);
      const t1 = signToken("RS256", k1.privateKey, { iss: "issuer.example", exp: now() + 60 }, { kid: "kid-1" });
      expect((await get(`${gw.proxyUrl}/jwt`, bearer(t1))).status).toBe(200);
      const rotated = await importJwks(redis, "alice", { keys: [jwk(k2, "kid-2", "ES256")] });
      expect(rotated).toMatchObject({ added: ["kid-2"], removed: 1 });
      await new Promise((r) => setTimeout(r, 100));
      expect((await get(`${gw.proxyUrl}/jwt`, bearer(t1))).json()).toEqual({ message: "No credentials found for given 'iss'" });
      const t2 = signToken("ES256", k2.privateKey, { iss: "issuer.example", exp: now() + 60 }, { kid: "kid-2" });
      expect((await get(`${gw.proxyUrl}/jwt`, bearer(t2))).status).toBe(200);
    } finally {
      if (env === undefined) delete process.env.KRS_JWT_ENCRYPTION_KEY;
      else process.env.KRS_JWT_ENCRYPTION_KEY = env;
    }
  });
});


/**
 * A JWKS host of the test's own: /jwks.json serves `jwks`, /missing is a 404, /page is an
 * HTML page, /hang accepts the request and never answers. Counts the requests.
 */
async function jwksHost(jwks: () => unknown): Promise<{ base: string; requests: string[]; close: () => Promise<void> }> {
  const requests: string[] = [];
  const server: Server = createServer((req, res) => {
    requests.push(`${req.url ?? ""}${req.headers.authorization !== undefined ? ` (${req.headers.authorization})` : ""}`);
    if (req.url === "/jwks.json") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(jwks()));
    } else if (req.url === "/page") {
      res.writeHead(200, { "content-type": "text/html" });
      res.end("<html><body>keys moved</body></html>");
    } else if (req.url === "/endless") {
      // chunked (no Content-Length), never ending: only a size limit applied while reading ends it
      res.writeHead(200, { "content-type": "application/json" });
      const chunk = `[${" ".repeat(65536)}`;
      const more = (): void => {
        if (res.destroyed || req.destroyed) return;
        if (res.write(chunk)) setImmediate(more);
        else res.once("drain", more);
      };
      res.on("close", () => res.destroy());
      more();
    } else if (req.url === "/hang") {
      // no answer, ever: the client's timeout must end it
    } else {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found");
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return {
    base: `http://127.0.0.1:${port}`,
    requests,
    close: () => {
      server.closeAllConnections();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

describe("krs jwt jwks import --url", () => {
  it("fetches the JWKS over HTTP (krs, not the gateway) and imports its keys by kid", async () => {
    const k = keyPair("ES256");
    const jwk = { ...createPublicKey(k.publicPem).export({ format: "jwk" }), kid: "url-kid-1", alg: "ES256", use: "sig" };
    const host = await jwksHost(() => ({ keys: [jwk] }));
    try {
      const r = await runKrs("jwt", "jwks", "import", "--url", `${host.base}/jwks.json`, "--consumer", "alice", "--redis", `redis://127.0.0.1:${redisServer.port}/0`);
      expect(r.err).toBe("");
      expect(r.code).toBe(0);
      expect(r.out).toMatch(/imported 1 key\(s\) for alice: url-kid-1/);
      expect(host.requests).toEqual(["/jwks.json"]);
      const token = signToken("ES256", k.privateKey, { iss: "url.example", exp: now() + 60 }, { kid: "url-kid-1" });
      expect((await get(`${gw.proxyUrl}/jwt`, bearer(token))).status).toBe(200);
    } finally {
      await host.close();
    }
  });

  it("a 404, a page that is not JSON, no answer in time, no server: exit 1, one line naming the URL (never its credentials), nothing imported", async () => {
    const host = await jwksHost(() => ({ keys: [] }));
    const redisUrl = `redis://127.0.0.1:${redisServer.port}/0`;
    const before = await redis.hgetall(CREDENTIALS_KEY);
    const run = (url: string, ...extra: string[]) => runKrs("jwt", "jwks", "import", "--url", url, ...extra, "--consumer", "alice", "--redis", redisUrl);
    try {
      const missing = await run(`http://jwks-user:jwks-password@127.0.0.1:${new URL(host.base).port}/missing?token=query-secret`);
      expect(missing.code).toBe(1);
      expect(missing.err).toBe(`krs: jwt: ${host.base}/missing: HTTP 404 Not Found`);
      expect(missing.err).not.toMatch(/jwks-password|query-secret|jwks-user/);
      // The URL's credentials went as Basic authentication, as curl sends them.
      expect(host.requests).toEqual([`/missing?token=query-secret (Basic ${Buffer.from("jwks-user:jwks-password").toString("base64")})`]);

      const page = await run(`${host.base}/page`);
      expect(page.code).toBe(1);
      expect(page.err).toBe(`krs: jwt: ${host.base}/page: not a JWKS: not JSON`);

      const started = Date.now();
      const hang = await run(`${host.base}/hang`, "--timeout", "1");
      const waited = Date.now() - started;
      expect(hang.code).toBe(1);
      expect(hang.err).toBe(`krs: jwt: ${host.base}/hang: no answer within 1 s`);
      // It gave up at its timeout, not at the 10 s default (slack for a loaded machine).
      expect(waited).toBeGreaterThanOrEqual(950);
      expect(waited).toBeLessThan(5000);

      // A body that never ends fails at the size limit, long before the timeout, not held whole.
      const startedEndless = Date.now();
      const endless = await run(`${host.base}/endless`, "--timeout", "30");
      expect(endless.code).toBe(1);
      expect(endless.err).toBe(`krs: jwt: ${host.base}/endless: not a JWKS: more than 1048576 bytes`);
      expect(Date.now() - startedEndless).toBeLessThan(25000);

      // A port nobody listens on.
      const nobody = `http://127.0.0.1:${await freePort()}`;
      const refused = await run(`${nobody}/jwks.json`);
      expect(refused.code).toBe(1);
      expect(refused.err).toBe(`krs: jwt: ${nobody}/jwks.json: could not fetch: ECONNREFUSED`);

      const notHttp = await run("file:///etc/passwd");
      expect(notHttp.code).toBe(2);
      expect(notHttp.err).toMatch(/--url: expected an http:\/\/ or https:\/\/ URL/);
      expect(await redis.hgetall(CREDENTIALS_KEY)).toEqual(before);
    } finally {
      await host.close();
    }
  });
});

describe("revocation", () => {
  it("a token without jti is revoked by its SHA-256; an expired one needs no entry", async () => {
    const sign = await hs256("revocation-hash");
    const token = sign({ exp: now() + 60 });
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(token))).status).toBe(200);
    const res = await fetch(`${gw.adminUrl}/redis-jwt/revocations`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token }) });
    expect(res.status).toBe(201);
    await new Promise((r) => setTimeout(r, 100));
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(token))).json()).toEqual({ message: "Token revoked" });
    expect(await revoke(redis, { jti: "long-gone", exp: now() - 10 })).toMatchObject({ expiresAt: 0 });
    expect(await redis.exists(tokenRevocationKey("long-gone"))).toBe(0);
  });

  it("the subject marker refuses every token of a sub issued before T (and those without iat), not the ones after", async () => {
    const sign = await hs256("subject");
    const t = now();
    const old = sign({ sub: "user-42", iat: t - 100 });
    const noIat = sign({ sub: "user-42", jti: "no-iat" });
    const other = sign({ sub: "user-43", iat: t - 100 });
    for (const tok of [old, noIat, other]) expect((await get(`${gw.proxyUrl}/jwt`, bearer(tok))).status).toBe(200);
    const res = await fetch(`${gw.adminUrl}/redis-jwt/revocations`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sub: "user-42", before: t }) });
    expect(res.status).toBe(201);
    await new Promise((r) => setTimeout(r, 100));
    expect(new Set(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(old), 8))).toEqual(new Set([401]));
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(noIat))).json()).toEqual({ message: "Token revoked" });
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(other))).status).toBe(200);
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(sign({ sub: "user-42", iat: t })))).status).toBe(200);
    // The consumer marker: every token of alice's before T.
    const mine = sign({ iat: t - 5, jti: "consumer-1" });
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(mine))).status).toBe(200);
    await revoke(redis, { consumer: "alice", before: t });
    await new Promise((r) => setTimeout(r, 100));
    expect((await get(`${gw.proxyUrl}/jwt`, bearer(mine))).json()).toEqual({ message: "Token revoked" });
    await redis.del("krs:redis-jwt:v1:{r}:consumer:alice");
    await redis.publish("krs:redis-jwt:v1:invalidations", "r");
  });

  it("while a worker's subscription is down it does not trust its \"not revoked\" answers; when it is back it drops them", async () => {
    const sign = await hs256("subscription");
    const token = sign({ jti: "lost-message" });
    expect(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(token), 8)).not.toContain(401);
    // A revocation whose message is lost: written without PUBLISH.
    await redis.set(tokenRevocationKey("lost-message"), "1", "EX", 600);
    expect(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(token), 8)).not.toContain(401);
    // Subscriptions dropped and refused from now on: every worker must ask Redis again.
    await redis.call("ACL", "SETUSER", "default", "-subscribe");
    try {
      await redis.call("CLIENT", "KILL", "TYPE", "pubsub");
      await new Promise((r) => setTimeout(r, 100));
      expect(new Set(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(token), 8))).toEqual(new Set([401]));
      const other = sign({ jti: "still-fine" });
      expect(new Set(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(other), 8))).toEqual(new Set([200]));
    } finally {
      await redis.call("ACL", "SETUSER", "default", "+subscribe");
    }
    // Back up: a second lost revocation is seen once the subscription is re-established.
    const again = sign({ jti: "lost-after-reconnect" });
    await subscribers(4);
    expect(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(again), 8)).not.toContain(401);
    await redis.set(tokenRevocationKey("lost-after-reconnect"), "1", "EX", 600);
    await dropSubscriptions(4);
    expect(new Set(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(again), 8))).toEqual(new Set([401]));
    expect(gw2.unexpectedErrors(EXPECTED_REDIS_ERRORS)).toEqual([]);
  }, 45_000);

  it("no key without a TTL except the credentials", async () => {
    const keys = await redis.keys("krs:redis-jwt:*");
    expect(keys.length).toBeGreaterThan(2);
    for (const k of keys) {
      const ttl = await redis.ttl(k);
      if (k === CREDENTIALS_KEY) expect(ttl).toBe(-1);
      else expect(ttl, k).toBeGreaterThan(0);
    }
  });
});

/**
 * What must hold on every Redis a gateway may use: the same body on one server and on a
 * Redis Cluster, where the revocation keys ({r}), the credentials ({c}) and each worker's
 * subscription may be on three different masters.
 */
describe.each(BACKENDS)("changes reach every worker of a second gateway (%s redis)", (kind) => {
  const on = {} as { redis: JwtRedis; gw: TestGateway; gw2: TestGateway };
  beforeAll(async () => {
    if (kind === "single") {
      Object.assign(on, { redis, gw, gw2 });
      return;
    }
    const backend = await redisBackend(kind);
    const [a, b] = await Promise.all([gateway(config(backend.redis)), gateway(config(backend.redis))]);
    Object.assign(on, { redis: withScripts(backend.client), gw: a, gw2: b });
    // Every worker's subscription is up before a change is published (on whichever node each chose).
    for (let i = 0; i < 300 && (await backend.subscribers("krs:redis-jwt:v1:invalidations")) < 4; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await backend.subscribers("krs:redis-jwt:v1:invalidations")).toBeGreaterThanOrEqual(4);
  }, 90_000);

  afterAll(() => {
    if (kind === "single") return;
    for (const g of [on.gw, on.gw2]) expect(g.unexpectedErrors()).toEqual([]);
  });

  it("a revoked token is refused by every worker of a second gateway within 1 s (measured), and its entry expires exactly at exp", async () => {
    const { redis, gw, gw2 } = on;
    const sign = await hs256(`revocation-${kind}`, undefined, redis);
    const exp = now() + 120;
    const jtiRevoked = `jti-revoke-${kind}`;
    const token = sign({ jti: jtiRevoked, exp });
    expect(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(token))).not.toContain(401);
    const started = performance.now();
    const res = await fetch(`${gw.adminUrl}/redis-jwt/revocations`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ jti: jtiRevoked, exp }) });
    expect(res.status).toBe(201);
    expect(await res.json()).toEqual({ jti: jtiRevoked, expires_at: exp });
    let delay = -1;
    for (let i = 0; i < 200; i++) {
      const statuses = await Promise.all([0, 1, 2, 3].map(() => get(`${gw2.proxyUrl}/jwt`, bearer(token)).then((r) => r.status)));
      if (statuses.every((s) => s === 401)) {
        delay = performance.now() - started;
        break;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    console.log(`${kind} redis: revocation seen on the second gateway after ${delay.toFixed(1)} ms`);
    expect(delay).toBeGreaterThanOrEqual(0);
    expect(delay).toBeLessThan(1000);
    expect(new Set(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(token)))).toEqual(new Set([401]));
    expect((await get(`${gw2.proxyUrl}/jwt`, bearer(token))).json()).toEqual({ message: "Token revoked" });
    expect(await redis.call("EXPIRETIME", tokenRevocationKey(jtiRevoked))).toBe(exp);
    // clock_skew of the revoking instance would be added; a jti without exp gets revocation_max_ttl.
    await revoke(redis, { jti: `no-exp-${kind}` });
    const ttl = await redis.ttl(tokenRevocationKey(`no-exp-${kind}`));
    expect(ttl).toBeGreaterThan(2592000 - 5);
    expect(ttl).toBeLessThanOrEqual(2592000);
  });

  it("a credential created through one gateway's Admin API verifies on every worker of the other; deleted there, it is refused by each", async () => {
    const { gw, gw2 } = on;
    const key = `changing-${kind}`;
    const secret = `secret-of-${key}`;
    const token = signToken("HS256", secret, { iss: key, exp: now() + 60 });
    // Unknown first: every worker of gw2 has looked it up (and found nothing) before it exists.
    expect(new Set(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(token)))).toEqual(new Set([401]));
    const post = await fetch(`${gw.adminUrl}/redis-jwt/credentials`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ key, algorithm: "HS256", secret, consumer: "alice" }) });
    expect(post.status).toBe(201);
    await new Promise((r) => setTimeout(r, 200));
    expect(new Set(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(token)))).toEqual(new Set([200]));
    expect((await fetch(`${gw.adminUrl}/redis-jwt/credentials/${key}`, { method: "DELETE" })).status).toBe(204);
    await new Promise((r) => setTimeout(r, 200));
    expect(new Set(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(token)))).toEqual(new Set([401]));
  });
});

describe("warm path and Redis down", () => {
  it("a route without credential_encryption_key does not spoil HS credentials for the routes on the same Redis that have one", async () => {
    const sign = await hs256("shared-cache");
    const token = sign();
    // On gw2: the nokey route's warning about the credential belongs to this test, not to gw's log checks.
    expect(new Set(await everyWorker(`${gw2.proxyUrl}/nokey`, bearer(token), 8))).toEqual(new Set([401]));
    expect(new Set(await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(token), 8))).toEqual(new Set([200]));
  });

  it("a token already verified costs no Redis round trip", async () => {
    const { publicPem, privateKey } = keyPair("RS256");
    await createCredential(redis, { consumer: "alice", key: "warm", algorithm: "RS256", rsa_public_key: publicPem });
    const token = signToken("RS256", privateKey, { iss: "warm", exp: now() + 600 });
    await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(token));
    const calls = async () => {
      const info = await redis.info("commandstats");
      const count = (cmd: string) => Number(new RegExp(`cmdstat_${cmd}:calls=(\\d+)`).exec(info)?.[1] ?? 0);
      return count("mget") + count("hmget") + count("evalsha") + count("eval");
    };
    const before = await calls();
    const statuses = await everyWorker(`${gw2.proxyUrl}/jwt`, bearer(token), 100);
    const after = await calls();
    expect(new Set(statuses)).toEqual(new Set([200]));
    console.log(`warm path: ${(after - before) / 100} Redis calls per request`);
    expect(after - before).toBe(0);
  });

  it("Redis down: a token verified in the last seconds keeps working, an unknown one is a 500; no crash", async () => {
    const sign = await hs256("outage");
    // Revoked after its "not revoked" answer was cached: an outage must not bring it back.
    const revokedLater = sign({ jti: "revoked-before-outage" });
    expect(await everyWorker(`${gw.proxyUrl}/jwt`, bearer(revokedLater), 8)).not.toContain(401);
    // Revoked while nobody used it: its cached answer predates a revocation, so it proves nothing.
    const revokedUnseen = sign({ jti: "revoked-unseen-before-outage" });
    expect(await everyWorker(`${gw.proxyUrl}/jwt`, bearer(revokedUnseen), 8)).not.toContain(401);
    await revoke(redis, { jti: "revoked-before-outage" });
    await new Promise((r) => setTimeout(r, 100));
    expect(new Set(await everyWorker(`${gw.proxyUrl}/jwt`, bearer(revokedLater), 8))).toEqual(new Set([401]));
    await revoke(redis, { jti: "revoked-unseen-before-outage" });
    await new Promise((r) => setTimeout(r, 100));
    const known = sign();
    expect(await everyWorker(`${gw.proxyUrl}/jwt`, bearer(known), 8)).not.toContain(401);
    await redisServer.stop();
    const statuses = await everyWorker(`${gw.proxyUrl}/jwt`, bearer(known), 8);
    expect(new Set(statuses)).toEqual(new Set([200]));
    const afterOutage = await everyWorker(`${gw.proxyUrl}/jwt`, bearer(revokedLater), 8);
    expect(new Set(afterOutage)).toEqual(new Set([401]));
    const unseen = await everyWorker(`${gw.proxyUrl}/jwt`, bearer(revokedUnseen), 8);
    expect(new Set(unseen)).toEqual(new Set([500]));
    const unknown = await get(`${gw.proxyUrl}/jwt`, bearer(sign({ x: "new" })));
    expect(unknown.status).toBe(500);
    expect(unknown.json()).toEqual({ message: "An unexpected error occurred" });
    // fault_tolerant: the request goes on unauthenticated, without identity headers of the client's.
    const tolerated = await get(`${gw.proxyUrl}/tolerant`, { ...bearer(sign({ x: "tolerant" })), "x-consumer-username": "forged" });
    expect(tolerated.status).toBe(200);
    expect(tolerated.json().headers["x-consumer-username"]).toBeUndefined();
    expect(gw.unexpectedErrors(EXPECTED_REDIS_ERRORS)).toEqual([]);
  });
});

/**
 * JWS signature verification (RFC 7518) with OpenSSL's libcrypto through LuaJIT's FFI:
 * HMAC (HS*), RSASSA-PKCS1-v1_5 (RS*), RSASSA-PSS (PS*), ECDSA with JOSE's raw r||s
 * signatures (ES*) and Ed25519 (EdDSA). Runs the same on Kong's OpenResty (OpenSSL 3)
 * and on Debian's nginx (libcrypto.so.3); OpenSSL 1.1.1 names are tried as a fallback.
 *
 * Public keys are parsed once (`publicKey`) and kept as EVP_PKEY handles freed by the GC,
 * so verifying costs one EVP_DigestVerify, never a PEM parse. A failed parse or verify
 * leaves nothing on OpenSSL's error queue: other users of libcrypto in the same worker
 * (TLS to Redis, lua-resty-openssl) must not read our errors as theirs.
 *
 * As in ../crypto.ts, declarations go through pcall one by one (another module may have
 * declared them with its own types) and every call goes through a pointer cast to the
 * signature written here.
 */
import * as ffi from "ffi";

const byte = string.byte;
const char = string.char;
const sub = string.sub;

/** EVP_PKEY ids (obj_mac.h). */
const EVP_PKEY_RSA = 6;
const EVP_PKEY_EC = 408;
const EVP_PKEY_ED25519 = 1087;
/** EVP_PKEY_CTX_ctrl commands for RSA (rsa.h): padding and PSS salt length. */
const EVP_PKEY_OP_VERIFY_ANY = -1;
const EVP_PKEY_CTRL_RSA_PADDING = 0x1000 + 1;
const EVP_PKEY_CTRL_RSA_PSS_SALTLEN = 0x1000 + 2;
const RSA_PKCS1_PSS_PADDING = 6;
/** RFC 7518 3.5: the salt is as long as the digest. */
const RSA_PSS_SALTLEN_DIGEST = -1;
/** Below this, RSA keys are refused (RFC 7518 3.3: 2048 bits or more). */
export const MIN_RSA_BITS = 2048;

/** [names tried in order, declaration, the signature it is called through] */
const FUNCTIONS: [string[], string, string][] = [
  [["BIO_new_mem_buf"], "void *BIO_new_mem_buf(const void *buf, int len)", "void *(*)(const char *, int)"],
  [["BIO_free"], "int BIO_free(void *a)", "int (*)(void *)"],
  [["PEM_read_bio_PUBKEY"], "void *PEM_read_bio_PUBKEY(void *bp, void **x, void *cb, void *u)", "void *(*)(void *, void *, void *, void *)"],
  [["EVP_PKEY_free"], "void EVP_PKEY_free(void *pkey)", "void (*)(void *)"],
  [["EVP_PKEY_get_id", "EVP_PKEY_id"], "int EVP_PKEY_get_id(const void *pkey)", "int (*)(const void *)"],
  [["EVP_PKEY_get_bits", "EVP_PKEY_bits"], "int EVP_PKEY_get_bits(const void *pkey)", "int (*)(const void *)"],
  [["EVP_MD_CTX_new"], "void *EVP_MD_CTX_new(void)", "void *(*)(void)"],
  [["EVP_MD_CTX_free"], "void EVP_MD_CTX_free(void *ctx)", "void (*)(void *)"],
  [["EVP_MD_CTX_reset"], "int EVP_MD_CTX_reset(void *ctx)", "int (*)(void *)"],
  [["EVP_DigestVerifyInit"], "int EVP_DigestVerifyInit(void *ctx, void **pctx, const void *type, void *e, void *pkey)",
    "int (*)(void *, void **, const void *, void *, void *)"],
  [["EVP_DigestVerify"], "int EVP_DigestVerify(void *ctx, const unsigned char *sig, size_t siglen, const unsigned char *tbs, size_t tbslen)",
    "int (*)(void *, const char *, size_t, const char *, size_t)"],
  [["EVP_PKEY_CTX_ctrl"], "int EVP_PKEY_CTX_ctrl(void *ctx, int keytype, int optype, int cmd, int p1, void *p2)",
    "int (*)(void *, int, int, int, int, void *)"],
  [["EVP_sha256"], "const void *EVP_sha256(void)", "const void *(*)(void)"],
  [["EVP_sha384"], "const void *EVP_sha384(void)", "const void *(*)(void)"],
  [["EVP_sha512"], "const void *EVP_sha512(void)", "const void *(*)(void)"],
  [["HMAC"], "unsigned char *HMAC(const void *evp_md, const void *key, int key_len, const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len)",
    "unsigned char *(*)(const void *, const char *, int, const char *, size_t, unsigned char *, unsigned int *)"],
  [["CRYPTO_memcmp"], "int CRYPTO_memcmp(const void *a, const void *b, size_t len)", "int (*)(const char *, const char *, size_t)"],
  [["ERR_clear_error"], "void ERR_clear_error(void)", "void (*)(void)"],
];

/** @noSelf */
interface LibCrypto {
  BIO_new_mem_buf(buf: string, len: number): FfiCData | undefined;
  BIO_free(bio: FfiCData): number;
  PEM_read_bio_PUBKEY(bio: FfiCData, x: undefined, cb: undefined, u: undefined): FfiCData | undefined;
  EVP_PKEY_free(pkey: FfiCData): void;
  EVP_PKEY_get_id(pkey: FfiCData): number;
  EVP_PKEY_get_bits(pkey: FfiCData): number;
  EVP_MD_CTX_new(): FfiCData | undefined;
  EVP_MD_CTX_free(ctx: FfiCData): void;
  EVP_MD_CTX_reset(ctx: FfiCData): number;
  EVP_DigestVerifyInit(ctx: FfiCData, pctx: FfiCData, md: FfiCData | undefined, engine: undefined, pkey: FfiCData): number;
  EVP_DigestVerify(ctx: FfiCData, sig: string, siglen: number, tbs: string, tbslen: number): number;
  EVP_PKEY_CTX_ctrl(ctx: FfiCData, keytype: number, optype: number, cmd: number, p1: number, p2: undefined): number;
  EVP_sha256(): FfiCData;
  EVP_sha384(): FfiCData;
  EVP_sha512(): FfiCData;
  HMAC(md: FfiCData, key: string, keyLen: number, data: string, n: number, out: FfiCData, outLen: FfiArray): FfiCData | undefined;
  CRYPTO_memcmp(a: string, b: string, n: number): number;
  ERR_clear_error(): void;
}

let lib: LibCrypto | undefined;
let loadError: string | undefined;

function bind(this: void, candidate: FfiLibrary): LibCrypto | undefined {
  const bound = new LuaTable<string, FfiCData>();
  for (const [names, , signature] of FUNCTIONS) {
    let fn: FfiCData | undefined;
    for (const name of names) {
      const [ok, cast] = pcall(() => ffi.cast(signature, candidate.get(name)));
      if (ok) {
        fn = cast as FfiCData;
        break;
      }
    }
    if (fn === undefined) return undefined;
    bound.set(names[0], fn);
  }
  return bound as unknown as LibCrypto;
}

function loadLib(this: void): LuaMultiReturn<[LibCrypto | undefined, string | undefined]> {
  if (lib !== undefined) return $multi(lib, undefined);
  if (loadError !== undefined) return $multi(undefined, loadError);
  for (const [names, declaration] of FUNCTIONS) {
    // The declaration names the first (OpenSSL 3) symbol; older names are declared alike.
    for (const name of names) pcall(ffi.cdef, string.gsub(declaration, names[0], name)[0] + ";");
  }
  lib = bind(ffi.C);
  for (const name of ["crypto", "libcrypto.so.3", "libcrypto.so.1.1"]) {
    if (lib !== undefined) break;
    const [ok, loaded] = pcall(ffi.load, name);
    if (ok) lib = bind(loaded as FfiLibrary);
  }
  if (lib !== undefined) return $multi(lib, undefined);
  loadError = "OpenSSL's libcrypto (1.1.1 or 3) is not available to LuaJIT's FFI";
  return $multi(undefined, loadError);
}

export type Algorithm =
  | "HS256" | "HS384" | "HS512"
  | "RS256" | "RS384" | "RS512"
  | "PS256" | "PS384" | "PS512"
  | "ES256" | "ES384" | "ES512"
  | "EdDSA";

/** Every algorithm, in the order the schema and docs list them. */
export const ALGORITHMS: Algorithm[] = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"];

interface AlgorithmInfo {
  family: "HS" | "RS" | "PS" | "ES" | "EdDSA";
  /** Digest size in bits (0 for EdDSA, which hashes internally). */
  bits: number;
  /** ES*: the curve's size in bits and the length of r and of s in bytes. */
  curveBits?: number;
  coordBytes?: number;
}

const INFO = new LuaTable<string, AlgorithmInfo>();
INFO.set("HS256", { family: "HS", bits: 256 });
INFO.set("HS384", { family: "HS", bits: 384 });
INFO.set("HS512", { family: "HS", bits: 512 });
INFO.set("RS256", { family: "RS", bits: 256 });
INFO.set("RS384", { family: "RS", bits: 384 });
INFO.set("RS512", { family: "RS", bits: 512 });
INFO.set("PS256", { family: "PS", bits: 256 });
INFO.set("PS384", { family: "PS", bits: 384 });
INFO.set("PS512", { family: "PS", bits: 512 });
INFO.set("ES256", { family: "ES", bits: 256, curveBits: 256, coordBytes: 32 });
INFO.set("ES384", { family: "ES", bits: 384, curveBits: 384, coordBytes: 48 });
INFO.set("ES512", { family: "ES", bits: 512, curveBits: 521, coordBytes: 66 });
INFO.set("EdDSA", { family: "EdDSA", bits: 0 });

/** Is `alg` one of the JWS algorithms verified here? */
export function isAlgorithm(this: void, alg: unknown): alg is Algorithm {
  return type(alg) === "string" && INFO.has(alg as string);
}

/** HS* algorithms verify with a shared secret; the others with a public key. */
export function isHmac(this: void, alg: Algorithm): boolean {
  return INFO.get(alg).family === "HS";
}

function digestOf(this: void, c: LibCrypto, bits: number): FfiCData | undefined {
  if (bits === 256) return c.EVP_sha256();
  if (bits === 384) return c.EVP_sha384();
  if (bits === 512) return c.EVP_sha512();
  return undefined;
}

/** A parsed public key: the EVP_PKEY (freed by the GC with this object) and what it is. */
export interface PublicKey {
  pkey: FfiCData;
  /** "RSA", "EC", "Ed25519" */
  kind: string;
  bits: number;
}

/**
 * Parses a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) once. Returns nil and a reason for
 * anything that is not a public key libcrypto can use.
 */
export function publicKey(this: void, pem: string): LuaMultiReturn<[PublicKey | undefined, string | undefined]> {
  const [c, err] = loadLib();
  if (c === undefined) return $multi(undefined, err);
  if (type(pem) !== "string" || pem === "") return $multi(undefined, "not a PEM public key");
  const bio = c.BIO_new_mem_buf(pem, pem.length);
  if (bio === undefined) return $multi(undefined, "BIO_new_mem_buf failed");
  const raw = c.PEM_read_bio_PUBKEY(bio, undefined, undefined, undefined);
  c.BIO_free(bio);
  if (raw === undefined) {
    c.ERR_clear_error();
    return $multi(undefined, "not a PEM public key");
  }
  const pkey = ffi.gc(raw, (k) => c.EVP_PKEY_free(k));
  const id = c.EVP_PKEY_get_id(pkey);
  const bits = c.EVP_PKEY_get_bits(pkey);
  let kind: string;
  if (id === EVP_PKEY_RSA) kind = "RSA";
  else if (id === EVP_PKEY_EC) kind = "EC";
  else if (id === EVP_PKEY_ED25519) kind = "Ed25519";
  else return $multi(undefined, "unsupported key type (RSA, EC P-256/P-384/P-521 or Ed25519 expected)");
  return $multi({ pkey, kind, bits }, undefined);
}

/**
 * Can `key` verify `alg`? nil when it can, else why not (wrong type or size): such a key
 * is refused when a credential is created, and any token for it is refused.
 */
export function keyMismatch(this: void, alg: Algorithm, key: PublicKey): string | undefined {
  const info = INFO.get(alg);
  if (info.family === "RS" || info.family === "PS") {
    if (key.kind !== "RSA") return `${alg} needs an RSA key, got ${key.kind}`;
    if (key.bits < MIN_RSA_BITS) return `${alg} needs an RSA key of at least ${MIN_RSA_BITS} bits, got ${key.bits}`;
    return undefined;
  }
  if (info.family === "ES") {
    if (key.kind !== "EC") return `${alg} needs an EC key, got ${key.kind}`;
    if (key.bits !== info.curveBits) return `${alg} needs a ${info.curveBits}-bit curve, got ${key.bits} bits`;
    return undefined;
  }
  if (info.family === "EdDSA") return key.kind === "Ed25519" ? undefined : `EdDSA needs an Ed25519 key, got ${key.kind}`;
  return `${alg} uses a secret, not a public key`;
}

// One digest context and HMAC buffer per worker: nothing below yields.
let mdCtx: FfiCData | undefined;
/** A C array of pointers, indexed from 0 (not a TS array: TSTL adds no offset). */
interface PointerArray extends FfiCData {
  [index: number]: FfiCData;
}
const pctxOut = ffi.new<PointerArray>("void *[1]");
const hmacOut = ffi.new<FfiArray>("unsigned char[64]");
const hmacLen = ffi.new<FfiArray>("unsigned int[1]");

function context(this: void, c: LibCrypto): FfiCData | undefined {
  if (mdCtx === undefined) {
    const created = c.EVP_MD_CTX_new();
    if (created === undefined) return undefined;
    mdCtx = ffi.gc(created, (ctx) => c.EVP_MD_CTX_free(ctx));
  }
  return mdCtx;
}

/** HMAC of `data` under `secret` with the digest of an HS* algorithm (raw bytes). */
export function hmac(this: void, alg: Algorithm, secret: string, data: string): string | undefined {
  const [c] = loadLib();
  if (c === undefined) return undefined;
  const md = digestOf(c, INFO.get(alg).bits);
  if (md === undefined) return undefined;
  const out = c.HMAC(md, secret, secret.length, data, data.length, hmacOut, hmacLen);
  if (out === undefined) return undefined;
  return ffi.string(hmacOut, hmacLen[0]);
}

/** One DER INTEGER of an unsigned big-endian number (JOSE's r or s). */
function derInteger(this: void, bytes: string): string {
  let start = 1;
  while (start < bytes.length && byte(bytes, start) === 0) start++;
  let value = sub(bytes, start);
  if (byte(value, 1) >= 0x80) value = "\0" + value;
  return "\x02" + derLength(value.length) + value;
}

function derLength(this: void, n: number): string {
  return n < 0x80 ? char(n) : char(0x81, n);
}

/** JOSE's fixed-size r||s as the DER ECDSA-Sig-Value libcrypto verifies. */
export function joseToDer(this: void, signature: string, coordBytes: number): string {
  const body = derInteger(sub(signature, 1, coordBytes)) + derInteger(sub(signature, coordBytes + 1));
  return "\x30" + derLength(body.length) + body;
}

/**
 * Does `signature` sign `data` under `alg`? `secret` for HS*, a parsed key for the rest.
 * False for anything that does not verify, including a signature of the wrong length.
 */
export function verify(this: void, alg: Algorithm, data: string, signature: string, secret: string | undefined, key: PublicKey | undefined): boolean {
  const info = INFO.get(alg);
  if (info === undefined) return false;
  const [c] = loadLib();
  if (c === undefined) return false;
  if (info.family === "HS") {
    if (secret === undefined) return false;
    const expected = hmac(alg, secret, data);
    return expected !== undefined && expected.length === signature.length && c.CRYPTO_memcmp(expected, signature, expected.length) === 0;
  }
  if (key === undefined || keyMismatch(alg, key) !== undefined) return false;
  let sig = signature;
  if (info.family === "ES") {
    // JOSE's ECDSA signatures are r||s of exactly twice the coordinate size (RFC 7518 3.4).
    if (signature.length !== 2 * info.coordBytes!) return false;
    sig = joseToDer(signature, info.coordBytes!);
  } else if (info.family === "EdDSA" && signature.length !== 64) {
    return false;
  }
  const ctx = context(c);
  if (ctx === undefined) return false;
  const md = info.family === "EdDSA" ? undefined : digestOf(c, info.bits);
  let ok = c.EVP_DigestVerifyInit(ctx, pctxOut, md, undefined, key.pkey) === 1;
  if (ok && info.family === "PS") {
    const pctx = pctxOut[0];
    ok = c.EVP_PKEY_CTX_ctrl(pctx, EVP_PKEY_RSA, EVP_PKEY_OP_VERIFY_ANY, EVP_PKEY_CTRL_RSA_PADDING, RSA_PKCS1_PSS_PADDING, undefined) > 0
      && c.EVP_PKEY_CTX_ctrl(pctx, EVP_PKEY_RSA, EVP_PKEY_OP_VERIFY_ANY, EVP_PKEY_CTRL_RSA_PSS_SALTLEN, RSA_PSS_SALTLEN_DIGEST, undefined) > 0;
  }
  const verified = ok && c.EVP_DigestVerify(ctx, sig, sig.length, data, data.length) === 1;
  c.EVP_MD_CTX_reset(ctx);
  if (!verified) c.ERR_clear_error();
  return verified;
}

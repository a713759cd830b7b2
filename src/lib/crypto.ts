/**
 * AES-256-GCM, SHA-256 and random bytes from OpenSSL's libcrypto through LuaJIT's FFI.
 * lua-resty-string's resty.aes has GCM only in recent versions (Debian's 0.11 has none),
 * so the suite binds the few EVP calls it needs itself.
 *
 * Inside nginx, libcrypto is already linked into the process (`ffi.C`); elsewhere (busted
 * under plain LuaJIT) it is loaded by name. A module loaded earlier (resty.aes,
 * resty.openssl) may have declared the same functions with its own types, and LuaJIT
 * refuses a second declaration: declarations go through pcall one by one, and every
 * function is called through a pointer cast to the signature written here.
 *
 * Sealed format: nonce (12 bytes, random per message) || ciphertext || tag (16 bytes).
 */
import * as ffi from "ffi";


export const KEY_BYTES = 32;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;

const EVP_CTRL_GCM_GET_TAG = 0x10;
const EVP_CTRL_GCM_SET_TAG = 0x11;

/**
 * Each function: a declaration (used only when nothing declared it before) and the exact
 * signature it is called through (a function pointer cast, so that another module's
 * declaration with other const-ness cannot change how arguments convert).
 */
const FUNCTIONS: [string, string, string][] = [
  ["EVP_CIPHER_CTX_new", "void *EVP_CIPHER_CTX_new(void)", "void *(*)(void)"],
  ["EVP_CIPHER_CTX_free", "void EVP_CIPHER_CTX_free(void *ctx)", "void (*)(void *)"],
  ["EVP_CIPHER_CTX_reset", "int EVP_CIPHER_CTX_reset(void *ctx)", "int (*)(void *)"],
  ["EVP_aes_256_gcm", "const void *EVP_aes_256_gcm(void)", "const void *(*)(void)"],
  ["EVP_EncryptInit_ex", "int EVP_EncryptInit_ex(void *ctx, const void *cipher, void *impl, const unsigned char *key, const unsigned char *iv)",
    "int (*)(void *, const void *, void *, const char *, const char *)"],
  ["EVP_EncryptUpdate", "int EVP_EncryptUpdate(void *ctx, unsigned char *out, int *outl, const unsigned char *in, int inl)",
    "int (*)(void *, unsigned char *, int *, const char *, int)"],
  ["EVP_EncryptFinal_ex", "int EVP_EncryptFinal_ex(void *ctx, unsigned char *out, int *outl)", "int (*)(void *, unsigned char *, int *)"],
  ["EVP_DecryptInit_ex", "int EVP_DecryptInit_ex(void *ctx, const void *cipher, void *impl, const unsigned char *key, const unsigned char *iv)",
    "int (*)(void *, const void *, void *, const char *, const char *)"],
  ["EVP_DecryptUpdate", "int EVP_DecryptUpdate(void *ctx, unsigned char *out, int *outl, const unsigned char *in, int inl)",
    "int (*)(void *, unsigned char *, int *, const char *, int)"],
  ["EVP_DecryptFinal_ex", "int EVP_DecryptFinal_ex(void *ctx, unsigned char *outm, int *outl)", "int (*)(void *, unsigned char *, int *)"],
  ["EVP_CIPHER_CTX_ctrl", "int EVP_CIPHER_CTX_ctrl(void *ctx, int type, int arg, void *ptr)", "int (*)(void *, int, int, void *)"],
  ["SHA256", "unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md)", "unsigned char *(*)(const char *, size_t, unsigned char *)"],
  ["RAND_bytes", "int RAND_bytes(unsigned char *buf, int num)", "int (*)(unsigned char *, int)"],
];

/** @noSelf */
interface LibCrypto {
  EVP_CIPHER_CTX_new(): FfiCData | undefined;
  EVP_CIPHER_CTX_free(ctx: FfiCData): void;
  EVP_CIPHER_CTX_reset(ctx: FfiCData): number;
  EVP_aes_256_gcm(): FfiCData;
  EVP_EncryptInit_ex(ctx: FfiCData, cipher: FfiCData | undefined, impl: undefined, key: string | undefined, iv: string | undefined): number;
  EVP_EncryptUpdate(ctx: FfiCData, out: FfiCData | undefined, outl: FfiArray, data: string, len: number): number;
  EVP_EncryptFinal_ex(ctx: FfiCData, out: FfiCData, outl: FfiArray): number;
  EVP_DecryptInit_ex(ctx: FfiCData, cipher: FfiCData | undefined, impl: undefined, key: string | undefined, iv: string | undefined): number;
  EVP_DecryptUpdate(ctx: FfiCData, out: FfiCData | undefined, outl: FfiArray, data: string, len: number): number;
  EVP_DecryptFinal_ex(ctx: FfiCData, out: FfiCData, outl: FfiArray): number;
  EVP_CIPHER_CTX_ctrl(ctx: FfiCData, type: number, arg: number, ptr: FfiCData): number;
  SHA256(data: string, len: number, md: FfiCData): FfiCData;
  RAND_bytes(buf: FfiCData, len: number): number;
}

let lib: LibCrypto | undefined;
let loadError: string | undefined;

/** The functions of `candidate` cast to FUNCTIONS' signatures, or undefined when one is missing. */
function bind(this: void, candidate: FfiLibrary): LibCrypto | undefined {
  const bound = new LuaTable<string, FfiCData>();
  for (const [name, , signature] of FUNCTIONS) {
    const [ok, fn] = pcall(() => ffi.cast(signature, candidate.get(name)));
    if (!ok) return undefined;
    bound.set(name, fn as FfiCData);
  }
  return bound as unknown as LibCrypto;
}

function loadLib(this: void): LuaMultiReturn<[LibCrypto | undefined, string | undefined]> {
  if (lib !== undefined) return $multi(lib, undefined);
  if (loadError !== undefined) return $multi(undefined, loadError);
  for (const [, declaration] of FUNCTIONS) pcall(ffi.cdef, declaration + ";");
  lib = bind(ffi.C);
  for (const name of ["crypto", "libcrypto.so.3", "libcrypto.so.1.1"]) {
    if (lib !== undefined) break;
    const [ok, loaded] = pcall(ffi.load, name);
    if (ok) lib = bind(loaded as FfiLibrary);
  }
  if (lib !== undefined) return $multi(lib, undefined);
  loadError = "OpenSSL's libcrypto is not available to LuaJIT's FFI";
  return $multi(undefined, loadError);
}

// One cipher context and scratch buffers per worker: nothing below yields, so no two
// requests ever use them at the same time.
let cipherCtx: FfiCData | undefined;
const outLen = ffi.new<FfiArray>("int[1]");
const digest = ffi.new<FfiArray>("unsigned char[32]");
const tagBuf = ffi.new<FfiArray>("unsigned char[16]");
let scratch: FfiArray | undefined;
let scratchSize = 0;
/** Buffers up to this size are kept for reuse; larger ones are left to the GC. */
const SCRATCH_KEEP = 1024 * 1024;

function buffer(this: void, size: number): FfiArray {
  if (size <= scratchSize && scratch !== undefined) return scratch;
  const buf = ffi.new<FfiArray>("unsigned char[?]", size);
  if (size <= SCRATCH_KEEP) {
    scratch = buf;
    scratchSize = size;
  }
  return buf;
}

function context(this: void, c: LibCrypto): FfiCData | undefined {
  if (cipherCtx === undefined) {
    const created = c.EVP_CIPHER_CTX_new();
    if (created === undefined) return undefined;
    cipherCtx = ffi.gc(created, (ctx) => c.EVP_CIPHER_CTX_free(ctx));
  }
  return cipherCtx;
}

/** SHA-256 of `data`, 32 raw bytes. */
export function sha256(this: void, data: string): string {
  const [c, err] = loadLib();
  if (c === undefined) error(err ?? "libcrypto unavailable", 2);
  c.SHA256(data, data.length, digest);
  return ffi.string(digest, 32);
}

/** `n` bytes from OpenSSL's CSPRNG, or nil plus an error. */
export function randomBytes(this: void, n: number): LuaMultiReturn<[string | undefined, string | undefined]> {
  const [c, err] = loadLib();
  if (c === undefined) return $multi(undefined, err);
  const buf = buffer(n);
  if (c.RAND_bytes(buf, n) !== 1) return $multi(undefined, "RAND_bytes failed");
  return $multi(ffi.string(buf, n), undefined);
}

/**
 * Encrypts and authenticates `plaintext` (and authenticates `aad`, which is not part of
 * the output) under a 32-byte key with a fresh random nonce.
 */
export function seal(this: void, key: string, plaintext: string, aad: string): LuaMultiReturn<[string | undefined, string | undefined]> {
  if (key.length !== KEY_BYTES) error("AES-256-GCM needs a 32-byte key", 2);
  const [c, err] = loadLib();
  if (c === undefined) return $multi(undefined, err);
  const [nonce, randErr] = randomBytes(NONCE_BYTES);
  if (nonce === undefined) return $multi(undefined, randErr);
  const ctx = context(c);
  if (ctx === undefined) return $multi(undefined, "EVP_CIPHER_CTX_new failed");
  const out = buffer(plaintext.length + 16);
  let ok = c.EVP_EncryptInit_ex(ctx, c.EVP_aes_256_gcm(), undefined, key, nonce) === 1;
  if (ok && aad !== "") ok = c.EVP_EncryptUpdate(ctx, undefined, outLen, aad, aad.length) === 1;
  let written = 0;
  if (ok) {
    ok = c.EVP_EncryptUpdate(ctx, out, outLen, plaintext, plaintext.length) === 1;
    written = outLen[0];
  }
  if (ok) ok = c.EVP_EncryptFinal_ex(ctx, out, outLen) === 1;
  if (ok) ok = c.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, tagBuf) === 1;
  const sealed = ok ? nonce + ffi.string(out, written) + ffi.string(tagBuf, TAG_BYTES) : undefined;
  c.EVP_CIPHER_CTX_reset(ctx);
  if (sealed === undefined) return $multi(undefined, "AES-256-GCM encryption failed");
  return $multi(sealed, undefined);
}

/**
 * Decrypts what `seal` produced. Anything altered (ciphertext, tag, nonce, aad) or a
 * different key fails authentication: nil plus an error, never garbage.
 */
export function open(this: void, key: string, sealed: string, aad: string): LuaMultiReturn<[string | undefined, string | undefined]> {
  if (key.length !== KEY_BYTES) error("AES-256-GCM needs a 32-byte key", 2);
  const [c, err] = loadLib();
  if (c === undefined) return $multi(undefined, err);
  const size = sealed.length - NONCE_BYTES - TAG_BYTES;
  if (size < 0) return $multi(undefined, "sealed value too short");
  const ctx = context(c);
  if (ctx === undefined) return $multi(undefined, "EVP_CIPHER_CTX_new failed");
  const nonce = string.sub(sealed, 1, NONCE_BYTES);
  const ciphertext = string.sub(sealed, NONCE_BYTES + 1, NONCE_BYTES + size);
  const out = buffer(size + 16);
  let ok = c.EVP_DecryptInit_ex(ctx, c.EVP_aes_256_gcm(), undefined, key, nonce) === 1;
  if (ok && aad !== "") ok = c.EVP_DecryptUpdate(ctx, undefined, outLen, aad, aad.length) === 1;
  let written = 0;
  if (ok) {
    ok = c.EVP_DecryptUpdate(ctx, out, outLen, ciphertext, size) === 1;
    written = outLen[0];
  }
  if (ok) {
    ffi.copy(tagBuf, string.sub(sealed, -TAG_BYTES), TAG_BYTES);
    ok = c.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, tagBuf) === 1;
  }
  if (ok) ok = c.EVP_DecryptFinal_ex(ctx, out, outLen) > 0;
  const plaintext = ok ? ffi.string(out, written) : undefined;
  c.EVP_CIPHER_CTX_reset(ctx);
  if (plaintext === undefined) return $multi(undefined, "authentication failed");
  return $multi(plaintext, undefined);
}

/** Hex digits of every byte value, for `toHex`. */
const HEX = new LuaTable<string, string>();
for (let b = 0; b < 256; b++) HEX.set(string.char(b), string.format("%02x", b));

/** Formats of 1..HEX_AT_ONCE bytes ("%02x" repeated), built once. */
const HEX_AT_ONCE = 64;
const HEX_FORMATS: string[] = [];
for (let n = 1; n <= HEX_AT_ONCE; n++) HEX_FORMATS[n - 1] = string.rep("%02x", n);

/**
 * Lower-case hex of a binary string. Digests and ids (up to 64 bytes) take one
 * string.format of their bytes; gsub with a table cost ~16k instructions per SHA-256.
 */
export function toHex(this: void, bin: string): string {
  const n = bin.length;
  if (n === 0) return "";
  if (n <= HEX_AT_ONCE) return string.format(HEX_FORMATS[n - 1], ...string.byte(bin, 1, n));
  return string.gsub(bin, ".", HEX as unknown as { [c: string]: string })[0];
}

/**
 * A JWS compact token taken apart as Kong's jwt_parser does, with its error strings
 * ("invalid JSON", "invalid alg", ...), and the registered-claim checks with Kong's
 * messages ("token expired", "must be a number", ...) plus `clock_skew`.
 *
 * Stricter than Kong where Kong would raise (a 500): a token with other than three
 * segments, a segment that is not base64url, a header or payload that is not a JSON
 * object are all "Bad token" refusals.
 */
import * as cjson from "cjson.safe";
import { isAlgorithm, type Algorithm } from "../../lib/crypto/sign";

const find = string.find;
const gsub = string.gsub;
const rep = string.rep;
const sub = string.sub;
const floor = math.floor;

/** Longer tokens are refused before any decoding: nothing legitimate comes close. */
export const MAX_TOKEN_BYTES = 16384;

export interface Token {
  raw: string;
  /** `header.payload`, what the signature signs. */
  signingInput: string;
  header: LuaTable<string, unknown>;
  claims: LuaTable<string, unknown>;
  signature: string;
  alg: Algorithm;
}

const B64_TO_STD = { "-": "+", _: "/" } as unknown as { [c: string]: string };

/** base64url (padded or not) to bytes; nil for anything else. */
export function base64urlDecode(this: void, input: string): string | undefined {
  if (find(input, "[^%w%-_=]")[0] !== undefined) return undefined;
  const [unpadded] = gsub(input, "=+$", "");
  const remainder = unpadded.length % 4;
  if (remainder === 1) return undefined;
  const [std] = gsub(unpadded, "[-_]", B64_TO_STD);
  const padded = remainder > 0 ? std + rep("=", 4 - remainder) : std;
  return ngx.decode_base64(padded) ?? undefined;
}

/** JSON decoded from base64url bytes: the value and whether it was JSON at all. */
function decodeJson(this: void, segment: string): LuaMultiReturn<[unknown, boolean, boolean]> {
  const bytes = base64urlDecode(segment);
  if (bytes === undefined) return $multi(undefined, false, false);
  const [decoded, err] = cjson.decode(bytes);
  // An object, not an array: cjson decodes both to tables.
  return $multi(decoded, err === undefined, type(decoded) === "table" && find(bytes, "^%s*{")[0] !== undefined);
}

/** The token, or nil and Kong's reason (the 401 says "Bad token; <reason>"). */
export function parse(this: void, raw: string): LuaMultiReturn<[Token | undefined, string | undefined]> {
  if (raw.length > MAX_TOKEN_BYTES) return $multi(undefined, "invalid JSON");
  const [dot1] = find(raw, ".", 1, true);
  const [dot2] = dot1 !== undefined ? find(raw, ".", dot1 + 1, true) : [undefined];
  if (dot1 === undefined || dot2 === undefined || find(raw, ".", dot2 + 1, true)[0] !== undefined) return $multi(undefined, "invalid JSON");
  const headerSegment = sub(raw, 1, dot1 - 1);
  const claimsSegment = sub(raw, dot1 + 1, dot2 - 1);
  const [header, headerJson, headerObject] = decodeJson(headerSegment);
  const [claims, claimsJson, claimsObject] = decodeJson(claimsSegment);
  if (!headerJson || !claimsJson || !headerObject) return $multi(undefined, "invalid JSON");
  const alg = (header as LuaTable<string, unknown>).get("alg");
  if (!isAlgorithm(alg)) return $multi(undefined, "invalid alg");
  if (!claimsObject) return $multi(undefined, "invalid claims");
  const signature = base64urlDecode(sub(raw, dot2 + 1));
  if (signature === undefined || signature === "") return $multi(undefined, "invalid signature");
  return $multi({ raw, signingInput: sub(raw, 1, dot2 - 1), header: header as LuaTable<string, unknown>, claims: claims as LuaTable<string, unknown>, signature, alg }, undefined);
}

/** Kong's registered-claim errors: claim name → message (`{"exp":"token expired"}`). */
export type ClaimErrors = LuaTable<string, string>;

/**
 * `exp` and `nbf` as Kong's jwt checks them (`claims_to_verify`), with `skew` seconds of
 * leeway either way. Nil when they hold.
 */
export function verifyClaims(this: void, claims: LuaTable<string, unknown>, toVerify: string[], now: number, skew: number): ClaimErrors | undefined {
  let errors: ClaimErrors | undefined;
  for (const name of toVerify) {
    const value = claims.get(name);
    let message: string | undefined;
    if (type(value) !== "number") message = "must be a number";
    else if (name === "exp" && (value as number) + skew <= now) message = "token expired";
    else if (name === "nbf" && (value as number) - skew > now) message = "token not valid yet";
    if (message !== undefined) {
      if (errors === undefined) errors = new LuaTable();
      errors.set(name, message);
    }
  }
  return errors;
}

/** Kong's maximum_expiration: a token must expire, and no later than `maximum` seconds from now. */
export function exceedsMaximum(this: void, claims: LuaTable<string, unknown>, maximum: number, now: number): boolean {
  const exp = claims.get("exp");
  return type(exp) !== "number" || (exp as number) - now > maximum;
}

/** A numeric claim as whole seconds, or nil when absent or not a finite number. */
export function numericClaim(this: void, claims: LuaTable<string, unknown>, name: string): number | undefined {
  const value = claims.get(name);
  if (type(value) !== "number" || value !== value || value === math.huge || value === -math.huge) return undefined;
  return floor(value as number);
}

/**
 * The token's `jti` as revocations name it: a non-empty string as is, an integer in
 * decimal (krs jwt does the same); nil for anything else.
 */
export function jtiOf(this: void, claims: LuaTable<string, unknown>): string | undefined {
  const value = claims.get("jti");
  if (type(value) === "number" && value === floor(value as number) && math.abs(value as number) < 2 ** 53) return string.format("%d", value);
  return stringClaim(claims, "jti");
}

/** A string claim, or nil. */
export function stringClaim(this: void, claims: LuaTable<string, unknown>, name: string): string | undefined {
  const value = claims.get(name);
  return type(value) === "string" && value !== "" ? (value as string) : undefined;
}

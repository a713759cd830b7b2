/**
 * `kong.db.schema.typedefs` for the local gateway: the ready-made field definitions Kong's
 * plugin schemas reuse (Kong's kong/db/schema/typedefs.lua, same shapes and messages),
 * validated with Lua patterns only, so the module loads under plain LuaJIT (CLI validator,
 * busted) as well as inside nginx. Real Kong ships its own module under this name; this one
 * exists only on the local gateway's package path.
 *
 * Each definition is callable like Kong's `Schema.define` result:
 * `typedefs.port { default = 6379 }` returns a copy with the given attributes on top.
 * Reading a typedef that does not exist raises, as in Kong, so a typo in a schema fails at load.
 */
import cjson = require("cjson.safe");

const find = string.find;
const match = string.match;
const sub = string.sub;
const gsub = string.gsub;
const byte = string.byte;

const NULL: unknown = cjson.null;

type Verdict = LuaMultiReturn<[true | undefined, string | undefined]>;

/** Kong attributes the shared declarations leave out. */
interface TypedefField extends SchemaField {
  reference?: string;
  auto?: boolean;
  uuid?: boolean;
  starts_with?: string;
  match_none?: { pattern: string; err: string }[];
  elements?: TypedefField;
}

const valid = (): Verdict => $multi(true, undefined);
const invalid = (message: string): Verdict => $multi(undefined, message);

/** Kong's `Schema.define`: calling a typedef with a table returns a copy with those attributes on top. */
const DEFINED: LuaMetatable<TypedefField> = {
  __call(this: TypedefField, overrides?: LuaTable<string, unknown>): TypedefField {
    const copy = new LuaTable<string, unknown>();
    for (const [k, v] of pairs(this as unknown as LuaTable<string, unknown>)) copy.set(k, v);
    if (overrides !== undefined) for (const [k, v] of pairs(overrides)) copy.set(k, v);
    return setmetatable(copy as unknown as TypedefField, DEFINED);
  },
};

function define(field: TypedefField): TypedefField {
  return setmetatable(field, DEFINED);
}

// Addresses ------------------------------------------------------------------------------

function isIPv4(s: string): boolean {
  const [a, b, c, d] = match(s, "^(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)$");
  if (a === undefined) return false;
  return tonumber(a)! <= 255 && tonumber(b)! <= 255 && tonumber(c)! <= 255 && tonumber(d)! <= 255;
}

/** Counts hex groups of 1-4 digits in a colon-separated run; -1 when one is malformed. */
function hexGroups(s: string): number {
  if (s === "") return 0;
  let n = 0;
  for (const [group] of string.gmatch(s + ":", "([^:]*):")) {
    if (match(group, "^%x%x?%x?%x?$")[0] === undefined) return -1;
    n++;
  }
  return n;
}

/** IPv6 text form: 8 groups, or fewer with one `::`, optionally ending in an IPv4 address. */
function isIPv6(s: string): boolean {
  if (s.length < 2 || s.length > 45 || match(s, "^[%x:%.]+$")[0] === undefined) return false;
  const [double] = find(s, "::", 1, true);
  if (double !== undefined && find(s, "::", double + 1, true)[0] !== undefined) return false;
  let head = s;
  let groups = 0;
  if (find(s, ".", 1, true)[0] !== undefined) {
    const [v4] = match(s, ":([%d%.]+)$");
    if (v4 === undefined || !isIPv4(v4)) return false;
    head = sub(s, 1, s.length - v4.length);
    if (sub(head, -2) !== "::") head = sub(head, 1, -2);
    groups = 2;
  }
  if (double === undefined) {
    const n = hexGroups(head);
    return n >= 0 && n + groups === 8;
  }
  const [at] = find(head, "::", 1, true);
  if (at === undefined) return false;
  const left = hexGroups(sub(head, 1, at - 1));
  const right = hexGroups(sub(head, at + 2));
  return left >= 0 && right >= 0 && left + right + groups <= 7;
}

interface Address {
  kind: "ipv4" | "ipv6" | "name";
  port?: number;
}

/** Kong's utils.normalize_ip: an IPv4, IPv6 or host name, each with an optional port. */
function parseAddress(s: string): LuaMultiReturn<[Address | undefined, string | undefined]> {
  const [bare, colons] = gsub(s, ":", "");
  if (colons > 1) {
    let host = s;
    let portText: string | undefined;
    if (sub(s, 1, 1) === "[") {
      const [inner, rest] = match(s, "^%[(.-)%](.*)$");
      if (inner === undefined) return $multi(undefined, "invalid ipv6 address: " + s);
      host = inner;
      if (rest !== "") {
        [portText] = match(rest, "^:(%d+)$");
        if (portText === undefined) return $multi(undefined, "invalid ipv6 address: " + s);
      }
    }
    if (!isIPv6(host)) return $multi(undefined, "invalid ipv6 address: " + s);
    const port = portText !== undefined ? tonumber(portText)! : undefined;
    if (port !== undefined && port > 65535) return $multi(undefined, "invalid port number");
    return $multi({ kind: "ipv6", port }, undefined);
  }
  let host = s;
  let port: number | undefined;
  const [portText] = match(s, ":(%d+)$");
  if (portText !== undefined) {
    host = sub(s, 1, s.length - portText.length - 1);
    port = tonumber(portText)!;
  }
  if (match(bare, "^[%d%.]+$")[0] !== undefined) {
    if (!isIPv4(host)) return $multi(undefined, "invalid ipv4 address: " + s);
    if (port !== undefined && port > 65535) return $multi(undefined, "invalid port number");
    return $multi({ kind: "ipv4", port }, undefined);
  }
  if (host === "" || match(host, "^[%w%-%._]+$")[0] === undefined) return $multi(undefined, "invalid hostname: " + s);
  // Labels must not be empty (a trailing dot is fine: FQDN) nor end in a dash.
  const labels = host + (sub(host, -1) === "." ? "" : ".");
  for (const [label] of string.gmatch(labels, "([^.]*)%.")) {
    if (label === "" || sub(label, -1) === "-") return $multi(undefined, "invalid hostname: " + s);
  }
  if (port !== undefined && port > 65535) return $multi(undefined, "invalid port number");
  return $multi({ kind: "name", port }, undefined);
}

function validateHost(host: string): Verdict {
  const [addr, err] = parseAddress(host);
  if (err === "invalid port number" || (addr !== undefined && addr.port !== undefined)) return invalid("must not have a port");
  if (addr === undefined) return invalid("invalid value: " + host);
  return valid();
}

function validateHostWithOptionalPort(host: string): Verdict {
  const [addr, err] = parseAddress(host);
  if (addr === undefined) return invalid(err!);
  return valid();
}

function validateIp(ip: string): Verdict {
  const [addr, err] = parseAddress(ip);
  if (addr === undefined) return invalid(err!);
  if (addr.kind === "name") return invalid("not an ip address: " + ip);
  if (addr.port !== undefined) return invalid("invalid value: " + ip);
  return valid();
}

function validateIpOrCidr(value: string): Verdict {
  let ip = value;
  let bits: number | undefined;
  if (find(value, "/", 1, true)[0] !== undefined) {
    const [addr, mask] = match(value, "^([^/]+)/(%d%d?%d?)$");
    if (addr === undefined) return invalid("invalid ip or cidr range: '" + value + "'");
    ip = addr;
    bits = tonumber(mask)!;
  }
  if (isIPv4(ip) ? bits === undefined || bits <= 32 : isIPv6(ip) && (bits === undefined || bits <= 128)) return valid();
  return invalid("invalid ip or cidr range: '" + value + "'");
}

function validateCidrV4(value: string): Verdict {
  const [addr, mask] = match(value, "^([^/]+)/(%d%d?)$");
  const ip = addr ?? value;
  if (!isIPv4(ip)) return invalid("invalid cidr range: invalid IP address: " + value);
  if (mask !== undefined && tonumber(mask)! > 32) return invalid("invalid cidr range: invalid mask: " + value);
  return valid();
}

// Names, paths, URLs ----------------------------------------------------------------------

function validatePath(path: string): Verdict {
  if (match(path, "^/[%w%.%-_~/%%]*$")[0] === undefined) {
    return invalid("invalid path: '" + path + "' (characters outside of the reserved list of RFC 3986 found)");
  }
  // Every `%` must start a two-hex-digit escape.
  const [escaped] = gsub(path, "%%%x%x", "___");
  const [at] = find(escaped, "%", 1, true);
  if (at !== undefined) return invalid("invalid url-encoded value: '" + sub(escaped, at, at + 2) + "'");
  return valid();
}

function validateHeaderName(name: string): Verdict {
  if (match(name, "^[%w_%-]+$")[0] === undefined) {
    return invalid("bad header name '" + name + "', allowed characters are A-Z, a-z, 0-9, '_', and '-'");
  }
  return valid();
}

function validateName(name: string): Verdict {
  if (match(name, "^[%w%.%-_~]+$")[0] === undefined) {
    return invalid("invalid value '" + name + "': it must only contain alphanumeric and '., -, _, ~' characters");
  }
  return valid();
}

/** Tags: printable ASCII except `,` and `/`; bytes >= 0x80 (UTF-8 sequences) pass as they are. */
function isTagByte(b: number): boolean {
  return b >= 0x80 || (b >= 0x21 && b <= 0x7e && b !== 0x2c && b !== 0x2f);
}

/** Names: alphanumerics and `.-_~` in ASCII; bytes >= 0x80 (UTF-8 sequences) pass as they are. */
function isNameByte(b: number): boolean {
  return b >= 0x80 || (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) ||
    b === 0x2e || b === 0x2d || b === 0x5f || b === 0x7e;
}

function everyByte(s: string, ok: (this: void, b: number) => boolean): boolean {
  for (let i = 1; i <= s.length; i++) if (!ok(byte(s, i))) return false;
  return true;
}

function validateUtf8Name(name: string): Verdict {
  if (!everyByte(name, isNameByte)) {
    return invalid("invalid value '" + name + "': the only accepted ascii characters are alphanumerics or ., -, _, and ~");
  }
  return valid();
}

function validateTag(tag: string): Verdict {
  if (!everyByte(tag, isTagByte)) {
    return invalid("invalid tag '" + tag + "': expected printable ascii (except `,` and `/`) or valid utf-8 sequences");
  }
  return valid();
}

function validateUrl(url: string): Verdict {
  const [scheme] = match(url, "^(%a[%w+%.%-]*)://");
  if (scheme === undefined) return invalid("missing scheme in url");
  const [host] = match(url, "^%a[%w+%.%-]*://([^/?#]+)");
  if (host === undefined) return invalid("missing host in url");
  return valid();
}

// Definitions ---------------------------------------------------------------------------

const HTTP_PROTOCOLS = ["grpc", "grpcs", "http", "https"];
const PROTOCOLS = ["grpc", "grpcs", "http", "https", "tcp", "tls", "tls_passthrough", "udp"];

const protocol = define({ type: "string", one_of: PROTOCOLS });
const tag = define({ type: "string", required: true, custom_validator: validateTag });

/** Holds this module to the shared declaration (src/types/kong-schema.d.ts) at compile time. */
function conforming<T extends typeof import("kong.db.schema.typedefs")>(defs: T): T {
  return defs;
}

const typedefs = conforming({
  http_method: define({ type: "string", match: "^%u+$" }),
  protocol,
  host: define({ type: "string", custom_validator: validateHost }),
  host_with_optional_port: define({ type: "string", custom_validator: validateHostWithOptionalPort }),
  ip: define({ type: "string", custom_validator: validateIp }),
  ip_or_cidr: define({ type: "string", custom_validator: validateIpOrCidr }),
  cidr_v4: define({ type: "string", custom_validator: validateCidrV4 }),
  cidr: define({ type: "string", custom_validator: validateCidrV4 }),
  port: define({ type: "integer", between: [0, 65535] }),
  path: define({
    type: "string",
    starts_with: "/",
    match_none: [{ pattern: "//", err: "must not have empty segments" }],
    custom_validator: validatePath,
  }),
  url: define({ type: "string", custom_validator: validateUrl }),
  header_name: define({ type: "string", custom_validator: validateHeaderName }),
  timeout: define({ type: "integer", between: [0, 2147483646] }),
  uuid: define({ type: "string", uuid: true, auto: true }),
  name: define({ type: "string", custom_validator: validateName }),
  utf8_name: define({ type: "string", custom_validator: validateUtf8Name }),
  tag,
  tags: define({ type: "set", elements: tag }),
  no_route: define({ type: "foreign", reference: "routes", eq: NULL }),
  no_service: define({ type: "foreign", reference: "services", eq: NULL }),
  no_consumer: define({ type: "foreign", reference: "consumers", eq: NULL }),
  protocols: define({ type: "set", required: true, default: HTTP_PROTOCOLS, elements: protocol }),
  protocols_http: define({
    type: "set",
    required: true,
    default: HTTP_PROTOCOLS,
    elements: { type: "string", one_of: HTTP_PROTOCOLS },
  }),
});

setmetatable(typedefs, {
  __index(this: object, key: string): never {
    return error("schema typedef error: definition " + tostring(key) + " does not exist", 2);
  },
});

export = typedefs;

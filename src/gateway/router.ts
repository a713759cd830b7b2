/**
 * The local gateway's router: Kong 3.x `traditional_compatible` routing for HTTP routes
 * by hosts, paths and methods, with `strip_path` and v0 path handling (Kong's default).
 * Read from kong/router/compat.lua, atc.lua, transform.lua, utils.lua and atc-router's
 * router.rs; where this module and Kong differ, Kong is right.
 *
 * Matching: a route matches when every attribute it sets matches. The path matched is
 * Kong's normalized request path (pdk.normalizePath), not nginx's decoded $uri.
 * - methods: equal, case-sensitive ("GET" is not "get").
 * - hosts: the request host is split at its first ":" when what follows is a number.
 *   "example.com" is equal to the host part; "*.example.com" is a suffix match on
 *   ".example.com" (any depth); "example.*" a prefix match on "example.". A route host
 *   with a port also needs that port in the request host; without one, the port is
 *   ignored. Case-sensitive, as in Kong: "API.example.test" does not match "api.example.test".
 * - paths: "/api" is a plain prefix of the normalized path ("/api" matches "/apix");
 *   "~re" is a regex matched as "^re" (ngx.re.find, options "jo").
 * - protocols, headers, snis, sources are not routed on (Kong answers a protocol
 *   mismatch after routing, in the runloop).
 *
 * Priority: Kong splits a route with several paths into one matcher per path group (all
 * regex paths form one group; prefix paths one group per length) and orders matchers by:
 *   1. how many of methods, hosts, paths the route sets (host+method+path first);
 *   2. hosts set and none a wildcard (Kong also sets this for `hosts: []`);
 *   3. a regex group before a prefix group;
 *   4. regex group: regex_priority, higher first; prefix group: length, longest first
 *      (a route without paths counts as length 0);
 *   5. ties: Kong takes the higher route uuid, which is arbitrary; we take declaration order.
 * So regex paths are tried before prefix paths only among routes of the same category
 * count and host kind: a host+path prefix route beats a path-only regex route. Within a
 * regex group the route's first regex (declaration order) that matches is the one used.
 * Kong packs regex_priority into 32 bits of a 64-bit key, so negative or very large
 * values misorder there; here they compare as plain numbers.
 *
 * Upstream path (v0): with strip_path (default true) the matched prefix, or the text the
 * regex matched, is cut from the request path; the rest is joined to service.path
 * (default "/") by utils.get_upstream_uri_v0's rules, after dropping a leading "./" or
 * "../". Without strip_path the whole request path is joined.
 *
 * Performance: newRouter groups matchers into at most 16 priority classes; a prefix class
 * is a hash per prefix length, so a search does one string.sub and one lookup per
 * distinct length, then checks method and host of the few candidates. Matches are
 * memoized by method, host and path (see MEMO_MAX).
 */

export interface RouteMatch {
  route: KongRoute;
  service: KongService | undefined;
  /** The path to send upstream: service.path joined with the request path, strip_path applied (v0 rules). */
  upstream_uri: string;
  /** The route path (prefix or regex) that matched, if any. */
  matched_path: string | undefined;
  /** What strip_path cut from the request path (the prefix, or the text a regex matched). */
  stripped_prefix: string | undefined;
}

export interface Router {
  /**
   * `path` is the normalized request path without query string; `host` as sent (may have
   * ":port"). The result may be shared with other requests of the same method, host and
   * path: callers never change it.
   */
  match(this: Router, method: string, host: string | undefined, path: string): RouteMatch | undefined;
  /** Some route matches on hosts: without one, `host` is never read (callers may pass undefined). */
  usesHosts: boolean;
}

/**
 * ngx.re.find's contract: the 1-based start and end of the first match, or nil (plus an
 * error message when the regex does not compile).
 */
export type RegexFind = (
  this: void,
  subject: string,
  regex: string,
  options: string,
) => LuaMultiReturn<[number | undefined, number | undefined, string | undefined]>;

export interface RouterOptions {
  /** Regex engine for "~" paths; defaults to ngx.re.find. Without either, regex paths never match. */
  regex_find?: RegexFind;
}

const sub = string.sub;
const find = string.find;
const byte = string.byte;

const SLASH = 47; // "/"
const DOT = 46; // "."
const TILDE = 126; // "~"
const ASTERISK = 42; // "*"
const REGEX_OPTIONS = "jo";

/** A wildcard host: `text` is ".example.com" (suffix) or "example." (prefix). */
interface WildcardHost {
  text: string;
  suffix: boolean;
  port: number | undefined;
}

/** What one route needs at match time (shared by its path groups). */
interface Matcher {
  route: KongRoute;
  service: KongService | undefined;
  order: number;
  regexPriority: number;
  strip: boolean;
  servicePath: string;
  methods: LuaTable<string, boolean> | undefined;
  hasHosts: boolean;
  exactHosts: LuaTable<string, boolean>;
  exactHostPorts: LuaTable<string, LuaTable<number, boolean>>;
  wildcardHosts: WildcardHost[];
  /** Regex group: "^..." patterns and the route paths they came from, same order. */
  regexes: string[];
  regexPaths: string[];
}

interface PrefixCandidate {
  matcher: Matcher;
  /** undefined for a route without paths (length 0, key ""). */
  path: string | undefined;
}

/** Matchers sharing category count, host kind and path kind. */
interface PriorityClass {
  regex: boolean;
  /** Regex class: ordered by regex_priority, then declaration. */
  matchers: Matcher[];
  /** Prefix class: distinct prefix lengths, longest first. */
  lengths: number[];
  /** Prefix class: length -> prefix -> candidates in declaration order. */
  byLength: LuaTable<number, LuaTable<string, PrefixCandidate[]>>;
}

interface RouterImpl extends Router {
  classes: PriorityClass[];
  regexFind: RegexFind | undefined;
  /** Some route matches on methods: only then is the method part of the memo key. */
  usesMethods: boolean;
  /** method ("" when no route has methods) → host ("" when none has hosts) → path → match. */
  memo: LuaTable<string, LuaTable<string, LuaTable<string, RouteMatch>>>;
  memoCount: number;
}

/**
 * The memo of matches: a request's route depends only on its method, host and path (and the
 * router, built anew for each config), so the matches of recent requests are kept and the
 * classes are searched once per distinct request, as Kong's router caches its matches. On a
 * hit, match() runs no loop, which also lets LuaJIT compile the access phase as one trace (a
 * loop left after one iteration aborts the trace that contains it). Bounded: emptied when it
 * holds MEMO_MAX matches; paths longer than MEMO_PATH_MAX (hosts, methods longer than
 * MEMO_HOST_MAX, MEMO_METHOD_MAX) are matched every time.
 */
const MEMO_MAX = 4096;
const MEMO_PATH_MAX = 512;
/**
 * The longest host (a DNS name is at most 253 bytes, plus ":port") and method kept as memo
 * keys: both are the client's, and without a bound 4096 matches could each hold a Host
 * header (and a method) of nginx's header buffer size, tens of MB per worker.
 */
const MEMO_HOST_MAX = 260;
const MEMO_METHOD_MAX = 32;

/** A non-empty array from a decoded entity field (absent, null or [] give undefined). */
function nonEmpty(value: unknown): string[] | undefined {
  if (type(value) !== "table") return undefined;
  const list = value as string[];
  return list.length > 0 ? list : undefined;
}

/** Kong's split_host_port: a port only when what follows the first ":" is a number. */
function splitHostPort(host: string): LuaMultiReturn<[string, number | undefined]> {
  const [colon] = find(host, ":", 1, true);
  if (colon === undefined) return $multi(host, undefined);
  const port = tonumber(sub(host, colon + 1));
  if (port === undefined) return $multi(host, undefined);
  return $multi(sub(host, 1, colon - 1), port);
}

function sanitizePostfix(postfix: string): string {
  if (postfix === "") return postfix;
  if (postfix === "." || postfix === "..") return "";
  if (byte(postfix, 1) === DOT) {
    if (byte(postfix, 2) === SLASH) return sub(postfix, 3);
    if (byte(postfix, 2) === DOT && byte(postfix, 3) === SLASH) return sub(postfix, 4);
  }
  return postfix;
}

/** Kong's v0 join of service path (`base`) and what is left of the request path. */
function upstreamUriV0(strip: boolean, postfix: string, requestPath: string, base: string): string {
  const baseEndsWithSlash = byte(base, -1) === SLASH;
  if (strip) {
    if (postfix === "") {
      if (baseEndsWithSlash) {
        if (base === "/") return "/";
        return byte(requestPath, -1) === SLASH ? base : sub(base, 1, -2);
      }
      return requestPath.length > 1 && byte(requestPath, -1) === SLASH ? base + "/" : base;
    }
    if (byte(postfix, 1) === SLASH) {
      return baseEndsWithSlash ? sub(base, 1, -2) + postfix : base + postfix;
    }
    return baseEndsWithSlash ? base + postfix : base + "/" + postfix;
  }
  if (baseEndsWithSlash) return base + sub(requestPath, 2);
  return requestPath === "/" ? base : base + requestPath;
}

function buildResult(m: Matcher, matchedPath: string | undefined, requestPath: string, matchedLength: number): RouteMatch {
  const postfix = m.strip && matchedPath !== undefined
    ? sub(requestPath, matchedLength + 1)
    : sub(requestPath, 2);
  return {
    route: m.route,
    service: m.service,
    upstream_uri: upstreamUriV0(m.strip, sanitizePostfix(postfix), requestPath, m.servicePath),
    matched_path: matchedPath,
    stripped_prefix: m.strip && matchedPath !== undefined ? sub(requestPath, 1, matchedLength) : undefined,
  };
}

function hostMatches(m: Matcher, name: string, port: number | undefined): boolean {
  if (m.exactHosts.get(name) === true) return true;
  if (port !== undefined) {
    const ports = m.exactHostPorts.get(name);
    if (ports !== undefined && ports.get(port) === true) return true;
  }
  const nameLength = name.length;
  for (const w of m.wildcardHosts) {
    if (w.port === undefined || w.port === port) {
      const textLength = w.text.length;
      if (nameLength >= textLength) {
        if (w.suffix) {
          const [at] = find(name, w.text, nameLength - textLength + 1, true);
          if (at !== undefined) return true;
        } else {
          const [at] = find(name, w.text, 1, true);
          if (at === 1) return true;
        }
      }
    }
  }
  return false;
}

function accepts(m: Matcher, method: string, hostName: string | undefined, hostPort: number | undefined): boolean {
  const methods = m.methods;
  if (methods !== undefined && methods.get(method) !== true) return false;
  if (m.hasHosts) {
    if (hostName === undefined) return false;
    return hostMatches(m, hostName, hostPort);
  }
  return true;
}

function routerMatch(this: Router, method: string, host: string | undefined, path: string): RouteMatch | undefined {
  const self = this as RouterImpl;
  const methodKey = self.usesMethods ? method : "";
  // A request without Host is matched every time (rare: HTTP/1.0 only).
  const hostKey = self.usesHosts ? host : "";
  const byHost = self.memo.get(methodKey);
  if (byHost !== undefined && hostKey !== undefined) {
    const byPath = byHost.get(hostKey);
    if (byPath !== undefined) {
      const known = byPath.get(path);
      if (known !== undefined) return known;
    }
  }
  const found = search(self, method, host, path);
  if (found !== undefined && hostKey !== undefined && path.length <= MEMO_PATH_MAX && hostKey.length <= MEMO_HOST_MAX && methodKey.length <= MEMO_METHOD_MAX) remember(self, methodKey, hostKey, path, found);
  return found;
}

function remember(this: void, self: RouterImpl, methodKey: string, hostKey: string, path: string, found: RouteMatch): void {
  if (self.memoCount >= MEMO_MAX) {
    self.memo = new LuaTable();
    self.memoCount = 0;
  }
  let byHost = self.memo.get(methodKey);
  if (byHost === undefined) {
    byHost = new LuaTable();
    self.memo.set(methodKey, byHost);
  }
  let byPath = byHost.get(hostKey);
  if (byPath === undefined) {
    byPath = new LuaTable();
    byHost.set(hostKey, byPath);
  }
  byPath.set(path, found);
  self.memoCount++;
}

function search(this: void, self: RouterImpl, method: string, host: string | undefined, path: string): RouteMatch | undefined {
  let hostName: string | undefined;
  let hostPort: number | undefined;
  if (host !== undefined && self.usesHosts) {
    [hostName, hostPort] = splitHostPort(host);
  }
  const pathLength = path.length;
  for (const cls of self.classes) {
    if (cls.regex) {
      const regexFind = self.regexFind;
      if (regexFind !== undefined) {
        for (const m of cls.matchers) {
          if (accepts(m, method, hostName, hostPort)) {
            const regexes = m.regexes;
            for (let i = 0; i < regexes.length; i++) {
              const [from, to] = regexFind(path, regexes[i], REGEX_OPTIONS);
              if (from !== undefined && to !== undefined) {
                return buildResult(m, m.regexPaths[i], path, to - from + 1);
              }
            }
          }
        }
      }
    } else {
      const byLength = cls.byLength;
      for (const length of cls.lengths) {
        if (length <= pathLength) {
          const candidates = byLength.get(length).get(length === 0 ? "" : sub(path, 1, length));
          if (candidates !== undefined) {
            for (const c of candidates) {
              if (accepts(c.matcher, method, hostName, hostPort)) {
                return buildResult(c.matcher, c.path, path, length);
              }
            }
          }
        }
      }
    }
  }
  return undefined;
}

function addHosts(m: Matcher, hosts: string[]): void {
  for (const raw of hosts) {
    const [host, port] = splitHostPort(raw);
    if (byte(host, 1) === ASTERISK) {
      m.wildcardHosts.push({ text: sub(host, 2), suffix: true, port });
    } else if (byte(host, -1) === ASTERISK) {
      m.wildcardHosts.push({ text: sub(host, 1, -2), suffix: false, port });
    } else if (port === undefined) {
      m.exactHosts.set(host, true);
    } else {
      let ports = m.exactHostPorts.get(host);
      if (ports === undefined) {
        ports = new LuaTable<number, boolean>();
        m.exactHostPorts.set(host, ports);
      }
      ports.set(port, true);
    }
  }
}

/**
 * Compiles the route's regex paths; returns false when one does not compile (Kong then
 * drops the route's regex group and logs it).
 */
function addRegexes(m: Matcher, paths: string[], regexFind: RegexFind): boolean {
  for (const path of paths) {
    if (byte(path, 1) === TILDE) {
      const regex = "^" + sub(path, 2);
      const [, , err] = regexFind("", regex, REGEX_OPTIONS);
      if (err !== undefined) {
        if (type(ngx) === "table") {
          ngx.log(ngx.ERR, "[router] route ", m.route.id, ": dropping regex path ", path, ": ", err);
        }
        return false;
      }
      m.regexes.push(regex);
      m.regexPaths.push(path);
    }
  }
  return m.regexes.length > 0;
}

function newClass(regex: boolean): PriorityClass {
  return { regex, matchers: [], lengths: [], byLength: new LuaTable() };
}

function addPrefixCandidate(cls: PriorityClass, m: Matcher, path: string | undefined): void {
  const key = path === undefined ? "" : path;
  const length = key.length;
  let byPrefix = cls.byLength.get(length);
  if (byPrefix === undefined) {
    byPrefix = new LuaTable();
    cls.byLength.set(length, byPrefix);
    cls.lengths.push(length);
  }
  let candidates = byPrefix.get(key);
  if (candidates === undefined) {
    candidates = [];
    byPrefix.set(key, candidates);
  }
  // A route listing the same path twice matches once.
  if (candidates.length === 0 || candidates[candidates.length - 1].matcher !== m) {
    candidates.push({ matcher: m, path });
  }
}

function byRegexPriority(this: void, a: Matcher, b: Matcher): boolean {
  if (a.regexPriority !== b.regexPriority) return a.regexPriority > b.regexPriority;
  return a.order < b.order;
}

function longestFirst(this: void, a: number, b: number): boolean {
  return a > b;
}

/** Build once per config; routes in declaration order. Throws only on programmer error. */
export function newRouter(routes: KongRoute[], options?: RouterOptions): Router {
  if (type(routes) !== "table") {
    error("newRouter: routes must be an array", 2);
  }
  let regexFind = options !== undefined ? options.regex_find : undefined;
  if (regexFind === undefined && type(ngx) === "table" && type(ngx.re) === "table") {
    regexFind = ngx.re.find;
  }

  // Class key: category count * 4 + plain hosts * 2 + regex; higher key = higher priority.
  const classes = new LuaTable<number, PriorityClass>();
  let usesHosts = false;
  let usesMethods = false;
  const classFor = (key: number, regex: boolean): PriorityClass => {
    let cls = classes.get(key);
    if (cls === undefined) {
      cls = newClass(regex);
      classes.set(key, cls);
    }
    return cls;
  };

  for (let i = 0; i < routes.length; i++) {
    const route = routes[i];
    const methods = nonEmpty(route.methods);
    const hosts = nonEmpty(route.hosts);
    const paths = nonEmpty(route.paths);
    const weight = (methods !== undefined ? 1 : 0) + (hosts !== undefined ? 1 : 0) + (paths !== undefined ? 1 : 0);
    // Kong's schema refuses a route with nothing to match on; it never matches here.
    if (weight === 0) continue;

    let plainHosts = type(route.hosts) === "table";
    if (hosts !== undefined) {
      for (const h of hosts) {
        const [star] = find(h, "*", 1, true);
        if (star !== undefined) plainHosts = false;
      }
    }

    const service = type(route.service) === "table" ? (route.service as KongService) : undefined;
    const servicePath = service !== undefined && type(service.path) === "string" ? (service.path as string) : "/";
    const m: Matcher = {
      route,
      service,
      order: i,
      regexPriority: type(route.regex_priority) === "number" ? (route.regex_priority as number) : 0,
      strip: route.strip_path !== false,
      servicePath,
      methods: undefined,
      hasHosts: hosts !== undefined,
      exactHosts: new LuaTable(),
      exactHostPorts: new LuaTable(),
      wildcardHosts: [],
      regexes: [],
      regexPaths: [],
    };
    if (methods !== undefined) {
      usesMethods = true;
      const set = new LuaTable<string, boolean>();
      for (const method of methods) set.set(method, true);
      m.methods = set;
    }
    if (hosts !== undefined) {
      addHosts(m, hosts);
      usesHosts = true;
    }

    const baseKey = weight * 4 + (plainHosts ? 2 : 0);
    if (paths === undefined) {
      addPrefixCandidate(classFor(baseKey, false), m, undefined);
      continue;
    }
    let hasRegex = false;
    for (const path of paths) {
      if (byte(path, 1) === TILDE) {
        hasRegex = true;
      } else {
        addPrefixCandidate(classFor(baseKey, false), m, path);
      }
    }
    if (hasRegex && regexFind !== undefined && addRegexes(m, paths, regexFind)) {
      classFor(baseKey + 1, true).matchers.push(m);
    }
  }

  const ordered: PriorityClass[] = [];
  for (let key = 15; key >= 0; key--) {
    const cls = classes.get(key);
    if (cls !== undefined) {
      if (cls.regex) {
        table.sort(cls.matchers, byRegexPriority);
      } else {
        table.sort(cls.lengths, longestFirst);
      }
      ordered.push(cls);
    }
  }

  const router: RouterImpl = { classes: ordered, regexFind, usesHosts, usesMethods, memo: new LuaTable(), memoCount: 0, match: routerMatch };
  return router;
}

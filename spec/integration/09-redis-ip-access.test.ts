/**
 * redis-ip-access through real gateways: Kong ip-restriction's cases (allow, deny,
 * deny over allow, CIDRs, IPv6, mapped addresses, status and message), the client address
 * as Kong's PDK gives it (X-Forwarded-For ignored from an untrusted peer, honoured from a
 * KONG_TRUSTED_IPS one, through nginx's realip module), hostile forwarding headers, and
 * invalid entries refused at start naming the value. Shared lists in Redis: a change by
 * the CLI seen by every worker of two gateways within 1 s (measured; on one Redis and on
 * a Redis Cluster, the same body: spec/helpers/backends.ts), a change whose
 * message was lost seen through the version check, TTL entries gone on time, the Admin
 * API, and Redis down (last lists keep applying; fault_tolerant for a worker that never
 * loaded them). Automatic bans: N 401s from one client across two gateways ban it on both,
 * logged once, visible in the list, and expire. Clients are told apart by the
 * loopback address they send from (127.0.0.0/8 is all local on Linux).
 */
import { spawnSync } from "node:child_process";
import { request as httpRequest } from "node:http";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addEntry, listKeys, removeEntry, withScripts, type IpRedis } from "../../src/cli/ip.js";
import type { UpstreamServer } from "../../src/cli/upstream.js";
import { BACKENDS, redisBackend } from "../helpers/backends.js";
import { freePort, gateway, ROOT, startRedis, stopAll, upstream, type RedisServer, type TestGateway } from "../helpers/services.js";

interface Res {
  status: number;
  body: string;
  json: () => any;
}

function hit(url: string, localAddress: string, headers: Record<string, string> = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers, localAddress }, (r) => {
      let body = "";
      r.setEncoding("utf8");
      r.on("data", (c: string) => (body += c));
      r.on("end", () => resolve({ status: r.statusCode ?? 0, body, json: () => JSON.parse(body) }));
    });
    req.on("error", reject);
    req.end();
  });
}

const REQUEST_ID = expect.stringMatching(/^[0-9a-f]{32}$/);
const TRUSTED_PROXY = "127.0.0.9";

function routes(up: UpstreamServer) {
  const plugin = (config: object) => [{ name: "redis-ip-access", config }];
  return {
    _format_version: "3.0",
    services: [
      {
        name: "svc",
        url: `http://127.0.0.1:${up.port}/anything`,
        routes: [
          { name: "allow", paths: ["/allow"], plugins: plugin({ allow: ["127.0.0.2", "127.0.1.0/24"] }) },
          { name: "deny", paths: ["/deny"], plugins: plugin({ deny: ["127.0.0.3", "127.0.2.0/24"] }) },
          { name: "both", paths: ["/both"], plugins: plugin({ allow: ["127.0.0.0/16"], deny: ["127.0.0.3"] }) },
          { name: "custom", paths: ["/custom"], plugins: plugin({ deny: ["127.0.0.3"], status: 401, message: "Forbidden here" }) },
          { name: "v6", paths: ["/v6"], plugins: plugin({ allow: ["2001:db8::/32", "203.0.113.0/24"], deny: ["2001:db8:bad::/48"] }) },
          { name: "open", paths: ["/open"] },
        ],
      },
    ],
  };
}

let up: UpstreamServer;
let plain: TestGateway;
let behindProxy: TestGateway;

beforeAll(async () => {
  up = await upstream();
  plain = await gateway(routes(up));
  behindProxy = await gateway(routes(up), { trustedIps: `${TRUSTED_PROXY},127.0.3.0/24`, realIpHeader: "X-Forwarded-For", realIpRecursive: "on" });
}, 60_000);

afterAll(async () => {
  expect(plain.unexpectedErrors()).toEqual([]);
  expect(behindProxy.unexpectedErrors()).toEqual([]);
  await stopAll();
});

describe("Kong ip-restriction's semantics", () => {
  it("allow lets listed addresses and CIDRs through and refuses others with Kong's message", async () => {
    expect((await hit(`${plain.proxyUrl}/allow`, "127.0.0.2")).status).toBe(200);
    expect((await hit(`${plain.proxyUrl}/allow`, "127.0.1.77")).status).toBe(200);
    const refused = await hit(`${plain.proxyUrl}/allow`, "127.0.0.4");
    expect(refused.status).toBe(403);
    expect(refused.json()).toEqual({ message: "IP address not allowed: 127.0.0.4", request_id: REQUEST_ID });
  });

  it("deny refuses listed addresses and CIDRs and lets others through", async () => {
    expect((await hit(`${plain.proxyUrl}/deny`, "127.0.0.3")).status).toBe(403);
    expect((await hit(`${plain.proxyUrl}/deny`, "127.0.2.200")).status).toBe(403);
    expect((await hit(`${plain.proxyUrl}/deny`, "127.0.0.4")).status).toBe(200);
  });

  it("deny wins over allow", async () => {
    expect((await hit(`${plain.proxyUrl}/both`, "127.0.0.3")).status).toBe(403);
    expect((await hit(`${plain.proxyUrl}/both`, "127.0.0.5")).status).toBe(200);
    expect((await hit(`${plain.proxyUrl}/both`, "127.1.0.5")).status).toBe(403);
  });

  it("status and message replace Kong's defaults", async () => {
    const refused = await hit(`${plain.proxyUrl}/custom`, "127.0.0.3");
    expect(refused.status).toBe(401);
    expect(refused.json()).toEqual({ message: "Forbidden here", request_id: REQUEST_ID });
  });

  it("a route without the plugin is not affected", async () => {
    expect((await hit(`${plain.proxyUrl}/open`, "127.0.0.3")).status).toBe(200);
  });
});

describe("the client address (Kong's trusted_ips, real_ip_header, real_ip_recursive)", () => {
  it("ignores X-Forwarded-For and X-Real-IP from an untrusted peer", async () => {
    const spoofed = await hit(`${plain.proxyUrl}/allow`, "127.0.0.4", { "X-Forwarded-For": "127.0.0.2", "X-Real-IP": "127.0.0.2" });
    expect(spoofed.status).toBe(403);
    expect(spoofed.json().message).toBe("IP address not allowed: 127.0.0.4");
    // Not trusted on the proxy-aware gateway either: only 127.0.0.9 and 127.0.3.0/24 are.
    expect((await hit(`${behindProxy.proxyUrl}/allow`, "127.0.0.4", { "X-Forwarded-For": "127.0.0.2" })).status).toBe(403);
    expect((await hit(`${behindProxy.proxyUrl}/deny`, "127.0.0.4", { "X-Forwarded-For": "127.0.0.3" })).status).toBe(200);
  });

  it("honours X-Forwarded-For from a trusted peer, both ways", async () => {
    expect((await hit(`${behindProxy.proxyUrl}/allow`, TRUSTED_PROXY, { "X-Forwarded-For": "127.0.0.2" })).status).toBe(200);
    const denied = await hit(`${behindProxy.proxyUrl}/deny`, TRUSTED_PROXY, { "X-Forwarded-For": "127.0.0.3" });
    expect(denied.status).toBe(403);
    expect(denied.json().message).toBe("IP address not allowed: 127.0.0.3");
    // The trusted proxy's own address is not what gets checked.
    expect((await hit(`${behindProxy.proxyUrl}/allow`, TRUSTED_PROXY)).status).toBe(403);
  });

  it("recursive: skips trusted hops from the right, stops at the first untrusted one (no spoofing through a trusted proxy)", async () => {
    // The client (127.0.0.5) claims 127.0.0.2 in front of what the trusted proxy appended.
    const res = await hit(`${behindProxy.proxyUrl}/allow`, TRUSTED_PROXY, { "X-Forwarded-For": "127.0.0.2, 127.0.0.5, 127.0.3.7" });
    expect(res.status).toBe(403);
    expect(res.json().message).toBe("IP address not allowed: 127.0.0.5");
  });

  it("sends upstream Kong's X-Forwarded-For (the peer appended) and X-Real-IP (the client)", async () => {
    const res = await hit(`${behindProxy.proxyUrl}/open`, TRUSTED_PROXY, { "X-Forwarded-For": "127.0.0.2" });
    expect(res.status).toBe(200);
    const echoed = res.json();
    expect(echoed.headers["x-forwarded-for"]).toBe(`127.0.0.2, ${TRUSTED_PROXY}`);
    expect(echoed.headers["x-real-ip"]).toBe("127.0.0.2");
  });

  it("matches forwarded IPv6 clients, and IPv4-mapped ones against IPv4 rules", async () => {
    const via = (addr: string) => hit(`${behindProxy.proxyUrl}/v6`, TRUSTED_PROXY, { "X-Forwarded-For": addr });
    expect((await via("2001:db8::5")).status).toBe(200);
    expect((await via("2001:db8:bad::5")).status).toBe(403);
    expect((await via("2001:db9::5")).status).toBe(403);
    expect((await via("::ffff:203.0.113.7")).status).toBe(200);
    expect((await via("203.0.113.7")).status).toBe(200);
    expect((await via("::ffff:198.51.100.7")).status).toBe(403);
  });

  it("a 1,000-entry X-Forwarded-For, garbage or zone ids never crash the request", async () => {
    // Compact, to stay within nginx's 8k header line (a longer one is nginx's 400, before any Lua).
    const long = Array.from({ length: 1000 }, (_, i) => `9.9.${i % 10}.9`).join(",");
    expect(long.split(",").length).toBe(1000);
    for (const xff of [long, "garbage, ,,", "fe80::1%eth0", "::ffff:1.2.3", "\u00ff\u00fe"]) {
      const res = await hit(`${behindProxy.proxyUrl}/deny`, TRUSTED_PROXY, { "X-Forwarded-For": xff });
      expect(res.status, xff.slice(0, 40)).toBe(200);
    }
    const res = await hit(`${behindProxy.proxyUrl}/allow`, TRUSTED_PROXY, { "X-Forwarded-For": "garbage" });
    expect(res.status).toBe(403);
  });
});

describe("invalid entries", () => {
  for (const bad of ["1.2.3.4/33", "::1/129", "1.2.3", "fe80::1%eth0"]) {
    it(`refuses '${bad}' at start, naming it`, async () => {
      const config = { _format_version: "3.0", services: [{ name: "s", url: `http://127.0.0.1:${up.port}`, routes: [{ name: "r", paths: ["/"], plugins: [{ name: "redis-ip-access", config: { allow: ["127.0.0.1", bad] } }] }] }] };
      await expect(gateway(config)).rejects.toThrow(`invalid ip or cidr range: '${bad}'`);
    });
  }

  it("refuses an untrustworthy KONG_TRUSTED_IPS entry at start", async () => {
    await expect(gateway(routes(up), { trustedIps: "127.0.0.1; evil" })).rejects.toThrow("KONG_TRUSTED_IPS");
  });
});

// ---------------------------------------------------------------- shared lists in Redis

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The routes of the shared-list specs, on the Redis `redis` names. */
function sharedListRoutes(redis: object) {
  const conf = (extra: object) => ({ sync_interval: 1, redis, ...extra });
  return {
    _format_version: "3.0",
    services: [{
      name: "svc",
      url: `http://127.0.0.1:${up.port}/anything`,
      routes: [
        { name: "dyn", paths: ["/dyn"], plugins: [{ name: "redis-ip-access", config: conf({ redis_deny_lists: ["blocklist"] }) }] },
        { name: "partners", paths: ["/partners"], plugins: [{ name: "redis-ip-access", config: conf({ allow: ["127.0.5.250"], redis_allow_lists: ["partners"], redis_deny_lists: ["blocklist"] }) }] },
      ],
    }],
  };
}

/** `count` requests on fresh connections (spread over the workers): every status seen. */
async function statusesOf(gw: TestGateway, path: string, from: string, count = 16): Promise<Set<number>> {
  const seen = new Set<number>();
  const replies = await Promise.all(Array.from({ length: count }, () => hit(`${gw.proxyUrl}${path}`, from)));
  for (const res of replies) seen.add(res.status);
  return seen;
}

/** Ms until every gateway of `nodes` answers `status` only (polled), bounded by `limitMs`. */
async function untilAll(nodes: TestGateway[], path: string, from: string, status: number, limitMs: number): Promise<number> {
  const started = Date.now();
  while (Date.now() - started < limitMs) {
    const all = await Promise.all(nodes.map((gw) => statusesOf(gw, path, from)));
    if (all.every((s) => s.size === 1 && s.has(status))) return Date.now() - started;
    await sleep(20);
  }
  throw new Error(`${path} from ${from} not ${status} on every node within ${limitMs} ms`);
}

describe.each(BACKENDS)("shared lists: propagation (%s redis)", (kind) => {
  let nodes: TestGateway[];
  let redisFlags: string[];
  let r: IpRedis;
  const clientAddr = (n: number) => `127.0.6.${n}`;

  beforeAll(async () => {
    const backend = await redisBackend(kind);
    r = withScripts(backend.client);
    redisFlags = backend.cluster !== undefined
      ? ["--redis-cluster", backend.cluster.seeds.map((n) => `${n.ip}:${n.port}`).join(",")]
      : ["--redis", `redis://127.0.0.1:${backend.server!.port}/0`];
    nodes = await Promise.all([gateway(sharedListRoutes(backend.redis)), gateway(sharedListRoutes(backend.redis))]);
    // Every worker loads its lists on first use.
    for (const gw of nodes) expect(await statusesOf(gw, "/dyn", clientAddr(1), 32)).toEqual(new Set([200]));
  }, 90_000);

  afterAll(async () => {
    for (const gw of nodes) expect(gw.unexpectedErrors()).toEqual([]);
    await Promise.all(nodes.map((gw) => gw.stop()));
  });

  it("a CLI change reaches every worker of both gateways within 1 s (propagation delay measured)", async () => {
    const cli = spawnSync("node", [join(ROOT, "bin", "krs.mjs"), "ip", "deny", "add", "blocklist", `${clientAddr(3)}/32`, "--reason", "abuse", ...redisFlags], { encoding: "utf8" });
    expect(cli.stderr).toBe("");
    expect(cli.status).toBe(0);
    const delay = await untilAll(nodes, "/dyn", clientAddr(3), 403, 1000);
    console.log(`${kind} redis: redis-ip-access propagation (CLI add -> every worker of 2 gateways denies): ${delay} ms`);
    expect(await statusesOf(nodes[0], "/dyn", clientAddr(4))).toEqual(new Set([200]));
    expect(await removeEntry(r, "blocklist", `${clientAddr(3)}/32`)).toBe(true);
    await untilAll(nodes, "/dyn", clientAddr(3), 200, 1000);
  });
});

describe("shared lists in Redis", () => {
  let redis: RedisServer;
  let r: IpRedis;
  let nodes: TestGateway[];
  const clientAddr = (n: number) => `127.0.5.${n}`;

  // The propagation promise (within 1 s) is measured by the tests above; the checks below
  // test what a change does, with room for a loaded machine's slower polling.
  const FUNCTIONAL_LIMIT_MS = 3000;

  /** Ms until every node answers `status` only (polled), bounded by `limitMs`. */
  async function until(path: string, from: string, status: number, limitMs: number): Promise<number> {
    const started = Date.now();
    while (Date.now() - started < limitMs) {
      const all = await Promise.all(nodes.map((gw) => statusesOf(gw, path, from)));
      if (all.every((s) => s.size === 1 && s.has(status))) return Date.now() - started;
      await sleep(20);
    }
    throw new Error(`${path} from ${from} not ${status} on every node within ${limitMs} ms`);
  }

  beforeAll(async () => {
    redis = await startRedis();
    r = withScripts(new Redis(redis.port, "127.0.0.1", { maxRetriesPerRequest: 0, retryStrategy: () => null }));
    // The last test stops Redis under this connection.
    r.on("error", () => undefined);
    nodes = [await gateway(sharedListRoutes({ port: redis.port })), await gateway(sharedListRoutes({ port: redis.port }))];
    // Every worker loads its lists on first use.
    for (const gw of nodes) expect(await statusesOf(gw, "/dyn", clientAddr(1), 32)).toEqual(new Set([200]));
  }, 60_000);

  afterAll(() => {
    r.disconnect();
    // The last test stops Redis: the subscribers say they lost it.
    for (const gw of nodes) expect(gw.unexpectedErrors([/\[redis-ip-access:lists\] change subscriber/])).toEqual([]);
  });

  it("requests cost no Redis round trip once a worker has its lists", async () => {
    const calls = async () => {
      const info = await r.info("commandstats");
      let total = 0;
      for (const m of info.matchAll(/^cmdstat_(\w+):calls=(\d+)/gm)) if (m[1] !== "info") total += Number(m[2]);
      return total;
    };
    const before = await calls();
    const startedAt = Date.now();
    for (let i = 0; i < 10; i++) for (const gw of nodes) await statusesOf(gw, "/dyn", clientAddr(20 + i), 20);
    const seconds = (Date.now() - startedAt) / 1000;
    const made = (await calls()) - before;
    // 400 requests; only the workers' periodic version checks (one GET per list and
    // second, 4 workers) may have reached Redis meanwhile.
    expect(made).toBeLessThanOrEqual(4 * (Math.ceil(seconds) + 1));
  });

  it("a change whose message was lost is seen through the version check within sync_interval", async () => {
    const [entries, , version] = listKeys("blocklist");
    // What the script does, without its PUBLISH.
    await r.zadd(entries, "+inf", clientAddr(5));
    await r.set(version, `${Date.now()}-lost`);
    const delay = await until("/dyn", clientAddr(5), 403, 1600);
    expect(delay).toBeGreaterThan(0);
    await removeEntry(r, "blocklist", clientAddr(5));
    await until("/dyn", clientAddr(5), 200, 1000);
  });

  it("an entry with a TTL is gone on every node on time", async () => {
    const addedAt = Date.now();
    await addEntry(r, "blocklist", clientAddr(6), 2, "short ban");
    await until("/dyn", clientAddr(6), 403, 1000);
    const gone = await until("/dyn", clientAddr(6), 200, 4000);
    const lifetime = Date.now() - addedAt;
    expect(lifetime).toBeGreaterThanOrEqual(2000);
    expect(lifetime).toBeLessThan(2600);
    expect(gone).toBeGreaterThan(0);
  });

  it("allow lists: static and Redis entries allow, the rest is refused; deny lists still win", async () => {
    expect(await statusesOf(nodes[0], "/partners", "127.0.5.250")).toEqual(new Set([200]));
    expect(await statusesOf(nodes[0], "/partners", clientAddr(7))).toEqual(new Set([403]));
    await addEntry(r, "partners", "127.0.5.0/28");
    await until("/partners", clientAddr(7), 200, FUNCTIONAL_LIMIT_MS);
    await addEntry(r, "blocklist", clientAddr(7));
    await until("/partners", clientAddr(7), 403, FUNCTIONAL_LIMIT_MS);
    await removeEntry(r, "blocklist", clientAddr(7));
    await removeEntry(r, "partners", "127.0.5.0/28");
    await until("/partners", clientAddr(7), 403, FUNCTIONAL_LIMIT_MS);
  });

  it("the Admin API adds, lists and removes entries, and refuses bad input naming it", async () => {
    const admin = nodes[1].adminUrl;
    const post = (list: string, body: object) => fetch(`${admin}/redis-ip-access/lists/${list}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const created = await post("partners", { cidr: "127.0.5.8/32", ttl: 3600, reason: "partner X" });
    expect(created.status).toBe(201);
    expect(await created.json()).toMatchObject({ list: "partners", cidr: "127.0.5.8/32", reason: "partner X" });
    const listed = (await (await fetch(`${admin}/redis-ip-access/lists/partners`)).json()) as any;
    expect(listed.data).toHaveLength(1);
    expect(listed.data[0]).toMatchObject({ cidr: "127.0.5.8/32", reason: "partner X" });
    expect(listed.data[0].expires_at).toBeGreaterThan(Date.now() / 1000 + 3500);
    await until("/partners", clientAddr(8), 200, FUNCTIONAL_LIMIT_MS);
    for (const bad of ["1.2.3.4/33", "::1/129", "1.2.3", "fe80::1%eth0", ""]) {
      const res = await post("partners", { cidr: bad });
      expect(res.status, bad).toBe(400);
      expect(((await res.json()) as any).message).toContain(`'${bad}'`);
    }
    expect((await post("bad name!", { cidr: "1.2.3.4" })).status).toBe(400);
    const removed = await fetch(`${admin}/redis-ip-access/lists/partners/${encodeURIComponent("127.0.5.8/32")}`, { method: "DELETE" });
    expect(removed.status).toBe(204);
    expect((await fetch(`${admin}/redis-ip-access/lists/partners/${encodeURIComponent("127.0.5.8/32")}`, { method: "DELETE" })).status).toBe(404);
    expect(((await (await fetch(`${admin}/redis-ip-access/lists/partners`)).json()) as any).data).toEqual([]);
    await until("/partners", clientAddr(8), 403, FUNCTIONAL_LIMIT_MS);
  });

  it("the CLI refuses bad input naming it, without touching Redis", () => {
    for (const bad of ["1.2.3.4/33", "::1/129", "1.2.3", "fe80::1%eth0"]) {
      const cli = spawnSync("node", [join(ROOT, "bin", "krs.mjs"), "ip", "deny", "add", "blocklist", bad, "--redis", "redis://127.0.0.1:1/0"], { encoding: "utf8" });
      expect(cli.status, bad).toBe(2);
      expect(cli.stderr).toContain(`'${bad}'`);
    }
  });

  it("with Redis down, the lists compiled last keep applying, and fault_tolerant decides for a worker that never loaded them", async () => {
    await addEntry(r, "blocklist", clientAddr(9), 0, "kept through the outage");
    await until("/dyn", clientAddr(9), 403, FUNCTIONAL_LIMIT_MS);
    await redis.stop();
    await sleep(1200);
    for (const gw of nodes) {
      expect(await statusesOf(gw, "/dyn", clientAddr(9))).toEqual(new Set([403]));
      expect(await statusesOf(gw, "/dyn", clientAddr(10))).toEqual(new Set([200]));
    }
    const conf = (faultTolerant: boolean) => ({ _format_version: "3.0", services: [{ name: "s", url: `http://127.0.0.1:${up.port}/anything`, routes: [{ name: "r", paths: ["/"], plugins: [{ name: "redis-ip-access", config: { redis_deny_lists: ["blocklist"], fault_tolerant: faultTolerant, redis: { port: redis.port, timeout: 200 } } }] }] }] });
    const open = await gateway(conf(true));
    expect((await hit(`${open.proxyUrl}/`, clientAddr(9))).status).toBe(200);
    const closed = await gateway(conf(false));
    expect((await hit(`${closed.proxyUrl}/`, clientAddr(9))).status).toBe(500);
    const expected = [/\[redis-ip-access(:lists)?\]/];
    expect(open.unexpectedErrors(expected)).toEqual([]);
    expect(closed.unexpectedErrors(expected)).toEqual([]);
  });
});

describe("the Admin API's Redis", () => {
  it("comes only from instances that use Redis, and a 503 names its host:port", async () => {
    const [staticPort, listPort] = [await freePort(), await freePort()];
    const svc = (routes: object[]) => ({ _format_version: "3.0", services: [{ name: "s", url: `http://127.0.0.1:${up.port}/anything`, routes }] });
    const staticOnly = { name: "static", paths: ["/static"], plugins: [{ name: "redis-ip-access", config: { deny: ["127.0.0.3"], redis: { port: staticPort, timeout: 200 } } }] };
    const listed = { name: "listed", paths: ["/listed"], plugins: [{ name: "redis-ip-access", config: { redis_deny_lists: ["blocklist"], redis: { port: listPort, timeout: 200 } } }] };
    const onlyStatic = await gateway(svc([staticOnly]));
    const none = await fetch(`${onlyStatic.adminUrl}/redis-ip-access/lists/blocklist`);
    expect(none.status).toBe(409);
    const both = await gateway(svc([staticOnly, listed]));
    const down = await fetch(`${both.adminUrl}/redis-ip-access/lists/blocklist`);
    expect(down.status).toBe(503);
    expect(((await down.json()) as any).message).toContain(`127.0.0.1:${listPort}`);
    // Redis is down on purpose here: only the plugin's own (throttled) lines may appear.
    expect(onlyStatic.unexpectedErrors()).toEqual([]);
    expect(both.unexpectedErrors([/\[redis-ip-access(:lists)?\]/, /could not connect to redis/])).toEqual([]);
  });
});

describe("a list whose reload fails (Redis frozen right after a change message)", () => {
  it("still drops its TTL entries on time", async () => {
    const redis = await startRedis();
    const r = withScripts(new Redis(redis.port, "127.0.0.1", { maxRetriesPerRequest: 0, retryStrategy: () => null }));
    r.on("error", () => undefined);
    const config = { redis_deny_lists: ["blocklist"], sync_interval: 1, redis: { port: redis.port, timeout: 300 } };
    const gw = await gateway({ _format_version: "3.0", services: [{ name: "s", url: `http://127.0.0.1:${up.port}/anything`, routes: [{ name: "r", paths: ["/"], plugins: [{ name: "redis-ip-access", config }] }] }] });
    const seen = async (from: string) => new Set((await Promise.all(Array.from({ length: 16 }, () => hit(`${gw.proxyUrl}/`, from)))).map((res) => res.status));
    try {
      expect(await seen("127.0.8.1")).toEqual(new Set([200]));
      await addEntry(r, "blocklist", "127.0.8.1", 3, "short ban");
      const deadline = Date.now() + 1500;
      const onlyRefused = async () => { const s = await seen("127.0.8.1"); return s.size === 1 && s.has(403); };
      while (Date.now() < deadline && !(await onlyRefused())) await sleep(20);
      const addedAt = Date.now();
      expect(await seen("127.0.8.1")).toEqual(new Set([403]));
      // This change marks the list dirty on every worker; the freeze makes each reload fail.
      await addEntry(r, "blocklist", "127.0.8.2", 0, "kept");
      redis.process.kill("SIGSTOP");
      await sleep(Math.max(0, addedAt + 3000 + 1500 - Date.now()));
      expect(await seen("127.0.8.1"), "the TTL entry outlived its TTL").toEqual(new Set([200]));
    } finally {
      redis.process.kill("SIGCONT");
      r.disconnect();
    }
    expect(gw.unexpectedErrors([/\[redis-ip-access(:lists)?\]/])).toEqual([]);
  }, 20_000);
});

describe("an allow list a worker never loaded (Redis unreachable)", () => {
  it("is as if absent: the static allow still refuses others; fault_tolerant false answers 500; true lets through only when no allow source was left", async () => {
    const deadPort = await freePort();
    const plugin = (config: object) => [{ name: "redis-ip-access", config: { redis_allow_lists: ["partners"], redis: { port: deadPort, timeout: 200 }, ...config } }];
    const gw = await gateway({
      _format_version: "3.0",
      services: [{
        name: "s",
        url: `http://127.0.0.1:${up.port}/anything`,
        routes: [
          { name: "static-open", paths: ["/static-open"], plugins: plugin({ allow: ["10.0.0.0/8"], fault_tolerant: true }) },
          { name: "static-closed", paths: ["/static-closed"], plugins: plugin({ allow: ["10.0.0.0/8"], fault_tolerant: false }) },
          { name: "listed-closed", paths: ["/listed-closed"], plugins: plugin({ allow: ["127.0.6.1"], fault_tolerant: false }) },
          { name: "list-only-open", paths: ["/list-only-open"], plugins: plugin({ fault_tolerant: true }) },
        ],
      }],
    });
    for (let i = 0; i < 4; i++) {
      expect((await hit(`${gw.proxyUrl}/static-open`, "127.0.6.1")).status, "static allow still applies").toBe(403);
      expect((await hit(`${gw.proxyUrl}/static-closed`, "127.0.6.1")).status, "the list might have held it").toBe(500);
      expect((await hit(`${gw.proxyUrl}/listed-closed`, "127.0.6.1")).status, "statically allowed").toBe(200);
      expect((await hit(`${gw.proxyUrl}/list-only-open`, "127.0.6.1")).status, "no allow source left").toBe(200);
    }
    expect(gw.unexpectedErrors([/\[redis-ip-access(:lists)?\]/])).toEqual([]);
  });
});

describe("automatic bans", () => {
  let redis: RedisServer;
  let r: IpRedis;
  let nodes: TestGateway[];
  const banConf = (port: number) => ({
    _format_version: "3.0",
    services: [{
      name: "s",
      url: `http://127.0.0.1:${up.port}/status/401`,
      routes: [{ name: "login", paths: ["/login"], plugins: [{ name: "redis-ip-access", config: { redis_deny_lists: ["bans"], ban: { statuses: [401], threshold: 4, window: 30, duration: 2, list: "bans" }, redis: { port } } }] }],
    }],
  });

  beforeAll(async () => {
    redis = await startRedis();
    r = withScripts(new Redis(redis.port, "127.0.0.1"));
    nodes = [await gateway(banConf(redis.port)), await gateway(banConf(redis.port))];
  }, 60_000);

  afterAll(() => r.disconnect());

  it("an IPv4-mapped client is counted and banned as its IPv4 address", async () => {
    const proxied = await gateway(banConf(redis.port), { trustedIps: TRUSTED_PROXY, realIpHeader: "X-Forwarded-For" });
    const client = "127.0.7.9";
    for (const via of [client, `::ffff:${client}`, client, `::ffff:${client}`]) {
      expect((await hit(`${proxied.proxyUrl}/login`, TRUSTED_PROXY, { "X-Forwarded-For": via })).status).toBe(401);
    }
    const deadline = Date.now() + 2000;
    while (Date.now() < deadline && (await r.zscore(listKeys("bans")[0], client)) === null) await sleep(50);
    expect(await r.zscore(listKeys("bans")[0], client)).not.toBeNull();
    expect(await r.zscore(listKeys("bans")[0], `::ffff:${client}`)).toBeNull();
    await removeEntry(r, "bans", client);
    expect(proxied.unexpectedErrors()).toEqual([]);
  });

  it("N 401s from one client, counted across nodes, ban it on every node, once, with a reason; the ban expires", async () => {
    const client = "127.0.7.1";
    // Two 401s on each node: four in all, none enough on its own node.
    for (const gw of nodes) for (let i = 0; i < 2; i++) expect((await hit(`${gw.proxyUrl}/login`, client)).status).toBe(401);
    const bannedAt = Date.now();
    for (let tries = 0; ; tries++) {
      const all = await Promise.all(nodes.map((gw) => hit(`${gw.proxyUrl}/login`, client)));
      if (all.every((res) => res.status === 403)) {
        expect(all[0].json().message).toBe(`IP address not allowed: ${client}`);
        break;
      }
      expect(tries).toBeLessThan(50);
      await sleep(20);
    }
    expect(Date.now() - bannedAt).toBeLessThan(1000);
    // Another client is not affected.
    expect((await hit(`${nodes[0].proxyUrl}/login`, "127.0.7.2")).status).toBe(401);
    const listed = await (await import("../../src/cli/ip.js")).listEntries(r, "bans");
    expect(listed).toHaveLength(1);
    expect(listed[0].cidr).toBe(client);
    expect(listed[0].reason).toContain("auto-ban");
    const logged = nodes.flatMap((gw) => gw.errorLog().filter((l) => l.includes(`banned ${client}`)));
    expect(logged).toHaveLength(1);
    // The ban ends on time, on every node.
    await sleep(Math.max(0, bannedAt + 2300 - Date.now()));
    for (const gw of nodes) expect((await hit(`${gw.proxyUrl}/login`, client)).status, "after the ban").toBe(401);
    for (const gw of nodes) expect(gw.unexpectedErrors()).toEqual([]);
  });
});

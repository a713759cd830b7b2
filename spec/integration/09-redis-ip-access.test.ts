/**
 * redis-ip-access through real gateways: Kong ip-restriction's cases (allow, deny,
 * deny over allow, CIDRs, IPv6, mapped addresses, status and message), the client address
 * as Kong's PDK gives it (X-Forwarded-For ignored from an untrusted peer, honoured from a
 * KONG_TRUSTED_IPS one, through nginx's realip module), hostile forwarding headers, and
 * invalid entries refused at start naming the value. Clients are told apart by the
 * loopback address they send from (127.0.0.0/8 is all local on Linux).
 */
import { request as httpRequest } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { UpstreamServer } from "../../src/cli/upstream.js";
import { gateway, stopAll, upstream, type TestGateway } from "../helpers/services.js";

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

/** The key-kind table of src/cli/key-kinds.ts is the one docs/redis-keys.md shows, and it classifies keys unambiguously. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { classify, KEY_KINDS, renderKeyTable, withRenderedTable } from "../../src/cli/key-kinds.js";
import { globToRegExp } from "../../src/cli/scan.js";
import { ROOT } from "../helpers/services.js";

describe("key kinds", () => {
  it("docs/redis-keys.md's table is generated from the code (npm run docs:keys)", () => {
    const doc = readFileSync(join(ROOT, "docs", "redis-keys.md"), "utf8");
    expect(withRenderedTable(doc), "docs/redis-keys.md's table differs from src/cli/key-kinds.ts: add new key kinds to KEY_KINDS there (not to the markdown), then run npm run docs:keys").toBe(doc);
    expect(doc).toContain(renderKeyTable());
  });

  it("every kind has a unique name in its plugin and matches only its own sample key", () => {
    const samples: Record<string, string> = {
      "redis-rate-limit/counters": "krs:redis-rate-limit:v1:{p1:ip:10.0.0.1}",
      "redis-key-auth/key": `krs:redis-key-auth:v1:{k}:key:${"a".repeat(64)}`,
      "redis-key-auth/ids": "krs:redis-key-auth:v1:{k}:ids",
      "redis-key-auth/expiring": "krs:redis-key-auth:v1:{k}:expiring",
      "redis-key-auth/invalidations": "krs:redis-key-auth:v1:invalidations",
      "redis-cache/generation": "krs:redis-cache:v1:{ns}:generation",
      "redis-cache/entry": `krs:redis-cache:v1:{2.${"b".repeat(64)}}:entry`,
      "redis-cache/fill": `krs:redis-cache:v1:{2.${"b".repeat(64)}}:fill`,
      "redis-cache/refresh": `krs:redis-cache:v1:{2.${"b".repeat(64)}}:refresh`,
      "redis-ip-access/entries": "krs:redis-ip-access:v1:{blocklist}:entries",
      "redis-ip-access/reasons": "krs:redis-ip-access:v1:{blocklist}:reasons",
      "redis-ip-access/version": "krs:redis-ip-access:v1:{blocklist}:version",
      "redis-ip-access/hits": "krs:redis-ip-access:v1:{blocklist}:hits:203.0.113.7",
      "redis-ip-access/changes": "krs:redis-ip-access:v1:changes",
      "redis-usage/day": "krs:redis-usage:v1:{consumer:#Zm9v}:d:20261130",
      "redis-usage/month": "krs:redis-usage:v1:{route:checkout}:m:202611",
      "redis-usage/quota": "krs:redis-usage:v1:{consumer:alice}:quota",
      "redis-jwt/credentials": "krs:redis-jwt:v1:{c}:credentials",
      "redis-jwt/revoked-token": "krs:redis-jwt:v1:{r}:jti:#Zx3Kp9vQ2mN8bT1cY7wL4sR6dE0",
      "redis-jwt/revoked-subject": "krs:redis-jwt:v1:{r}:sub:user-42",
      "redis-jwt/revoked-consumer": "krs:redis-jwt:v1:{r}:consumer:alice",
      "redis-jwt/invalidations": "krs:redis-jwt:v1:invalidations",
      "redis-metrics/node": "krs:redis-metrics:v1:{cluster}:node:4e3cc955-20bd-4cd1-b4c9-5060f49932fa",
      "redis-metrics/nodes": "krs:redis-metrics:v1:{cluster}:nodes",
      "structured-log/stream": "krs:structured-log:v1:{requests}:stream",
    };
    expect(Object.keys(samples).sort()).toEqual(KEY_KINDS.map((k) => `${k.plugin}/${k.kind}`).sort());
    for (const [id, key] of Object.entries(samples)) {
      const matching = KEY_KINDS.filter((k) => k.match.test(key)).map((k) => `${k.plugin}/${k.kind}`);
      expect(matching, key).toEqual([id]);
    }
    expect(classify("krs:redis-cache:v2:{ns}:generation")).toEqual({ plugin: "redis-cache" });
    expect(classify("app:krs:redis-cache:x")).toBeUndefined();
    expect(classify("krs:redis-key-auth:v1:invalidations")).toEqual({ plugin: "redis-key-auth" });
  });

  it("globs mean what SCAN MATCH means", () => {
    expect(globToRegExp("krs:redis-rate-limit:v1:{p-3:*").test("krs:redis-rate-limit:v1:{p-3:ip:1.2.3.4}")).toBe(true);
    expect(globToRegExp("a?c").test("abc")).toBe(true);
    expect(globToRegExp("a?c").test("ac")).toBe(false);
    expect(globToRegExp("a[bx]c").test("axc")).toBe(true);
    expect(globToRegExp("a[^b]c").test("abc")).toBe(false);
    expect(globToRegExp("a\\*c").test("a*c")).toBe(true);
    expect(globToRegExp("a\\*c").test("abc")).toBe(false);
    expect(globToRegExp("a.c").test("abc")).toBe(false);
  });
});

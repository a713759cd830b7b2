/**
 * redis-cache's encryption keys across nodes (issue 18.3), on real gateways sharing one
 * real Redis, with the same route (same cache keys):
 *
 *   old   encryption_key K1
 *   new   encryption_key K2                       (a node not told about K1)
 *   both  encryption_key K2, decryption_keys [K1]  (mid-rotation)
 *
 *   plain no encryption_key, decryption_keys [K2]  (turning encryption on, step 1)
 *
 * A node that cannot read an entry treats it as a miss and leaves it alone (no delete,
 * no overwrite) while the entry is fresh, so the nodes that can read it keep hitting; the
 * log line that says so is throttled and names no key material; a rotating node reads
 * both generations of entries. Once such an entry's own TTL has passed it is replaced,
 * even when sliding TTL keeps extending it (review finding 1), and while it is fresh a
 * burst of requests to a node with L1 reaches the upstream once.
 */
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { gateway, startRedis, stopAll, type TestGateway } from "../helpers/services.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const K1 = "the first secret, long enough";
const K2 = "the second secret, long enough";

let control: Redis;
let origin: Server;
const hits = new Map<string, number>();
let oldNode: TestGateway;
let newNode: TestGateway;
let bothNode: TestGateway;
let plainNode: TestGateway;
let seq = 0;
const uniq = (label: string) => `${label}-${++seq}-${Date.now()}`;

beforeAll(async () => {
  const redis = await startRedis();
  control = new Redis({ port: redis.port });
  origin = createServer((req, res) => {
    const n = (hits.get(req.url!) ?? 0) + 1;
    hits.set(req.url!, n);
    const body = JSON.stringify({ url: req.url, n });
    const reply = () => {
      res.writeHead(200, { "Content-Type": "application/json", "Content-Length": String(body.length) });
      res.end(body);
    };
    if (req.url!.includes("slow")) setTimeout(reply, 300);
    else reply();
  });
  await new Promise<void>((r) => origin.listen(0, "127.0.0.1", r));
  const config = (keys: Record<string, unknown>) => ({
    _format_version: "3.0",
    services: [
      {
        name: "origin",
        url: `http://127.0.0.1:${(origin.address() as AddressInfo).port}`,
        routes: [
          { name: "rot", paths: ["/rot"], plugins: [{ name: "redis-cache", config: { l1_ttl: 0, redis: { port: redis.port }, ...keys } }] },
          // Refresh-ahead from the first second of two.
          { name: "rotfast", paths: ["/rotfast"], plugins: [{ name: "redis-cache", config: { l1_ttl: 0, cache_ttl: 2, refresh_ahead: 0.5, redis: { port: redis.port }, ...keys } }] },
          { name: "rotslide", paths: ["/rotslide"], plugins: [{ name: "redis-cache", config: { l1_ttl: 0, cache_ttl: 2, sliding_ttl: true, refresh_ahead: 0, redis: { port: redis.port }, ...keys } }] },
          { name: "rotl1", paths: ["/rotl1"], plugins: [{ name: "redis-cache", config: { l1_ttl: 5, cache_ttl: 30, redis: { port: redis.port }, ...keys } }] },
        ],
      },
    ],
  });
  // One after the other: a gateway still starting when another fails would outlive afterAll.
  oldNode = await gateway(config({ encryption_key: K1 }), { workers: 1 });
  newNode = await gateway(config({ encryption_key: K2 }), { workers: 1 });
  bothNode = await gateway(config({ encryption_key: K2, decryption_keys: [K1] }), { workers: 1 });
  plainNode = await gateway(config({ decryption_keys: [K2] }), { workers: 1 });
}, 40_000);

afterAll(async () => {
  control?.disconnect();
  origin?.closeAllConnections();
  origin?.close();
  await stopAll();
});

async function get(gw: TestGateway, path: string): Promise<{ cache: string | null; key: string | null; json: { url: string; n: number } }> {
  const res = await fetch(`${gw.proxyUrl}${path}`);
  return { cache: res.headers.get("x-cache-status"), key: res.headers.get("x-cache-key"), json: (await res.json()) as { url: string; n: number } };
}

async function entryKey(cacheKey: string | null): Promise<string> {
  expect(cacheKey).toMatch(/^[0-9a-f]{64}$/);
  const gen = (await control.get("krs:redis-cache:v1:{ns}:generation")) ?? "0";
  return `krs:redis-cache:v1:{${gen}.${cacheKey}}:entry`;
}

async function stored(cacheKey: string | null): Promise<Buffer> {
  const key = await entryKey(cacheKey);
  for (let i = 0; i < 100; i++) {
    const value = await control.getBuffer(key);
    if (value !== null) return value;
    await sleep(20);
  }
  throw new Error(`entry ${key} was never stored`);
}

const ignoredLines = (gw: TestGateway) => gw.errorLog().filter((l) => l.includes("ignored (treated as a miss)"));

describe("two nodes with different keys on one Redis", () => {
  it("do not delete or overwrite each other's entries: the node that can read an entry keeps hitting it", async () => {
    const path = `/rot/${uniq("thrash")}`;
    const filled = await get(oldNode, path);
    expect(filled.cache).toBe("Miss");
    const value = await stored(filled.key);
    for (let i = 0; i < 5; i++) {
      const other = await get(newNode, path);
      expect(other.cache).toBe("Miss");
      expect(other.key).toBe(filled.key);
    }
    await sleep(200);
    // Still the old node's entry, byte for byte: the other node neither deleted nor replaced it.
    expect(await control.getBuffer(await entryKey(filled.key))).toEqual(value);
    const again = await get(oldNode, path);
    expect(again.cache).toBe("Hit");
    expect(again.json.n).toBe(1);
    expect(hits.get(path.replace("/rot", ""))).toBe(6);
  });

  it("give back the refresh lock of an entry they cannot read, so that a node that can refreshes it", async () => {
    const path = `/rotfast/${uniq("refresh")}`;
    const filled = await get(oldNode, path);
    await stored(filled.key);
    await sleep(1100);
    // Inside the refresh window: the lookup hands the other node the refresh lock.
    expect((await get(newNode, path)).cache).toBe("Miss");
    await sleep(100);
    const refreshed = await get(oldNode, path);
    expect(refreshed.cache).toBe("Refresh");
  });

  it("log that they ignore an entry at most once per 10 s per worker, with no key material", async () => {
    const before = ignoredLines(newNode).length;
    for (let i = 0; i < 20; i++) {
      const path = `/rot/${uniq("log")}`;
      await stored((await get(oldNode, path)).key);
      expect((await get(newNode, path)).cache).toBe("Miss");
    }
    const lines = ignoredLines(newNode);
    expect(lines.length - before).toBeLessThanOrEqual(1);
    expect(lines.length).toBeGreaterThanOrEqual(1);
    expect(lines.some((l) => l.includes("a key this node does not have"))).toBe(true);
    const secrets = [K1, K2].flatMap((k) => {
      const aes = createHash("sha256").update(k).digest();
      return [k, aes.toString("hex"), aes.toString("base64"), aes.toString("latin1")];
    });
    for (const line of [...newNode.errorLog(), ...oldNode.errorLog(), ...bothNode.errorLog()]) {
      for (const s of secrets) expect(line.includes(s)).toBe(false);
    }
  });
});

const sealedBy = (value: Buffer) => /^1\|\d+\|\d+\|K\|([0-9a-f]{8})\|/.exec(value.toString("latin1"))?.[1];

/**
 * The review's repro: cache_ttl 2, sliding_ttl, l1_ttl 0; `filler` stores the entry,
 * then `reader` (which cannot read it) sends one GET every 400 ms for 5 s.
 */
async function readForFiveSeconds(filler: TestGateway, reader: TestGateway, label: string) {
  const path = `/rotslide/${uniq(label)}`;
  const filled = await get(filler, path);
  expect(filled.cache).toBe("Miss");
  const first = await stored(filled.key);
  const statuses: (string | null)[] = [];
  for (let i = 0; i < 13; i++) {
    statuses.push((await get(reader, path)).cache);
    await sleep(400);
  }
  return { statuses, first, key: filled.key, upstream: hits.get(path.replace("/rotslide", "")) ?? 0 };
}

describe("an entry a node cannot read, with sliding_ttl (review finding 1)", () => {
  it("sealed under a key the node lacks: a miss while fresh, then replaced once its own TTL has passed, and hit from then on", async () => {
    const { statuses, first, key, upstream } = await readForFiveSeconds(oldNode, newNode, "slide-key");
    expect(statuses.slice(0, 4)).toEqual(["Miss", "Miss", "Miss", "Miss"]);
    // Fresh for 2 s, then replaced by the first request after that: hits for the rest.
    expect(statuses.slice(-6)).toEqual(Array(6).fill("Hit"));
    // The filler's request, the misses of its first 2 s (about 5), one refill.
    expect(upstream).toBeLessThanOrEqual(8);
    const now = await stored(key);
    expect(now.equals(first)).toBe(false);
    expect(sealedBy(now)).not.toBe(sealedBy(first));
  });

  it("plain, on a node that encrypts: the same", async () => {
    const { statuses, first, key, upstream } = await readForFiveSeconds(plainNode, newNode, "slide-plain");
    expect(first.toString("latin1")).toMatch(/^1\|\d+\|\d+\|E\|/);
    expect(statuses.slice(-6)).toEqual(Array(6).fill("Hit"));
    expect(upstream).toBeLessThanOrEqual(8);
    expect(sealedBy(await stored(key))).toBeDefined();
  });

  it("its Redis TTL is not extended by the node that cannot read it", async () => {
    const path = `/rotslide/${uniq("pttl")}`;
    const filled = await get(oldNode, path);
    await stored(filled.key);
    await sleep(1000);
    expect((await get(newNode, path)).cache).toBe("Miss");
    // Sliding TTL would have restarted it at 2000 ms.
    expect(await control.pttl(await entryKey(filled.key))).toBeLessThanOrEqual(1100);
  });
});

describe("an unexpired entry a node cannot read, with L1", () => {
  it("a burst of concurrent requests reaches the upstream once (the fill lock is taken), and the entry is left as it is", async () => {
    const path = `/rotl1/${uniq("slow-burst")}`;
    const filled = await get(oldNode, path);
    expect(filled.cache).toBe("Miss");
    const value = await stored(filled.key);
    const burst = await Promise.all(Array.from({ length: 8 }, () => get(newNode, path)));
    const statuses = burst.map((r) => r.cache).sort();
    expect(statuses).toEqual(["Hit", "Hit", "Hit", "Hit", "Hit", "Hit", "Hit", "Miss"]);
    expect(new Set(burst.map((r) => r.json.n))).toEqual(new Set([2]));
    expect(hits.get(path.replace("/rotl1", ""))).toBe(2);
    await sleep(200);
    expect((await control.getBuffer(await entryKey(filled.key)))!.equals(value)).toBe(true);
  });
});

describe("turning encryption on: decryption_keys [K2] without encryption_key", () => {
  it("writes plain entries and reads those sealed under K2, as the rotation procedure says", async () => {
    const sealedPath = `/rot/${uniq("on-sealed")}`;
    await stored((await get(newNode, sealedPath)).key);
    const hit = await get(plainNode, sealedPath);
    expect(hit.cache).toBe("Hit");
    expect(hit.json.n).toBe(1);
    const plainPath = `/rot/${uniq("on-plain")}`;
    const filled = await get(plainNode, plainPath);
    expect(filled.cache).toBe("Miss");
    expect((await stored(filled.key)).toString("latin1")).toMatch(/^1\|\d+\|\d+\|E\|/);
    expect((await get(plainNode, plainPath)).cache).toBe("Hit");
  });
});

describe("rotation: encryption_key K2 with decryption_keys [K1]", () => {
  it("reads the entries sealed under K1 and under K2, and seals new ones under K2", async () => {
    const oldPath = `/rot/${uniq("old")}`;
    const byOld = await get(oldNode, oldPath);
    await stored(byOld.key);
    const hit = await get(bothNode, oldPath);
    expect(hit.cache).toBe("Hit");
    expect(hit.json.n).toBe(1);

    const newPath = `/rot/${uniq("new")}`;
    const byBoth = await get(bothNode, newPath);
    expect(byBoth.cache).toBe("Miss");
    const value = (await stored(byBoth.key)).toString("latin1");
    const sealedBy = /^1\|\d+\|\d+\|K\|([0-9a-f]{8})\|/.exec(value)?.[1];
    expect(sealedBy).toBeDefined();
    // A node with K2 alone reads it; one with K1 alone does not (and leaves it).
    expect((await get(newNode, newPath)).cache).toBe("Hit");
    expect((await get(oldNode, newPath)).cache).toBe("Miss");
    expect((await get(bothNode, newPath)).cache).toBe("Hit");
    expect(hits.get(newPath.replace("/rot", ""))).toBe(2);
  });

  it("logs nothing but the throttled lines about entries it ignored", () => {
    for (const gw of [oldNode, newNode, bothNode, plainNode]) {
      expect(gw.unexpectedErrors([/\[redis-cache\] cache entry [0-9a-f]{64} ignored \(treated as a miss\)/])).toEqual([]);
    }
  });
});

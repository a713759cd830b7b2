/**
 * redis-cache's worker cache (L1) on a real 1-worker gateway and Redis: its byte budget
 * (l1_max_bytes: entries past it are not served from L1, so their hits need Redis), and
 * that a configuration change elsewhere (another route) keeps the L1 entries of an
 * instance whose own configuration did not change, while a change of its own drops them.
 *
 * An entry served although its Redis value was deleted can only have come from L1.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { gateway, startRedis, stopAll, type TestGateway } from "../helpers/services.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const BODY = 30_000;
/** Room for three entries of BODY bytes (plus headers and overhead), not four. */
const BUDGET = 100_000;

let control: Redis;
let origin: Server;
let originHits = 0;
let gw: TestGateway;
/** The declarative config: `extraRoutes` and the /keep instance's own settings vary. */
let config: (keep?: Record<string, unknown>, extraRoutes?: object[]) => object;
let seq = 0;
const uniq = (label: string) => `${label}-${++seq}-${Date.now()}`;

beforeAll(async () => {
  const redis = await startRedis();
  control = new Redis({ port: redis.port });
  origin = createServer((req, res) => {
    originHits++;
    const size = Number(new URL(req.url ?? "/", "http://origin").searchParams.get("size") ?? BODY);
    const body = `${req.url}:`.padEnd(size, "x");
    res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": String(body.length) });
    res.end(body);
  });
  await new Promise<void>((r) => origin.listen(0, "127.0.0.1", r));
  const cache = (extra: Record<string, unknown>) => ({ name: "redis-cache", config: { l1_ttl: 60, content_type: ["text/plain"], redis: { port: redis.port }, ...extra } });
  config = (keep = {}, extraRoutes = []) => ({
    _format_version: "3.0",
    services: [
      {
        name: "origin",
        url: `http://127.0.0.1:${(origin.address() as AddressInfo).port}`,
        routes: [
          { name: "budget", paths: ["/budget"], plugins: [cache({ l1_max_bytes: BUDGET })] },
          { name: "keep", paths: ["/keep"], plugins: [cache(keep)] },
          ...extraRoutes,
        ],
      },
    ],
  });
  gw = await gateway(config(), { workers: 1 });
}, 30_000);

afterAll(async () => {
  control?.disconnect();
  origin?.closeAllConnections();
  origin?.close();
  await stopAll();
});

async function get(path: string): Promise<{ status: number; cache: string | null; key: string | null; text: string }> {
  const res = await fetch(`${gw.proxyUrl}${path}`);
  const text = await res.text();
  return { status: res.status, cache: res.headers.get("x-cache-status"), key: res.headers.get("x-cache-key"), text };
}

async function entryKey(cacheKey: string): Promise<string> {
  const gen = (await control.get("krs:redis-cache:v1:{ns}:generation")) ?? "0";
  return `krs:redis-cache:v1:{${gen}.${cacheKey}}:entry`;
}

/** Waits for the entry's store, then deletes it from Redis: only L1 can serve it now. */
async function onlyInL1(cacheKey: string | null): Promise<void> {
  expect(cacheKey).toMatch(/^[0-9a-f]{64}$/);
  const key = await entryKey(cacheKey!);
  for (let i = 0; i < 100 && (await control.exists(key)) === 0; i++) await sleep(20);
  expect(await control.del(key)).toBe(1);
}

/** DB-less Kong's way to change the configuration (the local gateway's too). */
async function postConfig(body: object): Promise<number> {
  const res = await fetch(`${gw.adminUrl}/config`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  await res.text();
  return res.status;
}

describe("l1_max_bytes", () => {
  it("keeps only what fits in the worker's budget: older entries are asked of Redis again", async () => {
    const id = uniq("budget");
    const paths = Array.from({ length: 6 }, (_, i) => `/budget/${id}/${i}`);
    for (const p of paths) {
      const miss = await get(p);
      expect(miss.cache).toBe("Miss");
      expect(miss.text.length).toBe(BODY);
      await onlyInL1(miss.key);
    }
    const before = originHits;
    // Newest first, so that refilling an evicted one cannot push out a newer one first.
    const statuses: (string | null)[] = [];
    for (const p of [...paths].reverse()) {
      const r = await get(p);
      expect(r.text.startsWith(`/${id}/`)).toBe(true);
      statuses.push(r.cache);
    }
    // The three newest are served from L1 (their Redis values are gone); the older ones
    // no longer are, so they miss (Redis has nothing either) and reach the upstream.
    expect(statuses).toEqual(["Hit", "Hit", "Hit", "Miss", "Miss", "Miss"]);
    expect(originHits - before).toBe(3);
  });

  it("never keeps an entry larger than the whole budget", async () => {
    const p = `/budget/${uniq("alone")}?size=${BUDGET + 1}`;
    const miss = await get(p);
    expect(miss.cache).toBe("Miss");
    await onlyInL1(miss.key);
    expect((await get(p)).cache).toBe("Miss");
  });
});

describe("configure", () => {
  it("keeps the L1 entries of an unchanged instance when other entities change; drops them when its own config changes", async () => {
    const p = `/keep/${uniq("keep")}`;
    const miss = await get(p);
    expect(miss.cache).toBe("Miss");
    await onlyInL1(miss.key);
    expect((await get(p)).cache).toBe("Hit");

    // Another route appears: every plugin's config table is rebuilt, this one's values are not changed.
    const other = { name: "other", paths: ["/other"] };
    expect(await postConfig(config({}, [other]))).toBe(201);
    expect((await get("/other/x")).status).toBe(200);
    const kept = await get(p);
    expect(kept.cache).toBe("Hit");
    expect(kept.text).toBe(miss.text);

    // Its own config changes: its L1 goes (Redis has nothing, so a miss).
    expect(await postConfig(config({ cache_ttl: 301 }, [other]))).toBe(201);
    expect((await get(p)).cache).toBe("Miss");
  });

  it("logs no error", () => {
    expect(gw.unexpectedErrors()).toEqual([]);
  });
});

/**
 * `krs cache purge [KEY] [--redis URL]` against a real gateway and Redis: it removes the
 * entry a response named in X-Cache-Key, or every entry (a new generation), with the
 * Admin API's scripts; bad keys and an unreachable Redis are reported.
 */
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runKrs } from "../helpers/krs-main.js";
import { freePort, gateway, startRedis, stopAll, upstream, type RedisServer, type TestGateway } from "../helpers/services.js";

let redis: RedisServer;
let control: Redis;
let gw: TestGateway;
let url: string;
let seq = 0;

beforeAll(async () => {
  redis = await startRedis();
  control = new Redis({ port: redis.port });
  url = `redis://127.0.0.1:${redis.port}`;
  const up = await upstream();
  gw = await gateway({
    _format_version: "3.0",
    services: [
      {
        name: "demo",
        url: `http://127.0.0.1:${up.port}`,
        routes: [{ name: "c", paths: ["/c"], plugins: [{ name: "redis-cache", config: { l1_ttl: 0, redis: { port: redis.port } } }] }],
      },
    ],
  });
});

afterAll(async () => {
  control?.disconnect();
  await stopAll();
});

async function cachedKey(): Promise<{ path: string; key: string }> {
  const path = `/c/anything/cli-${++seq}`;
  const res = await fetch(`${gw.proxyUrl}${path}`);
  await res.text();
  expect(res.headers.get("x-cache-status")).toBe("Miss");
  const key = res.headers.get("x-cache-key")!;
  const gen = (await control.get("krs:redis-cache:v1:{ns}:generation")) ?? "0";
  for (let i = 0; i < 100 && (await control.exists(`krs:redis-cache:v1:{${gen}.${key}}:entry`)) === 0; i++) await new Promise((r) => setTimeout(r, 20));
  const again = await fetch(`${gw.proxyUrl}${path}`);
  await again.text();
  expect(again.headers.get("x-cache-status")).toBe("Hit");
  return { path, key };
}

async function status(path: string): Promise<string | null> {
  const res = await fetch(`${gw.proxyUrl}${path}`);
  await res.text();
  return res.headers.get("x-cache-status");
}

const run = runKrs;

describe("krs cache purge", () => {
  it("KEY removes that entry only; a second purge finds nothing", async () => {
    const a = await cachedKey();
    const b = await cachedKey();
    const r = await run("cache", "purge", a.key, "--redis", url);
    expect(r).toMatchObject({ code: 0, out: `purged ${a.key}` });
    expect(await status(a.path)).toBe("Miss");
    expect(await status(b.path)).toBe("Hit");
    await new Promise((res) => setTimeout(res, 100));
    expect((await run("cache", "purge", a.key.toUpperCase(), `--redis=${url}`)).code).toBe(0);
    const again = await run("cache", "purge", a.key, "--redis", url);
    expect(again.code).toBe(1);
    expect(again.err).toBe(`krs cache purge: no entry for ${a.key} in ${url}`);
  });

  it("without KEY drops every entry (a new generation)", async () => {
    const a = await cachedKey();
    const b = await cachedKey();
    const before = Number((await control.get("krs:redis-cache:v1:{ns}:generation")) ?? "0");
    const r = await run("cache", "purge", "--redis", url);
    expect(r.code).toBe(0);
    expect(r.out).toBe(`purged every redis-cache entry in ${url} (now generation ${before + 1})`);
    expect(await status(a.path)).toBe("Miss");
    expect(await status(b.path)).toBe("Miss");
  });

  it("rejects what cannot be a cache key, and reports an unreachable Redis", async () => {
    const bad = await run("cache", "purge", "abc", "--redis", url);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/KEY must be a cache key/);
    expect((await run("cache", "frobnicate")).code).toBe(2);
    const dead = `redis://127.0.0.1:${await freePort()}`;
    const down = await run("cache", "purge", "--redis", dead);
    expect(down.code).toBe(1);
    expect(down.err).toMatch(new RegExp(`^krs cache purge: could not connect to redis at ${dead}: .*ECONNREFUSED`));
    // A password in the URL never reaches the message.
    const withPassword = await run("cache", "purge", "--redis", dead.replace("redis://", "redis://u:hunter2@"));
    expect(withPassword.err).not.toContain("hunter2");
  });

  it("leaves no error in the gateway's log", () => {
    expect(gw.unexpectedErrors()).toEqual([]);
  });
});

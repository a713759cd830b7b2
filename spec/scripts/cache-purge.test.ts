/**
 * redis-lua/cache-purge-3.lua and cache-flush-1.lua against a real redis-server: one
 * entry removed with its locks; every entry dropped by a generation that only grows.
 */
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineScripts } from "../../src/cli/redis.js";
import { startRedis, stopAll } from "../helpers/services.js";

const GENERATION = "krs:redis-cache:v1:{ns}:generation";

interface Scripts {
  cachePurge(a: string, b: string, c: string): Promise<number>;
  cacheFlush(k: string): Promise<number>;
}

let redis: Redis & Scripts;

beforeAll(async () => {
  const r = new Redis({ port: (await startRedis()).port });
  defineScripts(r, { cachePurge: "cache-purge" });
  defineScripts(r, { cacheFlush: "cache-flush" });
  redis = r as Redis & Scripts;
});
afterAll(async () => {
  redis.disconnect();
  await stopAll();
});

describe("cache-purge", () => {
  const keys = (tag: string) => [`krs:redis-cache:v1:{0.${tag}}:entry`, `krs:redis-cache:v1:{0.${tag}}:fill`, `krs:redis-cache:v1:{0.${tag}}:refresh`] as const;

  it("removes the entry and both locks; 1 when the entry existed", async () => {
    const [e, f, r] = keys("p1");
    await redis.set(e, "1|1000|0|E|200\n\n", "PX", 10_000);
    await redis.set(f, "!", "PX", 10_000);
    await redis.set(r, "tok", "PX", 10_000);
    const other = keys("p2")[0];
    await redis.set(other, "x", "PX", 10_000);
    expect(await redis.cachePurge(e, f, r)).toBe(1);
    expect(await redis.exists(e, f, r)).toBe(0);
    expect(await redis.exists(other)).toBe(1);
  });

  it("0 when there was no entry (locks still go)", async () => {
    const [e, f, r] = keys("p3");
    await redis.set(f, "tok", "PX", 10_000);
    expect(await redis.cachePurge(e, f, r)).toBe(0);
    expect(await redis.exists(f)).toBe(0);
  });
});

describe("cache-flush", () => {
  it("moves to the next generation, starting from 0, and the counter never expires", async () => {
    expect(await redis.get(GENERATION)).toBeNull();
    expect(await redis.cacheFlush(GENERATION)).toBe(1);
    expect(await redis.cacheFlush(GENERATION)).toBe(2);
    expect(await redis.get(GENERATION)).toBe("2");
    expect(await redis.pttl(GENERATION)).toBe(-1);
  });
});

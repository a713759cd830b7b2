/**
 * redis-lua/cache-release-1.lua against a real redis-server: only the holder's token
 * releases a lock; the release deletes it or leaves the "uncacheable" marker for a while.
 */
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineScripts } from "../../src/cli/redis.js";
import { startRedis, stopAll } from "../helpers/services.js";


let redis: Redis;
let seq = 0;
const lockKey = () => `krs:redis-cache:v1:{0.rel${++seq}}:fill`;
const release = (key: string, token: string, markerMs: number) =>
  (redis as unknown as { cacheRelease(k: string, t: string, m: number): Promise<number> }).cacheRelease(key, token, markerMs);

beforeAll(async () => {
  redis = new Redis({ port: (await startRedis()).port });
  defineScripts(redis, { cacheRelease: "cache-release" });
});
afterAll(async () => {
  redis.disconnect();
  await stopAll();
});

describe("cache-release", () => {
  it("the holder deletes its lock", async () => {
    const key = lockKey();
    await redis.set(key, "mine", "PX", 3000);
    expect(await release(key, "mine", 0)).toBe(1);
    expect(await redis.exists(key)).toBe(0);
  });

  it("the holder leaves the uncacheable marker for the given time", async () => {
    const key = lockKey();
    await redis.set(key, "mine", "PX", 3000);
    expect(await release(key, "mine", 1200)).toBe(1);
    expect(await redis.get(key)).toBe("!");
    const pttl = await redis.pttl(key);
    expect(pttl).toBeGreaterThan(1000);
    expect(pttl).toBeLessThanOrEqual(1200);
  });

  it("anyone else changes nothing (a lock taken over after expiry stays with its new holder)", async () => {
    const key = lockKey();
    await redis.set(key, "theirs", "PX", 3000);
    expect(await release(key, "mine", 0)).toBe(0);
    expect(await release(key, "mine", 500)).toBe(0);
    expect(await redis.get(key)).toBe("theirs");
    expect(await release(lockKey(), "mine", 0)).toBe(0);
  });
});

/**
 * redis-usage's scripts on a real Redis, through the same redis-lua/ files the plugin
 * embeds: a retried flush is applied once (same writer and number), an older number after
 * a newer one changes nothing, other writers are independent, the TTL is the one given;
 * the exact quota script admits exactly the quota and counts nothing it rejects.
 */
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineScripts } from "../../src/cli/redis.js";
import { startRedis, stopAll } from "../helpers/services.js";

interface UsageScripts {
  usageFlush(...keysAndArgs: (string | number)[]): Promise<number[]>;
  usageQuota(...keysAndArgs: (string | number)[]): Promise<number[]>;
}

let redis: Redis & UsageScripts;
const K = "krs:redis-usage:v1:{consumer:s}:d:20261130";
const Q = "krs:redis-usage:v1:{consumer:s}:quota";
const expireAt = Date.now() + 3_600_000;

beforeAll(async () => {
  const server = await startRedis();
  redis = defineScripts<UsageScripts>(new Redis({ port: server.port }), { usageFlush: "usage-flush", usageQuota: "usage-quota" });
});

afterAll(async () => {
  redis?.disconnect();
  await stopAll();
});

const flush = (key: string, writer: string, seq: number, fields: [string, number][], subject = "") =>
  redis.usageFlush(key, Q, writer, seq, expireAt, subject, fields.length, ...fields.flat());

describe("usage-flush", () => {
  it("applies a flush once: the same writer and number again (a retry after a lost reply) changes nothing", async () => {
    expect(await flush(K, "w1", 1, [["requests", 3], ["quota_requests", 3]])).toEqual([1, 3, 0, -1, -1]);
    expect(await flush(K, "w1", 1, [["requests", 3], ["quota_requests", 3]])).toEqual([0, 3, 0, -1, -1]);
    expect(await redis.hget(K, "requests")).toBe("3");
  });

  it("an older number after a newer one is skipped; a newer one applies", async () => {
    await flush(K, "w1", 5, [["requests", 1]]);
    expect((await flush(K, "w1", 4, [["requests", 100]]))[0]).toBe(0);
    expect((await flush(K, "w1", 6, [["requests", 1]]))[0]).toBe(1);
    expect(await redis.hget(K, "requests")).toBe("5");
  });

  it("writers are independent, the hash gets the TTL given, the subject's name when one is sent", async () => {
    expect((await flush(K, "w2", 1, [["requests", 10]], "a{b}:c"))[0]).toBe(1);
    expect(await redis.hget(K, "requests")).toBe("15");
    expect(await redis.hget(K, "subject")).toBe("a{b}:c");
    expect(Math.abs((await redis.pexpiretime(K)) - expireAt)).toBeLessThanOrEqual(1);
  });

  it("returns the subject's overrides", async () => {
    await redis.hset(Q, "day", 7, "month", 70);
    expect((await flush(K, "w3", 1, [["requests", 1]])).slice(3)).toEqual([7, 70]);
    await redis.del(Q);
  });
});

describe("usage-quota", () => {
  const day = "krs:redis-usage:v1:{consumer:q}:d:20261130";
  const month = "krs:redis-usage:v1:{consumer:q}:m:202611";
  const quotaKey = "krs:redis-usage:v1:{consumer:q}:quota";
  const decide = (dayLimit: number, monthLimit: number, unit = "requests", need = 1, costNow = 1) =>
    redis.usageQuota(quotaKey, day, month, unit, need, costNow, dayLimit, monthLimit, expireAt, expireAt);

  it("admits exactly the quota, then rejects without counting", async () => {
    const replies = [];
    for (let i = 0; i < 5; i++) replies.push(await decide(3, -1));
    expect(replies.map((r) => r[0])).toEqual([1, 1, 1, 0, 0]);
    expect(replies.map((r) => r[2])).toEqual([2, 1, 0, 0, 0]);
    expect(await redis.hget(day, "quota_requests")).toBe("3");
    expect(await redis.hget(month, "quota_requests")).toBe("3");
  });

  it("an override wins over the configured quota", async () => {
    await redis.hset(quotaKey, "day", 4);
    const r = await decide(3, 100);
    expect(r).toEqual([1, 4, 0, 100, 96]);
    expect((await decide(3, 100))[0]).toBe(0);
    await redis.del(quotaKey);
  });

  it("counts cost when the unit is cost", async () => {
    await redis.del(day, month);
    expect(await decide(-1, 10, "cost", 6, 6)).toEqual([1, -1, -1, 10, 4]);
    expect((await decide(-1, 10, "cost", 6, 6))[0]).toBe(0);
    expect(await redis.hget(month, "quota_cost")).toBe("6");
  });
});

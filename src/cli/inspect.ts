/**
 * `krs inspect`: what the suite keeps in a Redis, per plugin and key kind (the table in
 * key-kinds.ts): key count, memory (MEMORY USAGE on a uniform sample, extrapolated with
 * a 99.99% interval), TTL distribution, and the keys without a TTL the table says must have
 * one. Walks with SCAN in batches; Ctrl-C prints what it has.
 */
import type { Command } from "commander";
import { Option } from "commander";
import type { Cluster, Redis } from "ioredis";
import { classify, KEY_KINDS, knownPlugins, type KeyKind } from "./key-kinds.js";
import { failureLine, jsonOption, positiveInt, wholeNumber, UsageError, type Register } from "./command.js";
import { describeTarget, openRedis, redisTargetFrom, redisTargetOptions, type RedisTargetFlags } from "./redis.js";
import { scanAll, totalDbsize } from "./scan.js";
import { paint, progress } from "./ui.js";

/** z for a two-sided 99.99% interval: a 95% one would be wrong one inspect in twenty. */
const Z = 3.89;

export const TTL_BUCKETS = ["none", "<1m", "<1h", "<1d", ">=1d"] as const;
type Bucket = (typeof TTL_BUCKETS)[number];

export function ttlBucket(pttl: number): Bucket {
  if (pttl < 0) return "none";
  if (pttl < 60_000) return "<1m";
  if (pttl < 3_600_000) return "<1h";
  if (pttl < 86_400_000) return "<1d";
  return ">=1d";
}

/** Mean × count with a 99.99% interval (normal approximation, finite-population corrected) from a uniform sample of `values` out of `population`. */
export function extrapolate(values: number[], population: number): { bytes: number; error: number } {
  const n = values.length;
  if (n === 0) return { bytes: 0, error: 0 };
  const mean = values.reduce((a, b) => a + b, 0) / n;
  if (n >= population) return { bytes: Math.round(mean * n), error: 0 };
  const variance = n > 1 ? values.reduce((a, v) => a + (v - mean) ** 2, 0) / (n - 1) : mean * mean;
  const finite = Math.sqrt((population - n) / Math.max(1, population - 1));
  return { bytes: Math.round(mean * population), error: Math.round(Z * Math.sqrt(variance / n) * finite * population) };
}

class KindStats {
  count = 0;
  ttl: Record<Bucket, number> = { none: 0, "<1m": 0, "<1h": 0, "<1d": 0, ">=1d": 0 };
  missingTtl = 0;
  missingTtlExamples: string[] = [];
  /** With the node each key is on: MEMORY USAGE goes there. */
  sample: { key: string; node: Redis }[] = [];
  constructor(readonly plugin: string, readonly kind: KeyKind | undefined) {}

  add(key: string, node: Redis, pttl: number, sampleSize: number): void {
    this.count++;
    const bucket = ttlBucket(pttl);
    this.ttl[bucket]++;
    if (bucket === "none" && (this.kind === undefined || this.kind.ttlRule === "required")) {
      this.missingTtl++;
      if (this.missingTtlExamples.length < 3) this.missingTtlExamples.push(key);
    }
    // Reservoir sampling (Algorithm R): every key of the kind equally likely to be sampled.
    if (this.sample.length < sampleSize) this.sample.push({ key, node });
    else {
      const j = Math.floor(Math.random() * this.count);
      if (j < sampleSize) this.sample[j] = { key, node };
    }
  }
}

export interface InspectOptions {
  plugin?: string;
  batch: number;
  sample: number;
  maxOpsPerSec: number;
}

export interface KindReport {
  plugin: string;
  kind: string;
  count: number;
  ttl: Record<Bucket, number>;
  /** Keys without a TTL of a kind that must have one (or of no known kind). */
  missingTtl: number;
  missingTtlExamples: string[];
  memory: { bytes: number; error: number; sampled: number };
}

export interface InspectReport {
  redis: string;
  dbsize: number;
  scanned: number;
  complete: boolean;
  /** Keys that are not the suite's (only counted when no --plugin). */
  otherKeys: number;
  kinds: KindReport[];
}

export async function inspect(redis: Redis | Cluster, where: string, opts: InspectOptions, onProgress?: (scanned: number, total: number) => void): Promise<InspectReport> {
  const dbsize = await totalDbsize(redis);
  const stats = new Map<string, KindStats>();
  for (const k of KEY_KINDS) if (!k.channel && (opts.plugin === undefined || k.plugin === opts.plugin)) stats.set(`${k.plugin}\0${k.kind}`, new KindStats(k.plugin, k));
  let otherKeys = 0;
  const result = await scanAll(redis, {
    batch: opts.batch,
    maxOpsPerSec: opts.maxOpsPerSec,
    onProgress: (scanned) => onProgress?.(scanned, dbsize),
    onBatch: async (keys, node) => {
      const mine = keys.map((key) => ({ key, c: classify(key) })).filter(({ c }) => c !== undefined && (opts.plugin === undefined || c.plugin === opts.plugin));
      if (opts.plugin === undefined) otherKeys += keys.length - mine.length;
      if (mine.length === 0) return 0;
      const pipeline = node.pipeline();
      for (const { key } of mine) pipeline.pttl(key);
      const replies = (await pipeline.exec()) ?? [];
      mine.forEach(({ key, c }, i) => {
        const pttl = Number(replies[i]?.[1] ?? -2);
        if (pttl === -2) return; // gone between SCAN and PTTL
        const id = `${c!.plugin}\0${c!.kind?.kind ?? "(unknown)"}`;
        let s = stats.get(id);
        if (s === undefined) stats.set(id, (s = new KindStats(c!.plugin, c!.kind)));
        s.add(key, node, pttl, opts.sample);
      });
      return mine.length;
    },
  });
  const kinds: KindReport[] = [];
  for (const s of stats.values()) {
    const sizes: number[] = [];
    for (const node of new Set(s.sample.map((e) => e.node))) {
      const pipeline = node.pipeline();
      for (const e of s.sample) if (e.node === node) pipeline.memory("USAGE", e.key);
      for (const [, v] of (await pipeline.exec()) ?? []) if (typeof v === "number") sizes.push(v);
    }
    kinds.push({
      plugin: s.plugin,
      kind: s.kind?.kind ?? "(unknown)",
      count: s.count,
      ttl: s.ttl,
      missingTtl: s.missingTtl,
      missingTtlExamples: s.missingTtlExamples,
      memory: { ...extrapolate(sizes, s.count), sampled: sizes.length },
    });
  }
  return { redis: where, dbsize, scanned: result.scanned, complete: result.complete, otherKeys, kinds };
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function formatInspect(r: InspectReport): string {
  const lines = [
    `${r.redis}: ${r.dbsize} keys (DBSIZE), ${r.scanned} scanned${r.complete ? "" : paint("yellow", " - interrupted, partial counts")}`,
  ];
  const header = ["plugin", "kind", "keys", "memory (±99.99%)", "sample", ...TTL_BUCKETS.map((b) => `ttl ${b}`), "no TTL, must have"];
  const rows = r.kinds.map((k) => [
    k.plugin,
    k.kind,
    String(k.count),
    // "~": extrapolated from a sample (all of whose keys had one size when no ± follows).
    `${k.memory.sampled < k.count ? "~" : ""}${bytes(k.memory.bytes)}${k.memory.error > 0 ? ` ± ${bytes(k.memory.error)}` : ""}`,
    `${k.memory.sampled}/${k.count}`,
    ...TTL_BUCKETS.map((b) => String(k.ttl[b])),
    k.missingTtl > 0 ? paint("red", `${k.missingTtl} FLAGGED`) : "0",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].replace(/\x1b\[[0-9;]*m/g, "").length)));
  const pad = (cells: string[]) => cells.map((c, i) => c + " ".repeat(widths[i] - c.replace(/\x1b\[[0-9;]*m/g, "").length)).join("  ").trimEnd();
  lines.push(pad(header), ...rows.map(pad));
  if (r.otherKeys > 0) lines.push(`${r.otherKeys} other keys (not the suite's)`);
  for (const k of r.kinds) {
    if (k.missingTtl === 0) continue;
    const why = k.kind === "(unknown)" ? "of no kind in the table in docs/redis-keys.md" : "the table in docs/redis-keys.md says they must have one";
    lines.push(paint("red", `flagged: ${k.missingTtl} ${k.plugin} ${k.kind} keys without a TTL (${why}), e.g. ${k.missingTtlExamples.join(", ")}`));
  }
  return lines.join("\n");
}

export const registerInspect: Register = (program: Command, run) => {
  const command = program
    .command("inspect")
    .description("what the suite keeps in Redis: per plugin and key kind, count, memory, TTLs, keys missing a TTL (SCAN in batches)")
    .addOption(new Option("--plugin <name>", `only this plugin's keys (${knownPlugins().join(", ")})`))
    .addOption(new Option("--batch <n>", "SCAN COUNT per batch").default(1000).argParser(positiveInt("--batch", 100_000)))
    .addOption(new Option("--sample <n>", "keys per kind sampled for MEMORY USAGE").default(200).argParser(positiveInt("--sample", 100_000)))
    .addOption(new Option("--max-ops-per-sec <n>", "at most this many keys a second: each SCAN counts as its --batch keys examined, each key whose TTL is read as one more (0 = no limit)").default(5000).argParser(wholeNumber("--max-ops-per-sec")))
    .addOption(jsonOption());
  for (const o of redisTargetOptions()) command.addOption(o);
  command.action(
      run("inspect", async (opts: RedisTargetFlags & { plugin?: string; batch: number; sample: number; maxOpsPerSec: number; json?: boolean }) => {
        if (opts.plugin !== undefined && !knownPlugins().includes(opts.plugin)) throw new UsageError(`--plugin: unknown plugin '${opts.plugin}' (known: ${knownPlugins().join(", ")})`);
        const target = redisTargetFrom(opts);
        const redis = await openRedis(target);
        const bar = progress("inspect");
        try {
          const report = await inspect(redis, describeTarget(target), opts, (s, t) => bar.update(s, t));
          bar.stop();
          console.log(opts.json ? JSON.stringify(report, null, 2) : formatInspect(report));
          return report.complete ? 0 : 130;
        } catch (e) {
          bar.stop();
          console.error(failureLine("inspect", e));
          return 1;
        } finally {
          redis.disconnect();
        }
      }),
    );
};

/**
 * `krs purge --plugin P`: removes one plugin's keys (or one kind of them, or those matching
 * a glob) with SCAN + UNLINK in batches, paced so a production Redis keeps serving.
 * Refuses to run without --plugin: nothing removes every plugin's keys by accident.
 */
import type { Command } from "commander";
import { Option } from "commander";
import type { Cluster, Redis } from "ioredis";
import { classify, keyKindsOf, knownPlugins, pluginPrefix } from "./key-kinds.js";
import { failureLine, jsonOption, positiveInt, wholeNumber, UsageError, type Register } from "./command.js";
import { describeTarget, openRedis, redisTargetFrom, redisTargetOptions, type RedisTargetFlags } from "./redis.js";
import { globToRegExp, Pacer, scanAll, totalDbsize } from "./scan.js";
import { progress } from "./ui.js";

export interface PurgeOptions {
  plugin: string;
  kind?: string;
  match?: string;
  dryRun: boolean;
  batch: number;
  maxOpsPerSec: number;
}

export interface PurgeReport {
  redis: string;
  plugin: string;
  dryRun: boolean;
  complete: boolean;
  /** Keys under the plugin's prefix that SCAN MATCH returned. */
  scanned: number;
  /** Keys removed (or, in a dry run, that would be), per kind (`(unknown)`: under the plugin's prefix, of no kind in the table). */
  removed: Record<string, number>;
  total: number;
}

/** A key to remove, with the node SCAN found it on (a cluster master, or the one server). */
interface Doomed {
  key: string;
  kind: string;
  node: Redis;
}

export async function purge(redis: Redis | Cluster, where: string, opts: PurgeOptions, onProgress?: (scanned: number, total: number) => void): Promise<PurgeReport> {
  const dbsize = await totalDbsize(redis);
  const glob = opts.match === undefined ? undefined : globToRegExp(opts.match);
  const removed: Record<string, number> = {};
  const deferred: Doomed[] = [];
  /** One node's keys: one key per EXISTS/UNLINK, so no call spans slots (no CROSSSLOT on a cluster). */
  const unlinkOn = async (node: Redis, batch: Doomed[]): Promise<void> => {
    const pipeline = node.pipeline();
    // A dry run counts only what still exists, as UNLINK would; UNLINK's reply says whether that key was still there.
    for (const { key } of batch) opts.dryRun ? pipeline.exists(key) : pipeline.unlink(key);
    const replies = (await pipeline.exec()) ?? [];
    batch.forEach(({ kind }, i) => {
      const [err, n] = replies[i] ?? [];
      if (err) throw err;
      removed[kind] = (removed[kind] ?? 0) + Number(n);
    });
  };
  const unlink = async (batch: Doomed[]): Promise<number> => {
    for (const node of new Set(batch.map((d) => d.node))) await unlinkOn(node, batch.filter((d) => d.node === node));
    return batch.length;
  };
  const result = await scanAll(redis, {
    batch: opts.batch,
    maxOpsPerSec: opts.maxOpsPerSec,
    match: `${globEscape(pluginPrefix(opts.plugin))}*`,
    onProgress: (examined) => onProgress?.(Math.min(examined, dbsize), dbsize),
    onBatch: async (keys, node) => {
      const now: Doomed[] = [];
      for (const key of keys) {
        const c = classify(key);
        if (c === undefined || c.plugin !== opts.plugin) continue;
        if (opts.kind !== undefined && c.kind?.kind !== opts.kind) continue;
        if (glob !== undefined && !glob.test(key)) continue;
        const entry = { key, kind: c.kind?.kind ?? "(unknown)", node };
        if (c.kind?.purgeLast && opts.kind === undefined) deferred.push(entry);
        else now.push(entry);
      }
      return unlink(now);
    },
  });
  // Only once everything else is gone (and only after a complete walk): see KeyKind.purgeLast.
  if (result.complete) await new Pacer(opts.maxOpsPerSec).spend(await unlink(deferred));
  const total = Object.values(removed).reduce((a, b) => a + b, 0);
  return { redis: where, plugin: opts.plugin, dryRun: opts.dryRun, complete: result.complete, scanned: result.scanned, removed, total };
}

/** A literal as a Redis glob. */
function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, "\\$&");
}

export function formatPurge(r: PurgeReport): string {
  const order = [...keyKindsOf(r.plugin).map((k) => k.kind), "(unknown)"];
  const perKind = Object.entries(r.removed)
    .sort(([a], [b]) => order.indexOf(a) - order.indexOf(b))
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${k} ${n}`)
    .join(", ");
  const verb = r.dryRun ? "dry run: would remove" : "removed";
  return `${verb} ${r.total} ${r.plugin} keys from ${r.redis}${perKind ? ` (${perKind})` : ""}${r.complete ? "" : "; interrupted before the end, run again to finish"}`;
}

export const registerPurge: Register = (program: Command, run) => {
  const command = program
    .command("purge")
    .description("remove one plugin's keys (SCAN + UNLINK in batches, rate-limited); --plugin is required")
    .addOption(new Option("--plugin <name>", `whose keys (${knownPlugins().join(", ")}); required`))
    .addOption(new Option("--kind <kind>", "only this key kind of the plugin (docs/redis-keys.md)"))
    .addOption(new Option("--match <glob>", "only keys whose name matches this Redis glob as well"))
    .addOption(new Option("--dry-run", "count what would be removed, remove nothing"))
    .addOption(new Option("--batch <n>", "SCAN COUNT per batch, and keys per UNLINK pipeline").default(500).argParser(positiveInt("--batch", 100_000)))
    .addOption(new Option("--max-ops-per-sec <n>", "at most this many keys a second: each SCAN counts as its --batch keys examined, each key unlinked as one more (0 = no limit)").default(5000).argParser(wholeNumber("--max-ops-per-sec")))
    .addOption(jsonOption());
  for (const o of redisTargetOptions()) command.addOption(o);
  command.action(
      run("purge", async (opts: RedisTargetFlags & { plugin?: string; kind?: string; match?: string; dryRun?: boolean; batch: number; maxOpsPerSec: number; json?: boolean }) => {
        if (opts.plugin === undefined) throw new UsageError(`purge needs --plugin (one of ${knownPlugins().join(", ")}); it never removes every plugin's keys`);
        if (!knownPlugins().includes(opts.plugin)) throw new UsageError(`--plugin: unknown plugin '${opts.plugin}' (known: ${knownPlugins().join(", ")})`);
        const kinds = keyKindsOf(opts.plugin).map((k) => k.kind);
        if (opts.kind !== undefined && !kinds.includes(opts.kind)) throw new UsageError(`--kind: ${opts.plugin} has no key kind '${opts.kind}' (kinds: ${kinds.join(", ")})`);
        const target = redisTargetFrom(opts);
        const redis = await openRedis(target);
        const bar = progress(opts.dryRun ? "purge (dry run)" : "purge");
        try {
          const report = await purge(redis, describeTarget(target), { ...opts, plugin: opts.plugin, dryRun: opts.dryRun === true }, (s, t) => bar.update(s, t));
          bar.stop();
          console.log(opts.json ? JSON.stringify(report, null, 2) : formatPurge(report));
          return report.complete ? 0 : 130;
        } catch (e) {
          bar.stop();
          console.error(failureLine("purge", e));
          return 1;
        } finally {
          redis.disconnect();
        }
      }),
    );
};

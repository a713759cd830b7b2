/**
 * The one way the operations commands walk Redis: SCAN with COUNT in batches (never
 * KEYS), paced to at most `maxOpsPerSec` keys a second (scanned and followed up), stopped
 * cleanly by Ctrl-C after the batch in flight.
 */
import type { Redis } from "ioredis";

export interface ScanOptions {
  /** SCAN's COUNT hint, and the size of each follow-up batch. */
  batch: number;
  /** 0 = unpaced. Keys a second: each SCAN counts as the `batch` keys it examines, each key of a batch's follow-up commands as one more. */
  maxOpsPerSec: number;
  /** SCAN MATCH glob, so Redis filters out other applications' key names before they travel. */
  match?: string;
  /** Called once per batch with the keys SCAN returned; returns how many keys it sent commands for. */
  onBatch(keys: string[]): Promise<number>;
  /** With the keys examined so far (about COUNT per SCAN: with MATCH, more than returned). */
  onProgress?(examined: number): void;
}

export interface ScanResult {
  /** Keys SCAN returned (with MATCH, the matching ones only). */
  scanned: number;
  /** false when Ctrl-C stopped the walk before the cursor came back to 0. */
  complete: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Sleeps just long enough that `ops` since `started` stay within `perSec`. */
export class Pacer {
  private ops = 0;
  private readonly started = Date.now();
  constructor(private readonly perSec: number) {}
  async spend(ops: number): Promise<void> {
    this.ops += ops;
    if (this.perSec <= 0) return;
    const due = this.started + (this.ops / this.perSec) * 1000;
    const wait = due - Date.now();
    if (wait > 0) await sleep(wait);
  }
}

export async function scanAll(redis: Redis, opts: ScanOptions): Promise<ScanResult> {
  let interrupted = false;
  const onSigint = () => {
    interrupted = true;
  };
  process.on("SIGINT", onSigint);
  const pacer = new Pacer(opts.maxOpsPerSec);
  let cursor = "0";
  let scanned = 0;
  let examined = 0;
  try {
    do {
      const [next, keys] = opts.match === undefined ? await redis.scan(cursor, "COUNT", opts.batch) : await redis.scan(cursor, "MATCH", opts.match, "COUNT", opts.batch);
      cursor = next;
      // SCAN examines about COUNT keys whatever MATCH lets through.
      await pacer.spend(Math.max(opts.batch, keys.length));
      scanned += keys.length;
      examined += Math.max(opts.batch, keys.length);
      if (keys.length > 0) await pacer.spend(await opts.onBatch(keys));
      opts.onProgress?.(opts.match === undefined ? scanned : examined);
    } while (cursor !== "0" && !interrupted);
  } finally {
    process.off("SIGINT", onSigint);
  }
  return { scanned, complete: cursor === "0" };
}

/** Refuses a Redis Cluster: walking one node would report (or purge) part of the keys only. */
export async function refuseCluster(redis: Redis): Promise<void> {
  const info = await redis.info("cluster");
  if (/cluster_enabled:1/.test(info)) {
    throw new Error("Redis Cluster is not supported yet (every master comes with a later issue); point --redis at a standalone Redis");
  }
}

/** Redis's glob (as SCAN MATCH: `*`, `?`, `[...]`, `\` escapes) as a RegExp. */
export function globToRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "\\" && i + 1 < glob.length) re += escapeRegExp(glob[++i]);
    else if (c === "*") re += "[\\s\\S]*";
    else if (c === "?") re += "[\\s\\S]";
    else if (c === "[") {
      const close = glob.indexOf("]", i + 2);
      if (close < 0) re += "\\[";
      else {
        let body = glob.slice(i + 1, close);
        const negate = body.startsWith("^");
        if (negate) body = body.slice(1);
        re += `[${negate ? "^" : ""}${body.replace(/[\]\\]/g, "\\$&")}]`;
        i = close;
      }
    } else re += escapeRegExp(c);
  }
  return new RegExp(`^${re}$`);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

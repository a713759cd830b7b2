/**
 * The one way the operations commands walk Redis: SCAN with COUNT in batches (never
 * KEYS), on every master of a cluster, paced to at most `maxOpsPerSec` keys a second (scanned and followed up), stopped
 * cleanly by Ctrl-C after the batch in flight.
 */
import type { Cluster, Redis } from "ioredis";
import { dataNodes } from "./redis.js";

export interface ScanOptions {
  /** SCAN's COUNT hint, and the size of each follow-up batch. */
  batch: number;
  /** 0 = unpaced. Keys a second: each SCAN counts as the `batch` keys it examines, each key of a batch's follow-up commands as one more. */
  maxOpsPerSec: number;
  /** SCAN MATCH glob, so Redis filters out other applications' key names before they travel. */
  match?: string;
  /** Called once per batch with the keys SCAN returned; returns how many keys it sent commands for. */
  onBatch(keys: string[], node: Redis): Promise<number>;
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

/**
 * Walks every server that holds data (each master of a Cluster, one after the other, else
 * the one connection) with one pacer and one running count, so a cluster is paced and
 * reported as one Redis. `onBatch` gets the node the keys are on: follow-up commands go
 * there, never across slots through the cluster client.
 */
export async function scanAll(redis: Redis | Cluster, opts: ScanOptions): Promise<ScanResult> {
  let interrupted = false;
  const onSigint = () => {
    interrupted = true;
  };
  process.on("SIGINT", onSigint);
  const pacer = new Pacer(opts.maxOpsPerSec);
  let scanned = 0;
  let examined = 0;
  let complete = true;
  try {
    for (const node of dataNodes(redis)) {
      if (interrupted) {
        complete = false;
        break;
      }
      let cursor = "0";
      do {
        const [next, keys] = opts.match === undefined ? await node.scan(cursor, "COUNT", opts.batch) : await node.scan(cursor, "MATCH", opts.match, "COUNT", opts.batch);
        cursor = next;
        // SCAN examines about COUNT keys whatever MATCH lets through.
        await pacer.spend(Math.max(opts.batch, keys.length));
        scanned += keys.length;
        examined += Math.max(opts.batch, keys.length);
        if (keys.length > 0) await pacer.spend(await opts.onBatch(keys, node));
        opts.onProgress?.(opts.match === undefined ? scanned : examined);
      } while (cursor !== "0" && !interrupted);
      if (cursor !== "0") complete = false;
    }
  } finally {
    process.off("SIGINT", onSigint);
  }
  return { scanned, complete };
}

/** DBSIZE of the whole deployment: the sum over a cluster's masters. */
export async function totalDbsize(redis: Redis | Cluster): Promise<number> {
  const sizes = await Promise.all(dataNodes(redis).map((n) => n.dbsize()));
  return sizes.reduce((a, b) => a + b, 0);
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

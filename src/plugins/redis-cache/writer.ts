/**
 * Stores and lock releases leave the request through one queue per worker, drained by
 * one timer at a time, in pipelines: body_filter, header_filter and log cannot use
 * cosockets, and under load one round trip per batch costs far less than one timer and
 * one round trip per response. Within a batch, calls keep their order: a store's SET
 * always reaches Redis before the release of its lock.
 */
import * as client from "../../lib/redis/client";
import { logThrottled } from "../../lib/redis/fault";
import type { RedisConf } from "../../lib/redis/schema";
import { PLUGIN_NAME } from "./conf";
import { replyError } from "./storage";

/** Builds the calls of one job when its batch is sent (encoding happens off the request). */
export type Build = (this: void) => client.Call[];

interface Job {
  redis: RedisConf;
  pool: string;
  /** Bytes the job writes (about). */
  size: number;
  build: Build;
}

/** Jobs and bytes per round trip. */
const MAX_JOBS = 64;
const MAX_BYTES = 4 * 1024 * 1024;

let queue: Job[] = [];
let draining = false;

function send(this: void, redis: RedisConf, calls: client.Call[]): void {
  if (calls.length === 0) return;
  const [replies, err] = client.pipeline(redis, calls);
  if (replies === undefined) {
    // The locks expire on their own (lock_timeout); the entries are simply not stored.
    logThrottled(PLUGIN_NAME, `could not store cache entries: ${err}`);
    return;
  }
  for (const reply of replies) {
    const replyErr = replyError(reply);
    if (replyErr !== undefined) {
      logThrottled(PLUGIN_NAME, `could not store a cache entry: ${replyErr}`);
      return;
    }
  }
}

function drainQueue(this: void): void {
  while (queue.length > 0) {
    const jobs = queue;
    queue = [];
    let i = 0;
    while (i < jobs.length) {
      // One batch: consecutive jobs for the same Redis, within the limits.
      const first = jobs[i];
      const calls: client.Call[] = [];
      let bytes = 0;
      let count = 0;
      while (i < jobs.length && count < MAX_JOBS && jobs[i].pool === first.pool && (count === 0 || bytes + jobs[i].size <= MAX_BYTES)) {
        const job = jobs[i];
        const [ok, built] = pcall(job.build);
        if (ok) {
          for (const call of built as client.Call[]) calls.push(call);
        } else {
          logThrottled(PLUGIN_NAME, `could not prepare a cache write: ${tostring(built)}`);
        }
        bytes += job.size;
        count++;
        i++;
      }
      send(first.redis, calls);
    }
  }
}

/** The writer timer. A worker that is exiting (premature) still tries: what is not stored is only a later miss. */
function drain(this: void, premature: boolean): void {
  const [ok, err] = pcall(drainQueue);
  draining = false;
  if (!ok) {
    queue = [];
    logThrottled(PLUGIN_NAME, `cache writer failed: ${tostring(err)}`);
  }
}

/** Queues a write; it reaches Redis from a timer shortly after. */
export function enqueue(this: void, redis: RedisConf, size: number, build: Build): void {
  queue.push({ redis, pool: client.poolName(redis), size, build });
  if (draining) return;
  const [ok, err] = ngx.timer.at(0, drain);
  if (ok === undefined) {
    queue = [];
    logThrottled(PLUGIN_NAME, `could not schedule cache writes: ${err}`);
    return;
  }
  draining = true;
}

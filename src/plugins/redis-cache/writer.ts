/**
 * Stores and lock releases leave the request through one queue per worker, drained by
 * one timer at a time, in pipelines: body_filter, header_filter and log cannot use
 * cosockets, and under load one round trip per batch costs far less than one timer and
 * one round trip per response. Within a batch, calls keep their order: a store's SET
 * always reaches Redis before the release of its lock.
 *
 * The queue is bounded (MAX_QUEUED_BYTES, MAX_QUEUED_JOBS): when Redis is slower than the
 * traffic, further stores are dropped (a later miss) and only their lock releases queue,
 * so memory stays bounded and waiters are still let go.
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

/** Jobs and bytes waiting in this worker (queued or in the batch being built) before stores are dropped. */
const MAX_QUEUED_JOBS = 10000;
const MAX_QUEUED_BYTES = 64 * 1024 * 1024;
/**
 * Lock releases are tiny, and a lock left behind makes waiters wait out lock_timeout:
 * they still queue past MAX_QUEUED_JOBS, up to this many jobs (then the lock expires on
 * its own).
 */
const MAX_QUEUED_RELEASES = 10 * MAX_QUEUED_JOBS;

let queue: Job[] = [];
let draining = false;
/** Jobs and bytes accepted and not sent yet. */
let pendingJobs = 0;
let pendingBytes = 0;

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
      pendingJobs -= count;
      pendingBytes -= bytes;
      send(first.redis, calls);
    }
  }
}

function reset(this: void): void {
  queue = [];
  pendingJobs = 0;
  pendingBytes = 0;
}

/** The writer timer. A worker that is exiting (premature) still tries: what is not stored is only a later miss. */
function drain(this: void, premature: boolean): void {
  const [ok, err] = pcall(drainQueue);
  draining = false;
  if (!ok) {
    reset();
    logThrottled(PLUGIN_NAME, `cache writer failed: ${tostring(err)}`);
  }
}

function push(this: void, redis: RedisConf, size: number, build: Build): void {
  queue.push({ redis, pool: client.poolName(redis), size, build });
  pendingJobs++;
  pendingBytes += size;
  if (draining) return;
  const [ok, err] = ngx.timer.at(0, drain);
  if (ok === undefined) {
    reset();
    logThrottled(PLUGIN_NAME, `could not schedule cache writes: ${err}`);
    return;
  }
  draining = true;
}

/**
 * Queues a store of about `size` bytes (its calls include the release of its lock); it
 * reaches Redis from a timer shortly after. When the queue is full the store is dropped
 * and only `release` (the lock release alone, if the request holds a lock) is queued.
 */
export function enqueueStore(this: void, redis: RedisConf, size: number, build: Build, release: Build | undefined): void {
  // An empty queue takes any store (max_body_size bounds it), so no size is never stored.
  if (pendingJobs < MAX_QUEUED_JOBS && (pendingBytes === 0 || pendingBytes + size <= MAX_QUEUED_BYTES)) return push(redis, size, build);
  logThrottled(PLUGIN_NAME, `cache write queue full (${pendingJobs} writes, ${pendingBytes} bytes waiting for redis): a response was not stored`);
  if (release !== undefined) enqueueRelease(redis, release);
}

/** Queues a lock release (small; it may pass the store limits, up to MAX_QUEUED_RELEASES). */
export function enqueueRelease(this: void, redis: RedisConf, build: Build): void {
  if (pendingJobs < MAX_QUEUED_RELEASES) return push(redis, 0, build);
  logThrottled(PLUGIN_NAME, `cache write queue full (${pendingJobs} writes waiting for redis): a lock is left to expire`);
}

/**
 * Where the counters live: the krs_metrics shared dict, one value per series. A request
 * never takes the dict's lock to count: it adds to this worker's buffer (a plain Lua
 * table), and a timer merges the buffer into the dict every FLUSH_INTERVAL with one
 * incr per series touched, as Kong's exporter does with resty.counter. The scrape merges
 * its own worker's buffer first; another worker's shows within FLUSH_INTERVAL.
 *
 * The dict is bounded by max_series (series as Prometheus counts them: every histogram
 * bucket, _sum and _count). A label set is admitted once per node, on first use, by
 * reserving its series in the dict's series count; one that does not fit is never created
 * and its updates are counted in krs_metrics_series_dropped_total. A worker remembers only
 * the label sets the node admitted, so its memory has the same bound.
 *
 * Dict keys: a series is `name{labels}`, a histogram's parts `name{labels}\t<part>` with
 * part "b01".. (observations in that bucket alone, made cumulative at exposition), "sum"
 * and "count". Keys of the store itself start with "#".
 */
import type { MetricDef } from "./metrics";

export const DICT = "krs_metrics";
/** Seconds between two merges of a worker's buffer into the dict. */
export const FLUSH_INTERVAL = 1;

const SERIES_COUNT = "#series";
const DROPPED = "#dropped";
const ERRORS = "#errors";
const BOOT = "#boot";
/** Per-worker gauges (breaker state, ...) that die with the worker: `#g|<series>`. */
export const WORKER_GAUGE_PREFIX = "#g|";
const WORKER_GAUGE_TTL = FLUSH_INTERVAL * 5;

let maxSeries = 20000;
let pending = new LuaTable<string, number>();
/** Label sets (`name{labels}`) this node admitted. */
const known = new LuaTable<string, boolean>();
/** The node's series count reached the cap: new label sets are dropped without asking the dict. */
let full = false;
let droppedHere = 0;
let errorsHere = 0;

export function dict(this: void): NgxShDict | undefined {
  return ngx.shared[DICT];
}

export function setMaxSeries(this: void, max: number): void {
  if (max !== maxSeries) full = false;
  maxSeries = max;
}

export function getMaxSeries(this: void): number {
  return maxSeries;
}

/** Bucket part names, "b01".., so that sorted keys keep a histogram's buckets in order. */
const BUCKET_PARTS: string[] = [];
for (let i = 1; i <= 64; i++) BUCKET_PARTS.push(string.format("b%02d", i));
export function bucketPart(this: void, index: number): string {
  return BUCKET_PARTS[index - 1];
}

/** Series a label set of this metric makes: 1, or a histogram's buckets, +Inf, _sum and _count. */
export function seriesOf(this: void, def: MetricDef): number {
  return def.buckets !== undefined ? def.buckets.length + 3 : 1;
}

/**
 * True when `base` (`name{labels}`) may be counted: already admitted, or admitted now.
 * Admission reserves the series first, then creates the key; the loser of two workers
 * racing for the same label set gives its reservation back.
 */
function admit(this: void, def: MetricDef, base: string): boolean {
  if (known.get(base) === true) return true;
  if (full) {
    droppedHere++;
    return false;
  }
  const shm = dict();
  if (shm === undefined) return false;
  const weight = seriesOf(def);
  const [count] = shm.incr(SERIES_COUNT, weight, 0);
  if (count === undefined) {
    errorsHere++;
    return false;
  }
  if (count > maxSeries) {
    shm.incr(SERIES_COUNT, -weight);
    if (count - weight >= maxSeries) full = true;
    droppedHere++;
    return false;
  }
  const buckets = def.buckets;
  const primary = buckets !== undefined ? base + "\tcount" : base;
  // safe_add: a full zone must refuse the new series, not evict counted ones (an evicted
  // counter would start again from zero). A series' keys all exist from its admission on,
  // so the flush's incr never allocates.
  const [added, addErr] = shm.safe_add(primary, 0);
  if (!added) {
    shm.incr(SERIES_COUNT, -weight);
    if (addErr !== "exists") {
      errorsHere++;
      return false;
    }
  } else if (buckets !== undefined) {
    shm.safe_add(base + "\tsum", 0);
    for (let i = 1; i <= buckets.length; i++) shm.safe_add(base + "\t" + bucketPart(i), 0);
  }
  known.set(base, true);
  return true;
}

/** A histogram label set's observations since the last flush. */
interface HistogramBuffer {
  /** Observations per bucket index (1-based); past the last bucket only `count` grows. */
  buckets: LuaTable<number, number>;
  sum: number;
  count: number;
}
let pendingHistograms = new LuaTable<string, HistogramBuffer>();

/**
 * Adds `value` to a counter's series `base` (`name{labels}`, labels escaped). In the
 * buffer already means admitted: the hot path is one table lookup and one write.
 */
export function incSeries(this: void, def: MetricDef, base: string, value: number): void {
  const current = pending.get(base);
  if (current !== undefined) {
    pending.set(base, current + value);
    return;
  }
  if (!admit(def, base)) return;
  pending.set(base, value);
}

export function inc(this: void, def: MetricDef, labels: string, value: number): void {
  incSeries(def, def.name + "{" + labels + "}", value);
}

/**
 * Whole values 0..INDEXED of a histogram find their bucket in a table built once per
 * metric (Kong's latencies are whole milliseconds, mostly small): no loop per request,
 * whose early exit at a varying bucket also keeps LuaJIT from compiling the caller.
 */
const INDEXED = 1000;
const bucketIndexes = new LuaTable<MetricDef, LuaTable<number, number>>();

/** Index (1-based) of the first bucket holding `value`, 0 past the last one. */
function bucketSearch(this: void, bounds: number[], value: number): number {
  for (let i = 0; i < bounds.length; i++) if (value <= bounds[i]) return i + 1;
  return 0;
}

function bucketIndexesOf(this: void, def: MetricDef): LuaTable<number, number> {
  let indexes = bucketIndexes.get(def);
  if (indexes === undefined) {
    indexes = new LuaTable();
    for (let v = 0; v <= INDEXED; v++) indexes.set(v, bucketSearch(def.buckets!, v));
    bucketIndexes.set(def, indexes);
  }
  return indexes;
}

/** One observation of a histogram's label set `base` (`name{labels}`). */
export function observeSeries(this: void, def: MetricDef, base: string, value: number): void {
  let h = pendingHistograms.get(base);
  if (h === undefined) {
    if (!admit(def, base)) return;
    h = { buckets: new LuaTable(), sum: 0, count: 0 };
    pendingHistograms.set(base, h);
  }
  const i = bucketIndexesOf(def).get(value) ?? bucketSearch(def.buckets!, value);
  if (i > 0) h.buckets.set(i, (h.buckets.get(i) ?? 0) + 1);
  h.sum += value;
  h.count++;
}

export function observe(this: void, def: MetricDef, labels: string, value: number): void {
  observeSeries(def, def.name + "{" + labels + "}", value);
}

function add(this: void, shm: NgxShDict, key: string, delta: number): void {
  const [, err] = shm.incr(key, delta, 0);
  if (err !== undefined) errorsHere++;
}

/** Merges this worker's buffer into the dict. */
export function flush(this: void): void {
  const shm = dict();
  if (shm === undefined) return;
  const merging = pending;
  pending = new LuaTable();
  for (const [key, delta] of pairs(merging)) add(shm, key, delta);
  const histograms = pendingHistograms;
  pendingHistograms = new LuaTable();
  for (const [base, h] of pairs(histograms)) {
    for (const [i, n] of pairs(h.buckets)) add(shm, base + "\t" + BUCKET_PARTS[i - 1], n);
    add(shm, base + "\tsum", h.sum);
    add(shm, base + "\tcount", h.count);
  }
  if (droppedHere > 0) {
    shm.incr(DROPPED, droppedHere, 0);
    droppedHere = 0;
  }
  if (errorsHere > 0) {
    shm.incr(ERRORS, errorsHere, 0);
    errorsHere = 0;
  }
  const [count] = shm.get(SERIES_COUNT);
  full = type(count) === "number" && (count as number) >= maxSeries;
}

/** A gauge of this worker, kept while the worker lives (it refreshes it each flush). */
export function setWorkerGauge(this: void, series: string, value: number): void {
  dict()?.safe_set(WORKER_GAUGE_PREFIX + series, value, WORKER_GAUGE_TTL);
}

function numberAt(this: void, shm: NgxShDict, key: string): number {
  const [value] = shm.get(key);
  return type(value) === "number" ? (value as number) : 0;
}

export interface StoreState {
  series: number;
  dropped: number;
  errors: number;
}

export function state(this: void): StoreState {
  const shm = dict();
  if (shm === undefined) return { series: 0, dropped: 0, errors: 0 };
  return { series: numberAt(shm, SERIES_COUNT), dropped: numberAt(shm, DROPPED), errors: numberAt(shm, ERRORS) };
}

/**
 * This node's run: set by its first worker, kept across reloads (the dict is), new after a
 * restart, when the counters start again from zero.
 */
export function bootId(this: void): string {
  const shm = dict();
  if (shm === undefined) return "";
  const [existing] = shm.get(BOOT);
  if (type(existing) === "string") return existing as string;
  shm.add(BOOT, string.format("%d-%d", math.floor(ngx.now() * 1000), ngx.worker.pid()));
  return shm.get(BOOT)[0] as string;
}

/** Every series value of this node (counters and histogram parts), by dict key. */
export function snapshot(this: void): LuaTable<string, number> {
  const out = new LuaTable<string, number>();
  const shm = dict();
  if (shm === undefined) return out;
  for (const key of shm.get_keys(0)) {
    if (string.byte(key, 1) === 35) continue; // "#"
    const [value] = shm.get(key);
    if (type(value) === "number") out.set(key, value as number);
  }
  return out;
}

/** This node's per-worker gauges: series (without the prefix) → value. */
export function workerGauges(this: void): LuaTable<string, number> {
  const out = new LuaTable<string, number>();
  const shm = dict();
  if (shm === undefined) return out;
  const prefixLength = WORKER_GAUGE_PREFIX.length;
  for (const key of shm.get_keys(0)) {
    if (string.sub(key, 1, prefixLength) !== WORKER_GAUGE_PREFIX) continue;
    const [value] = shm.get(key);
    if (type(value) === "number") out.set(string.sub(key, prefixLength + 1), value as number);
  }
  return out;
}

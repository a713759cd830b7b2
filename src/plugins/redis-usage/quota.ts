/**
 * redis-usage's batched quota views: per subject, what this worker knows of its day and
 * month quota counts (the count Redis returned with the last flush, plus what this worker
 * admitted since) and its per-consumer overrides. The decision costs no Redis call; the
 * view is as fresh as the last flush, so all nodes together may admit at most one flush
 * interval of traffic past a quota (plus, on a worker that has not flushed this subject
 * yet, what it admits before its first flush).
 */
import * as lrucache from "resty.lrucache";

/** Subjects whose view one worker keeps (least recently used dropped first). */
const MAX_VIEWS = 20000;

export interface Counts {
  bucket: string;
  /** quota_requests and quota_cost as Redis last reported them. */
  baseRequests: number;
  baseCost: number;
  /** Admitted by this worker and not yet in a flush Redis answered. */
  localRequests: number;
  localCost: number;
}

export interface View {
  day: Counts;
  month: Counts;
  /** The subject's overrides from Redis (-1: none, or not read yet). */
  overrideDay: number;
  overrideMonth: number;
}

const [created, err] = lrucache.new<View>(MAX_VIEWS);
if (created === undefined) error(`redis-usage: could not create the quota views: ${err}`);
const views: LruCache<View> = created;

function fresh(this: void, bucket: string): Counts {
  return { bucket, baseRequests: 0, baseCost: 0, localRequests: 0, localCost: 0 };
}

/** The view of subject `key` for the current buckets; a new bucket starts from nothing. */
export function viewOf(this: void, key: string, dayId: string, monthId: string): View {
  let [view] = views.get(key);
  if (view === undefined) {
    // Every field from the start: a field added later (the overrides, at the first flush)
    // would change the table's shape under the compiled access phase, which then leaves its
    // trace at this lookup on every request.
    view = { day: fresh(dayId), month: fresh(monthId), overrideDay: -1, overrideMonth: -1 };
    views.set(key, view);
  }
  if (view.day.bucket !== dayId) view.day = fresh(dayId);
  if (view.month.bucket !== monthId) view.month = fresh(monthId);
  return view;
}

export function used(this: void, c: Counts, unit: "requests" | "cost"): number {
  return unit === "cost" ? c.baseCost + c.localCost : c.baseRequests + c.localRequests;
}

/** Counts an admission (or a cost learnt later) in the view before any flush carries it. */
export function admit(this: void, view: View, requests: number, cost: number): void {
  view.day.localRequests += requests;
  view.day.localCost += cost;
  view.month.localRequests += requests;
  view.month.localCost += cost;
}

/**
 * A flush of counter set `period`/`bucket` carrying `requests` and `cost` admitted by this
 * worker was answered: Redis's counts (which include them) replace the base. Undefined
 * counts: the counter set was refused, the amounts leave the local part all the same.
 */
export function acknowledge(this: void, view: View, period: "day" | "month", bucket: string,
  quotaRequests: number | undefined, quotaCost: number | undefined, overrideDay: number | undefined, overrideMonth: number | undefined,
  requests: number, cost: number): void {
  const c = period === "day" ? view.day : view.month;
  if (overrideDay !== undefined) view.overrideDay = overrideDay;
  if (overrideMonth !== undefined) view.overrideMonth = overrideMonth;
  if (c.bucket !== bucket) return;
  c.localRequests = math.max(0, c.localRequests - requests);
  c.localCost = math.max(0, c.localCost - cost);
  if (quotaRequests !== undefined) {
    c.baseRequests = quotaRequests;
    c.baseCost = quotaCost!;
  }
}

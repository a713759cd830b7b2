/**
 * redis-usage: usage metering for billing, and daily/monthly quotas.
 *
 * access: with a quota configured, decide it for the request's subject (its consumer, or
 * the fallback): batched, on this worker's view (no Redis call); exact, with one EVALSHA
 * (redis-lua/usage-quota-3.lua) that decides and counts atomically. header_filter: the
 * quota headers, and the upstream's cost header read (and hidden). log: the request's
 * increments go to the worker buffer (meter.ts), never to Redis: per subject, route and
 * service, in the UTC day and month buckets; the buffer's timer flushes them.
 */
import { script } from "../../lib/redis/client";
import { logThrottled, onRedisFailure } from "../../lib/redis/fault";
import * as facts from "../../lib/facts";
import { key, part } from "../../lib/keys";
import { SUITE_VERSION } from "../../lib/version";
import { type Bucket, dayExpiry, dayOf, monthExpiry, monthOf } from "./buckets";
import { type Conf, MAX_COST } from "./conf";
import { costPerKb, parseCost } from "./cost";
import * as meter from "./meter";
import * as quota from "./quota";
import * as registry from "./registry";

const PLUGIN = "redis-usage";
const QUOTA_SCRIPT = "usage-quota";

const LIMIT_DAY = "X-Usage-Limit-Day";
const REMAINING_DAY = "X-Usage-Remaining-Day";
const LIMIT_MONTH = "X-Usage-Limit-Month";
const REMAINING_MONTH = "X-Usage-Remaining-Month";
const RETRY_AFTER = "Retry-After";

const STATUS_CLASSES: Record<number, string | undefined> = { [2]: "2xx", [3]: "3xx", [4]: "4xx", [5]: "5xx" };

const ceil = math.ceil;
const floor = math.floor;
const tonumber = _G.tonumber;

/** The buckets of the clock's current day and month, with each config's expiry times. */
interface Clock {
  day: Bucket;
  month: Bucket;
}
let clock: Clock | undefined;

function clockAt(this: void, now: number): Clock {
  if (clock === undefined || now < clock.day.start || now >= clock.day.finish) clock = { day: dayOf(now), month: monthOf(now) };
  return clock;
}

interface Expiry {
  day: string;
  month: string;
  dayAt: number;
  monthAt: number;
}
const expiryByConf = setmetatable(new LuaTable<Conf, Expiry>(), { __mode: "k" });

function expiryOf(this: void, conf: Conf, c: Clock): Expiry {
  let e = expiryByConf.get(conf);
  if (e === undefined || e.day !== c.day.id || e.month !== c.month.id) {
    e = { day: c.day.id, month: c.month.id, dayAt: dayExpiry(c.day, conf.daily_retention_days), monthAt: monthExpiry(c.month, conf.monthly_retention_months) };
    expiryByConf.set(conf, e);
  }
  return e;
}

/** A metered subject: its key tag (`<kind>:<part(id)>`), its name when the tag had to hash it, and its keys. */
interface Subject {
  tag: string;
  label: string;
  quotaKey: string;
  /** The buckets its day and month keys were built for. */
  day: string;
  month: string;
  dayKey: string;
  monthKey: string;
  /** Its batched quota view's key (`<pool>\0<tag>`), built for the pool in viewPool. */
  viewPool: string;
  viewKey: string;
}

/**
 * Subjects seen lately, per kind, so a request builds no string at all (no memo key
 * either: the log phase runs on every request); dropped wholesale past MAX_SUBJECTS.
 */
const MAX_SUBJECTS = 10000;
const KINDS = ["consumer", "ip", "credential", "route", "service"];
let subjects = new LuaTable<string, LuaTable<string, Subject>>();
let subjectCount = 0;

function resetSubjects(this: void): void {
  subjects = new LuaTable();
  for (const kind of KINDS) subjects.set(kind, new LuaTable());
  subjectCount = 0;
}
resetSubjects();

function subjectOf(this: void, kind: string, id: string, c: Clock): Subject {
  let s = subjects.get(kind).get(id);
  if (s === undefined) {
    if (subjectCount >= MAX_SUBJECTS) resetSubjects();
    const p = part(id);
    const tag = `${kind}:${p}`;
    s = { tag, label: p === id ? "" : id, quotaKey: key(PLUGIN, tag, "quota"), day: "", month: "", dayKey: "", monthKey: "", viewPool: "", viewKey: "" };
    subjects.get(kind).set(id, s);
    subjectCount++;
  }
  return current(s, c);
}

/** The subject with its day and month keys for the clock's buckets. */
function current(this: void, s: Subject, c: Clock): Subject {
  if (s.day !== c.day.id) {
    s.day = c.day.id;
    s.dayKey = key(PLUGIN, s.tag, "d", s.day);
  }
  if (s.month !== c.month.id) {
    s.month = c.month.id;
    s.monthKey = key(PLUGIN, s.tag, "m", s.month);
  }
  return s;
}

function viewOfSubject(this: void, conf: Conf, s: Subject, c: Clock): quota.View {
  const pool = registry.poolOf(conf);
  if (s.viewPool !== pool) {
    s.viewPool = pool;
    s.viewKey = `${pool}\0${s.tag}`;
  }
  return quota.viewOf(s.viewKey, c.day.id, c.month.id);
}

/** Whom the request is metered (and its quotas counted) to: its consumer, else the fallback. */
function identify(this: void, conf: Conf, c: Clock): Subject | undefined {
  const consumer = kong.client.get_consumer();
  if (consumer !== undefined) {
    const name = consumer.username ?? consumer.custom_id ?? consumer.id;
    if (type(name) === "string" && name !== "") return subjectOf("consumer", name, c);
  }
  if (conf.fallback === "ip") return subjectOf("ip", kong.client.get_forwarded_ip(), c);
  if (conf.fallback === "credential") {
    const id = kong.client.get_credential()?.id;
    if (type(id) === "string" && id !== "") return subjectOf("credential", id!, c);
  }
  return undefined;
}

function quotaOn(this: void, conf: Conf): boolean {
  return type(conf.quota_day) === "number" || type(conf.quota_month) === "number";
}

/** The cost known before the response: the fixed one; 0 when the response decides it. */
function costBefore(this: void, conf: Conf): number {
  return type(conf.cost_header) === "string" || type(conf.cost_per_kb) === "number" ? 0 : conf.cost;
}

/** What the request cost, from the sources the config names (header, then per KiB, then fixed). */
function costOf(this: void, conf: Conf, bodyBytes: number): number {
  const ctx = kong.ctx.plugin;
  if (type(conf.cost_header) === "string") {
    const fromHeader = ctx["cost"] as number | undefined;
    if (fromHeader !== undefined) return fromHeader;
    if (ctx["bad_cost"] === true) logThrottled(PLUGIN, `${conf.cost_header} is not a whole number from 0 to ${MAX_COST}: cost ${conf.cost} counted`, conf);
    if (type(conf.cost_per_kb) !== "number") return conf.cost;
  }
  if (type(conf.cost_per_kb) === "number") return costPerKb(conf.cost_per_kb!, bodyBytes);
  return conf.cost;
}

type Headers = LuaTable<string, number>;

interface Decision {
  admitted: boolean;
  dayLimit: number;
  dayLeft: number;
  monthLimit: number;
  monthLeft: number;
}

function quotaHeaders(this: void, d: Decision): Headers {
  const headers: Headers = new LuaTable();
  if (d.dayLimit >= 0) {
    headers.set(LIMIT_DAY, d.dayLimit);
    headers.set(REMAINING_DAY, d.dayLeft);
  }
  if (d.monthLimit >= 0) {
    headers.set(LIMIT_MONTH, d.monthLimit);
    headers.set(REMAINING_MONTH, d.monthLeft);
  }
  return headers;
}

function reject(this: void, conf: Conf, d: Decision, c: Clock, now: number): never {
  const headers = quotaHeaders(d);
  // The bucket that refused: a full month waits for next month even when the day has room.
  const until = d.monthLimit >= 0 && d.monthLeft <= 0 && !(d.dayLimit >= 0 && d.dayLeft <= 0 && c.day.finish >= c.month.finish) ? c.month.finish : c.day.finish;
  headers.set(RETRY_AFTER, math.max(1, ceil((until - now) / 1000)));
  return kong.response.error(conf.quota_status, conf.quota_message, headers as unknown as KongHeaders);
}

function left(this: void, limit: number, used: number): number {
  return limit < 0 ? -1 : math.max(0, limit - used);
}

/** batched: this worker's view, no Redis call. */
function decideBatched(this: void, conf: Conf, view: quota.View, need: number, costNow: number): Decision {
  const unit = conf.quota_unit;
  const dayLimit = view.overrideDay !== undefined && view.overrideDay >= 0 ? view.overrideDay : (conf.quota_day ?? -1);
  const monthLimit = view.overrideMonth !== undefined && view.overrideMonth >= 0 ? view.overrideMonth : (conf.quota_month ?? -1);
  const dayUsed = quota.used(view.day, unit);
  const monthUsed = quota.used(view.month, unit);
  const admitted = (dayLimit < 0 || dayUsed + need <= dayLimit) && (monthLimit < 0 || monthUsed + need <= monthLimit);
  if (!admitted) return { admitted, dayLimit, dayLeft: left(dayLimit, dayUsed), monthLimit, monthLeft: left(monthLimit, monthUsed) };
  quota.admit(view, 1, costNow);
  const spent = unit === "cost" ? costNow : 1;
  return { admitted, dayLimit, dayLeft: left(dayLimit, dayUsed + spent), monthLimit, monthLeft: left(monthLimit, monthUsed + spent) };
}

/** What one request adds to each of its counter sets. */
interface Metered {
  conf: Conf;
  state: meter.PoolState;
  expiry: Expiry;
  bytesIn: number;
  bytesOut: number;
  cost: number;
  statusClass: string | undefined;
}

/**
 * The log phase's Metered record, filled for each request and used before the handler
 * returns (nothing in between yields): no table per request.
 */
const metered: Metered = { conf: undefined as unknown as Conf, state: undefined as unknown as meter.PoolState, expiry: undefined as unknown as Expiry, bytesIn: 0, bytesOut: 0, cost: 0, statusClass: undefined };

function bump(this: void, fields: LuaTable<string, number>, field: string, n: number): void {
  if (n !== 0) fields.set(field, (fields.get(field) ?? 0) + n);
}

/** One request into one subject's day (or month) counter set; with `view`, the quota amounts too. */
function count(this: void, r: Metered, s: Subject, isDay: boolean, quotaRequests: number, quotaCost: number, view: quota.View | undefined, bucket: string): void {
  const entry = meter.entry(r.state, r.conf, isDay ? s.dayKey : s.monthKey, s.quotaKey, isDay ? r.expiry.dayAt : r.expiry.monthAt, s.label);
  if (entry === undefined) return;
  const fields = entry.fields;
  fields.set("requests", (fields.get("requests") ?? 0) + 1);
  bump(fields, "bytes_in", r.bytesIn);
  bump(fields, "bytes_out", r.bytesOut);
  bump(fields, "cost", r.cost);
  if (r.statusClass !== undefined) fields.set(r.statusClass, (fields.get(r.statusClass) ?? 0) + 1);
  if (view === undefined && quotaRequests === 0 && quotaCost === 0) return;
  bump(fields, "quota_requests", quotaRequests);
  bump(fields, "quota_cost", quotaCost);
  if (view !== undefined) {
    entry.view = view;
    entry.period = isDay ? "day" : "month";
    entry.bucket = bucket;
  }
}

const handler: KongPluginHandler<Conf> = {
  // Kong's quota plugins run after authentication and next to rate limiting (910).
  PRIORITY: 905,
  VERSION: SUITE_VERSION,

  init_worker() {
    meter.start();
  },

  configure(configs: Conf[] | undefined) {
    registry.configure(configs ?? []);
  },

  access(conf) {
    const ctx = kong.ctx.plugin;
    // Admitted requests count towards quota_* even without a quota: one set later starts with this month's real use.
    if (!quotaOn(conf)) {
      ctx["admitted"] = true;
      return;
    }
    const now = floor(ngx.now() * 1000 + 0.5);
    const c = clockAt(now);
    const subject = identify(conf, c);
    if (subject === undefined) {
      ctx["admitted"] = true;
      return;
    }
    // The log phase meters the same subject: authentication is over by now.
    ctx["subject"] = subject;
    const costNow = costBefore(conf);
    const need = conf.quota_unit === "cost" ? math.max(1, costNow) : 1;
    let d: Decision;
    if (conf.quota_mode === "exact") {
      facts.enter(PLUGIN);
      const e = expiryOf(conf, c);
      const [reply, err] = script(conf.redis, {
        script: QUOTA_SCRIPT,
        keys: [subject.quotaKey, subject.dayKey, subject.monthKey],
        args: [conf.quota_unit, need, costNow, conf.quota_day ?? -1, conf.quota_month ?? -1, e.dayAt, e.monthAt],
      });
      if (type(reply) !== "table") {
        facts.limit(PLUGIN, "quota", conf.fault_tolerant, "fault");
        if (conf.fault_tolerant) ctx["admitted"] = true;
        return onRedisFailure(PLUGIN, conf, reply === false ? `script ${QUOTA_SCRIPT} failed: ${err}` : err);
      }
      const r = reply as number[];
      d = { admitted: r[0] === 1, dayLimit: r[1], dayLeft: r[2], monthLimit: r[3], monthLeft: r[4] };
      if (d.admitted) ctx["counted_cost"] = costNow;
    } else {
      const view = viewOfSubject(conf, subject, c);
      d = decideBatched(conf, view, need, costNow);
      if (d.admitted) {
        ctx["view"] = view;
        ctx["view_cost"] = costNow;
      }
    }
    const byMonth = d.monthLimit >= 0 && (d.dayLimit < 0 || d.monthLeft < d.dayLeft);
    facts.limit(PLUGIN, "quota", d.admitted, conf.quota_mode === "exact" ? "redis" : "worker", byMonth ? d.monthLimit : d.dayLimit, byMonth ? d.monthLeft : d.dayLeft);
    if (!d.admitted) return reject(conf, d, c, now);
    ctx["admitted"] = true;
    // The headers are set from the decision itself at header_filter: no table built per request for them.
    ctx["decision"] = d;
  },

  header_filter(conf) {
    const ctx = kong.ctx.plugin;
    const d = ctx["decision"] as Decision | undefined;
    if (d !== undefined) {
      if (d.dayLimit >= 0) {
        kong.response.set_header(LIMIT_DAY, d.dayLimit);
        kong.response.set_header(REMAINING_DAY, d.dayLeft);
      }
      if (d.monthLimit >= 0) {
        kong.response.set_header(LIMIT_MONTH, d.monthLimit);
        kong.response.set_header(REMAINING_MONTH, d.monthLeft);
      }
    }
    const costHeader = conf.cost_header;
    if (type(costHeader) !== "string") return;
    const raw = kong.response.get_header(costHeader!);
    if (raw !== undefined) {
      const cost = parseCost(raw);
      if (cost !== undefined) ctx["cost"] = cost;
      else ctx["bad_cost"] = true;
    }
    if (conf.hide_cost_header) kong.response.clear_header(costHeader!);
  },

  log(conf) {
    const ctx = kong.ctx.plugin;
    const now = floor(ngx.now() * 1000 + 0.5);
    const c = clockAt(now);
    const vars = ngx.var;
    const bytesIn = tonumber(vars["request_length"]) ?? 0;
    const bytesOut = tonumber(vars["bytes_sent"]) ?? 0;
    const cost = costOf(conf, type(conf.cost_per_kb) === "number" ? (tonumber(vars["body_bytes_sent"]) ?? 0) : 0);
    const statusClass = STATUS_CLASSES[floor(kong.response.get_status() / 100)];

    const admitted = ctx["admitted"] === true;
    const countedCost = ctx["counted_cost"] as number | undefined;
    // exact: the script counted the request (and the cost known then) at access
    const quotaRequests = admitted && countedCost === undefined ? 1 : 0;
    const quotaCost = admitted ? cost - (countedCost ?? 0) : 0;
    const view = ctx["view"] as quota.View | undefined;
    if (view !== undefined) quota.admit(view, 0, cost - ((ctx["view_cost"] as number | undefined) ?? 0));

    const request = metered;
    request.conf = conf;
    request.state = meter.stateFor(conf);
    request.expiry = expiryOf(conf, c);
    request.bytesIn = bytesIn;
    request.bytesOut = bytesOut;
    request.cost = cost;
    request.statusClass = statusClass;
    meter.due(request.state, conf);
    const known = ctx["subject"] as Subject | undefined;
    const subject = known !== undefined ? current(known, c) : identify(conf, c);
    if (subject !== undefined) {
      // Quotas are counted on the request's subject only (never on its route or service).
      const quotaView = view ?? (quotaOn(conf) ? viewOfSubject(conf, subject, c) : undefined);
      count(request, subject, true, quotaRequests, quotaCost, quotaView, c.day.id);
      count(request, subject, false, quotaRequests, quotaCost, quotaView, c.month.id);
    }
    const route = kong.router.get_route();
    if (route !== undefined) {
      const s = subjectOf("route", route.name ?? route.id, c);
      count(request, s, true, 0, 0, undefined, "");
      count(request, s, false, 0, 0, undefined, "");
    }
    const service = kong.router.get_service();
    if (service !== undefined) {
      const s = subjectOf("service", service.name ?? service.id, c);
      count(request, s, true, 0, 0, undefined, "");
      count(request, s, false, 0, 0, undefined, "");
    }
    meter.afterRequest();
  },
};

export = handler;

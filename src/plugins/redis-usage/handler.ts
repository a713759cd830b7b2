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

const STATUS_CLASSES: Record<number, "2xx" | "3xx" | "4xx" | "5xx" | undefined> = { [2]: "2xx", [3]: "3xx", [4]: "4xx", [5]: "5xx" };

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

/**
 * What access decided for the request, the one thing it leaves in kong.ctx.plugin for
 * header_filter and log (one table per request, made whole at once).
 */
interface Admission {
  admitted: boolean;
  /** The subject the quota was decided on: log meters the same one. */
  subject: Subject | undefined;
  /** batched: the view the admission was counted in, and the cost counted then. */
  view: quota.View | undefined;
  viewCost: number;
  /** exact: the cost the script counted (-1: the script did not count the request). */
  countedCost: number;
  /** Whether the quota headers are set (a quota was decided). */
  decided: boolean;
  dayLimit: number;
  dayLeft: number;
  monthLimit: number;
  monthLeft: number;
}

/** An admission with nothing counted or known yet (every field set: one table shape). */
function admission(this: void, admitted: boolean, subject: Subject | undefined, decided: boolean): Admission {
  return { admitted, subject, view: undefined, viewCost: 0, countedCost: -1, decided, dayLimit: -1, dayLeft: -1, monthLimit: -1, monthLeft: -1 };
}

/** Admitted without a quota decision (no quota, or nobody to count it on): shared, never written. */
const UNCHECKED = admission(true, undefined, false);
const NOT_ADMITTED = admission(false, undefined, false);

/** Header text of the quota limits seen lately: the same few numbers on every response. */
const MAX_LIMIT_TEXTS = 1000;
let limitTexts = new LuaTable<number, string>();
let limitTextCount = 0;

function limitText(this: void, limit: number): string {
  let text = limitTexts.get(limit);
  if (text === undefined) {
    if (limitTextCount >= MAX_LIMIT_TEXTS) {
      limitTexts = new LuaTable();
      limitTextCount = 0;
    }
    text = tostring(limit);
    limitTexts.set(limit, text);
    limitTextCount++;
  }
  return text;
}

function quotaHeaders(this: void, d: Admission): Headers {
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

function reject(this: void, conf: Conf, d: Admission, c: Clock, now: number): never {
  const headers = quotaHeaders(d);
  // The bucket that refused: a full month waits for next month even when the day has room.
  const until = d.monthLimit >= 0 && d.monthLeft <= 0 && !(d.dayLimit >= 0 && d.dayLeft <= 0 && c.day.finish >= c.month.finish) ? c.month.finish : c.day.finish;
  headers.set(RETRY_AFTER, math.max(1, ceil((until - now) / 1000)));
  return kong.response.error(conf.quota_status, conf.quota_message, headers as unknown as KongHeaders);
}

function left(this: void, limit: number, used: number): number {
  return limit < 0 ? -1 : math.max(0, limit - used);
}

/** batched: this worker's view, no Redis call; the decision goes into `d`. */
function decideBatched(this: void, conf: Conf, view: quota.View, need: number, costNow: number, d: Admission): void {
  const unit = conf.quota_unit;
  const dayLimit = view.overrideDay >= 0 ? view.overrideDay : (conf.quota_day ?? -1);
  const monthLimit = view.overrideMonth >= 0 ? view.overrideMonth : (conf.quota_month ?? -1);
  const dayUsed = quota.used(view.day, unit);
  const monthUsed = quota.used(view.month, unit);
  const admitted = (dayLimit < 0 || dayUsed + need <= dayLimit) && (monthLimit < 0 || monthUsed + need <= monthLimit);
  d.admitted = admitted;
  d.dayLimit = dayLimit;
  d.monthLimit = monthLimit;
  if (!admitted) {
    d.dayLeft = left(dayLimit, dayUsed);
    d.monthLeft = left(monthLimit, monthUsed);
    return;
  }
  quota.admit(view, 1, costNow);
  const spent = unit === "cost" ? costNow : 1;
  d.dayLeft = left(dayLimit, dayUsed + spent);
  d.monthLeft = left(monthLimit, monthUsed + spent);
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
      ctx["usage"] = UNCHECKED;
      return;
    }
    const now = floor(ngx.now() * 1000 + 0.5);
    const c = clockAt(now);
    const subject = identify(conf, c);
    if (subject === undefined) {
      ctx["usage"] = UNCHECKED;
      return;
    }
    // The log phase meters the same subject: authentication is over by now.
    const d = admission(false, subject, true);
    ctx["usage"] = d;
    const costNow = costBefore(conf);
    const need = conf.quota_unit === "cost" ? math.max(1, costNow) : 1;
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
        d.decided = false;
        if (conf.fault_tolerant) d.admitted = true;
        return onRedisFailure(PLUGIN, conf, reply === false ? `script ${QUOTA_SCRIPT} failed: ${err}` : err);
      }
      const r = reply as number[];
      d.admitted = r[0] === 1;
      d.dayLimit = r[1];
      d.dayLeft = r[2];
      d.monthLimit = r[3];
      d.monthLeft = r[4];
      if (d.admitted) d.countedCost = costNow;
    } else {
      const view = viewOfSubject(conf, subject, c);
      decideBatched(conf, view, need, costNow, d);
      if (d.admitted) {
        d.view = view;
        d.viewCost = costNow;
      }
    }
    const byMonth = d.monthLimit >= 0 && (d.dayLimit < 0 || d.monthLeft < d.dayLeft);
    facts.limit(PLUGIN, "quota", d.admitted, conf.quota_mode === "exact" ? "redis" : "worker", byMonth ? d.monthLimit : d.dayLimit, byMonth ? d.monthLeft : d.dayLeft);
    if (!d.admitted) {
      // Set by kong.response.error with the body, not again at header_filter.
      d.decided = false;
      return reject(conf, d, c, now);
    }
  },

  header_filter(conf) {
    const ctx = kong.ctx.plugin;
    const d = ctx["usage"] as Admission | undefined;
    if (d !== undefined && d.decided) {
      if (d.dayLimit >= 0) {
        kong.response.set_header(LIMIT_DAY, limitText(d.dayLimit));
        kong.response.set_header(REMAINING_DAY, d.dayLeft);
      }
      if (d.monthLimit >= 0) {
        kong.response.set_header(LIMIT_MONTH, limitText(d.monthLimit));
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

    // No admission: access did not run (another plugin answered first).
    const a = (ctx["usage"] as Admission | undefined) ?? NOT_ADMITTED;
    const admitted = a.admitted;
    const counted = a.countedCost >= 0;
    // exact: the script counted the request (and the cost known then) at access
    const quotaRequests = admitted && !counted ? 1 : 0;
    const quotaCost = admitted ? cost - (counted ? a.countedCost : 0) : 0;
    const view = a.view;
    if (view !== undefined) quota.admit(view, 0, cost - a.viewCost);

    const state = meter.stateFor(conf);
    meter.due(state, conf);
    const known = a.subject;
    const subject = known !== undefined ? current(known, c) : identify(conf, c);
    const route = kong.router.get_route();
    const service = kong.router.get_service();
    const e = expiryOf(conf, c);
    const t = meter.tally(state, conf, subject ?? meter.NOBODY,
      route !== undefined ? subjectOf("route", route.name ?? route.id, c) : meter.NOBODY,
      service !== undefined ? subjectOf("service", service.name ?? service.id, c) : meter.NOBODY,
      c.day.id, c.month.id, e.dayAt, e.monthAt);
    t.requests += 1;
    t.bytes_in += bytesIn;
    t.bytes_out += bytesOut;
    t.cost += cost;
    if (statusClass !== undefined) t[statusClass] += 1;
    if (subject !== undefined) {
      // Quotas are counted on the request's subject only (never on its route or service).
      t.quota_requests += quotaRequests;
      t.quota_cost += quotaCost;
      const quotaView = view ?? (quotaOn(conf) ? viewOfSubject(conf, subject, c) : undefined);
      if (quotaView !== undefined) t.view = quotaView;
    }
    meter.afterRequest();
  },
};

export = handler;

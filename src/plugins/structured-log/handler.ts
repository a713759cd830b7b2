/**
 * structured-log: one JSON line per request with everything an operator needs to answer
 * "what happened to this request": Kong's serialize() entry (so file-log/http-log
 * pipelines parse it), request_id (X-Kong-Request-Id), the correlation id, and what the
 * suite's plugins did (the request facts), secrets redacted, to a file, a Redis Stream
 * shared by every node, or stdout. Priority 9, as Kong's file-log: it logs after the
 * others have recorded their facts.
 *
 * Hot path: serialize, redact, encode, append to the worker's queue. The sink is written
 * from a timer (or, for a file, when a batch is full), never once per request to Redis.
 */
import * as cjson from "cjson.safe";
import * as facts from "../../lib/facts";
import * as breaker from "../../lib/redis/breaker";
import { SUITE_VERSION } from "../../lib/version";
import { forRequest } from "./credentials";
import type { RouteRedaction } from "./credentials";
import { applyCustomFields, krsOf, levelOf, redactEntry, timestamp, uuidFromHex } from "./line";
import type { CustomField } from "./line";
import { PLUGIN } from "./names";
import { encodeObject } from "./json";
import { nameSet, toUtf8 } from "./redact";
import * as sinks from "./sinks";
import type { SinkConf } from "./sinks";

interface LogConf extends SinkConf {
  correlation_header?: string;
  redact_headers: string[];
  redact_query: string[];
  sample_rate: number;
  custom_fields?: CustomField[];
}

/** The fields a line starts with, in this order: what a reader scans for first; request_id ends it (see encodeObject). */
const HEAD = ["timestamp", "level", "event", "correlation_id"];
const LAST = "request_id";
const IS_HEAD = new LuaTable<string, boolean>();
for (const k of HEAD) IS_HEAD.set(k, true);

/** The configured redaction sets, built once per config table. */
const bases = setmetatable(new LuaTable<LogConf, RouteRedaction>(), { __mode: "k" });

function baseOf(this: void, conf: LogConf): RouteRedaction {
  let base = bases.get(conf);
  if (base === undefined) {
    base = { headers: nameSet(conf.redact_headers), query: nameSet(conf.redact_query) };
    bases.set(conf, base);
  }
  return base;
}

function hasText(this: void, value: unknown): value is string {
  return type(value) === "string" && value !== "";
}

function generatedId(this: void): string {
  const hex = ngx.var["kong_request_id"];
  if (hex !== undefined && hex.length === 32) return uuidFromHex(hex);
  return uuidFromHex(string.format("%08x%08x%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff)));
}

/** The correlation id: the client's, else one generated once for this request. */
function correlationId(this: void, header: string): string {
  const ctx = kong.ctx.plugin;
  const known = ctx.correlation_id as string | undefined;
  if (known !== undefined) return known;
  const incoming = kong.request.get_header(header);
  const id = hasText(incoming) ? incoming : generatedId();
  ctx.correlation_id = id;
  return id;
}

function fallbackLine(this: void, entry: KongSerializedLog, err: string | undefined): string {
  const [json] = cjson.encode({
    timestamp: timestamp(ngx.now()),
    level: "error",
    event: "request",
    request_id: entry.request?.id ?? "",
    response: { status: entry.response?.status },
    krs: { errors: [{ plugin: PLUGIN, message: `could not encode the log entry: ${err ?? "unknown error"}` }] },
  });
  return toUtf8(json ?? '{"event":"request","level":"error"}');
}

const handler: KongPluginHandler<LogConf> = {
  PRIORITY: 9,
  VERSION: SUITE_VERSION,

  // The request facts are recorded only while a reader (this plugin, redis-metrics) is configured.
  // Sinks no config uses any more are flushed and closed (issue 14: they leaked).
  configure(configs) {
    facts.setReader(PLUGIN, configs !== undefined && configs.length > 0);
    sinks.retain(configs);
  },

  access(conf) {
    const header = conf.correlation_header;
    if (!hasText(header)) return;
    // Forwarded as the client sent it, or generated: the upstream logs the same id.
    kong.service.request.set_header(header, correlationId(header));
  },

  log(conf) {
    const f = facts.get();
    const status = kong.response.get_status();
    const level = levelOf(status, f);
    if (conf.sample_rate < 1 && level !== "error" && math.random() >= conf.sample_rate) return;

    const entry = kong.log.serialize();
    const names = forRequest(baseOf(conf), conf.redact_headers, conf.redact_query);
    redactEntry(entry, names);
    const line = entry as unknown as Record<string, unknown>;
    line.timestamp = timestamp(ngx.now());
    line.level = level;
    line.event = "request";
    line.request_id = entry.request.id ?? "";
    if (hasText(conf.correlation_header)) line.correlation_id = correlationId(conf.correlation_header);
    line.krs = krsOf(f, breaker.openEndpoints(), sinks.droppedFor(conf));
    applyCustomFields(line, conf.custom_fields, names, kong.request.get_header, kong.response.get_header);

    const [encoded, err] = encodeObject(line as unknown as LuaTable<string, unknown>, HEAD, IS_HEAD, LAST);
    if (encoded !== undefined) sinks.push(conf, encoded);
    else sinks.push(conf, fallbackLine(entry, err));
  },
};

export = handler;

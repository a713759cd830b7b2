/**
 * structured-log's configuration: what goes in the line (correlation header, custom
 * fields, sampling), what is redacted, and the sink (file, redis-stream, stdout).
 */
import * as typedefs from "kong.db.schema.typedefs";
import { redisRecord } from "../../lib/redis/schema";
import { DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_QUERY, SINKS } from "./names";


function validateCustomField(this: void, field: LuaTable<string, unknown>): LuaMultiReturn<[true | undefined, string | undefined]> {
  let set = 0;
  for (const source of ["value", "request_header", "response_header"]) {
    const v = field.get(source);
    if (type(v) === "string") set++;
  }
  if (set !== 1) return $multi(undefined, "exactly one of value, request_header and response_header must be set");
  return $multi(true, undefined);
}

function validatePath(this: void, value: unknown): LuaMultiReturn<[true | undefined, string | undefined]> {
  // As Kong's file-log: a plain file name, nothing a shell or a template would expand.
  if (type(value) === "string" && string.find(value as string, "^[%w%._%-/]+$")[0] !== undefined) return $multi(true, undefined);
  return $multi(undefined, "not a valid filename");
}

const schema: KongPluginSchema = {
  name: "structured-log",
  fields: [
    { protocols: typedefs.protocols_http },
    {
      config: {
        type: "record",
        description: "One JSON line per request: Kong's kong.log.serialize() shape plus request_id, correlation id and what the suite's plugins did (krs), redacted, to a file, a Redis Stream or the nginx error log.",
        fields: [
          { sink: { type: "string", required: true, default: "file", one_of: SINKS, description: "Where lines go: `file` (path), `redis-stream` (stream_key on redis), `stdout` (the worker's standard output: the container's, as Kong's image runs nginx in the foreground)." } },
          { path: { type: "string", custom_validator: validatePath, description: "file: the file lines are appended to (created 0640, opened O_APPEND: workers never interleave within a line); a relative path is under the nginx prefix (the local gateway makes `plugin-logs/` writable by its workers). The directory must exist and be writable by the worker user." } },
          { reopen: { type: "boolean", required: true, default: false, description: "file: open and close the file at each flush (as Kong's file-log reopen), so a file logrotate moved away is recreated within flush_interval." } },
          { stream_key: { type: "string", required: true, default: "requests", match: "^[%w%._%-]+$", len_max: 64, description: "redis-stream: the stream's name; the key is `krs:structured-log:v1:{<name>}:stream`." } },
          { max_len: { type: "integer", required: true, default: 100000, between: [1, 100000000], description: "redis-stream: XADD MAXLEN ~ max_len: the stream keeps about this many entries." } },
          { stream_ttl: { type: "integer", required: true, default: 604800, between: [60, 31536000], description: "redis-stream: seconds the stream lives after its last write (EXPIRE renewed with each batch)." } },
          { max_queue: { type: "integer", required: true, default: 10000, between: [1, 1000000], description: "Lines a worker holds waiting for its sink; past it new lines are dropped, counted and reported once per interval." } },
          { batch_max: { type: "integer", required: true, default: 500, between: [1, 10000], description: "Lines per write (file) or per script call (redis-stream; at most 1000 per call)." } },
          { flush_interval: { type: "number", required: true, default: 0.5, between: [0.01, 60], description: "Seconds a line waits at most in its worker's queue." } },
          { correlation_header: { type: "string", description: "An incoming correlation header (e.g. X-Request-ID): kept and forwarded upstream, or generated (UUID) when absent; logged as correlation_id." } },
          { redact_headers: { type: "array", required: true, default: DEFAULT_REDACT_HEADERS, elements: { type: "string" }, description: "Request and response headers whose values are replaced by \"[REDACTED]\"; the header and query names the route's auth plugins read are added on the local gateway." } },
          { redact_query: { type: "array", required: true, default: DEFAULT_REDACT_QUERY, elements: { type: "string" }, description: "Query arguments whose values are replaced by \"[REDACTED]\" (in querystring, uri, url and upstream_uri)." } },
          { sample_rate: { type: "number", required: true, default: 1, between: [0, 1], description: "Share of requests logged; a 5xx or a request with plugin errors is always logged." } },
          {
            custom_fields: {
              type: "array",
              description: "Extra top-level fields: a static value, or a request or response header's value (redacted like the headers). No Lua code.",
              elements: {
                type: "record",
                fields: [
                  { name: { type: "string", required: true, match: "^[%w_%-]+$", description: "Field name in the line." } },
                  { value: { type: "string", description: "A static value." } },
                  { request_header: { type: "string", description: "The value of this request header." } },
                  { response_header: { type: "string", description: "The value of this response header." } },
                ],
                custom_validator: validateCustomField,
              },
            },
          },
          { redis: redisRecord() },
        ],
        entity_checks: [{ conditional: { if_field: "sink", if_match: { eq: "file" }, then_field: "path", then_match: { required: true } } }],
      },
    },
  ],
};

export = schema;

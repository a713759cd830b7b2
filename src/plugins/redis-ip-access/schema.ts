/**
 * redis-ip-access's configuration: Kong ip-restriction's fields (allow, deny, status,
 * message). Entries are validated by the parser the matcher uses (ip.ts), so an entry the
 * config accepts is one every worker can compile, and a refused one is named.
 */
import * as typedefs from "kong.db.schema.typedefs";
import { faultTolerantField, redisRecord } from "../../lib/redis/schema";
import { validateEntry } from "./ip";
import { MAX_LIST_NAME, validListName } from "./names";

function validateListName(this: void, value: unknown): LuaMultiReturn<[true | undefined, string | undefined]> {
  if (validListName(value)) return $multi(true, undefined);
  return $multi(undefined, `invalid list name: '${tostring(value)}' (letters, digits, '.', '_' and '-', at most ${MAX_LIST_NAME})`);
}

function listNames(this: void, description: string): SchemaField {
  return { type: "array", elements: { type: "string", custom_validator: validateListName }, description };
}

function faultTolerant(this: void): SchemaField {
  const field = faultTolerantField(true);
  field.description = "What a request does when this worker has never loaded one of its Redis lists (Redis unreachable since start): true lets it go on as if that list were absent (a deny list denies nobody, an allow list refuses nobody); false answers 500. A list loaded once keeps applying while Redis is down, whatever this says.";
  return field;
}

function entryList(this: void, description: string): SchemaField {
  return {
    type: "array",
    elements: { type: "string", custom_validator: validateEntry },
    description,
  };
}

const schema: KongPluginSchema = {
  name: "redis-ip-access",
  fields: [
    { protocols: typedefs.protocols_http },
    {
      config: {
        type: "record",
        description: "IP and CIDR allow and deny lists, as Kong's ip-restriction (deny wins over allow), plus shared lists in Redis compiled in every worker.",
        fields: [
          { allow: entryList("IPv4/IPv6 addresses and CIDRs allowed; when set, any other client is refused. An IPv4-mapped IPv6 client matches its IPv4 entries.") },
          { deny: entryList("IPv4/IPv6 addresses and CIDRs refused, even when allow matches them.") },
          {
            status: {
              type: "integer",
              between: [400, 599],
              description: "HTTP status of a refusal (default 403). Kong's response.error takes 4xx/5xx only, so others are refused here rather than failing at request time.",
            },
          },
          {
            message: {
              type: "string",
              description: "Message of a refusal (default Kong's `IP address not allowed: <client address>`).",
            },
          },
          { redis_allow_lists: listNames("Shared lists in Redis whose entries are allowed as if they were in allow (managed with `krs ip allow` or the Admin API). Naming one makes allow apply even while the lists are empty.") },
          { redis_deny_lists: listNames("Shared lists in Redis whose entries are denied as if they were in deny (managed with `krs ip deny`, the Admin API, or bans).") },
          {
            sync_interval: {
              type: "number",
              required: true,
              default: 1,
              between: [0.1, 60],
              description: "Seconds between a worker's version checks of each Redis list: the longest a change waits should its pub/sub message be lost.",
            },
          },
          {
            ban: {
              type: "record",
              required: true,
              description: "Automatic bans: a client that gets `threshold` responses with one of `statuses` within `window` seconds (counted across all nodes) is added to the Redis list `list` for `duration` seconds. That list then denies on every node (it is applied as a deny list even when redis_deny_lists does not name it; a config with bans only names it there, since one of allow, deny and the list fields must be set). threshold 0 (the default) turns bans off.",
              fields: [
                { statuses: { type: "array", required: true, default: [401, 403, 429], len_min: 1, elements: { type: "integer", between: [100, 599] }, description: "Response statuses that count." } },
                { threshold: { type: "integer", required: true, default: 0, between: [0, 1000000], description: "Counted responses that make a ban; 0: no bans." } },
                { window: { type: "integer", required: true, default: 60, between: [1, 86400], description: "Seconds the count runs from a client's first counted response." } },
                { duration: { type: "integer", required: true, default: 600, between: [1, 31536000], description: "Seconds a ban lasts." } },
                { list: { type: "string", required: true, default: "bans", custom_validator: validateListName, description: "The Redis list bans go to: keep it apart from hand-managed lists, since every ban reloads it on every worker." } },
              ],
            },
          },
          { fault_tolerant: faultTolerant() },
          { redis: redisRecord() },
        ],
      },
    },
  ],
  entity_checks: [{ at_least_one_of: ["config.allow", "config.deny", "config.redis_allow_lists", "config.redis_deny_lists"] }],
};

export = schema;

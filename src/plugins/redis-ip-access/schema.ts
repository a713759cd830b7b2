/**
 * redis-ip-access's configuration: Kong ip-restriction's fields (allow, deny, status,
 * message). Entries are validated by the parser the matcher uses (ip.ts), so an entry the
 * config accepts is one every worker can compile, and a refused one is named.
 */
import * as typedefs from "kong.db.schema.typedefs";
import { validateEntry } from "./ip";

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
        description: "IP and CIDR allow and deny lists, as Kong's ip-restriction: deny wins over allow.",
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
        ],
      },
    },
  ],
  entity_checks: [{ at_least_one_of: ["config.allow", "config.deny"] }],
};

export = schema;

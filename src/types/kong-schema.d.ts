/**
 * Kong's schema DSL (kong/db/schema), the subset plugin schemas here use, and
 * `kong.db.schema.typedefs`. A schema is `{ name, fields: [{ field_name: FieldDef }], entity_checks }`.
 */

declare type SchemaFieldType = "string" | "number" | "integer" | "boolean" | "array" | "set" | "map" | "record" | "foreign";

declare interface SchemaField {
  type: SchemaFieldType;
  description?: string;
  required?: boolean;
  default?: unknown;
  one_of?: (string | number)[];
  between?: [number, number];
  gt?: number;
  len_min?: number;
  len_max?: number;
  match?: string;
  elements?: SchemaField;
  keys?: SchemaField;
  values?: SchemaField;
  fields?: SchemaFieldEntry[];
  referenceable?: boolean;
  encrypted?: boolean;
  eq?: unknown;
  /** Returns true, or nil plus a message. */
  custom_validator?: (value: any) => LuaMultiReturn<[true | undefined, string | undefined]> | true;
  /** Record-level checks (only on records). */
  entity_checks?: SchemaEntityCheck[];
}

/** One entry of a `fields` array: `{ name = def }`. */
declare type SchemaFieldEntry = { [name: string]: SchemaField };

declare interface SchemaEntityCheck {
  at_least_one_of?: string[];
  only_one_of?: string[];
  mutually_exclusive?: string[];
  mutually_required?: string[];
  mutually_exclusive_sets?: { set1: string[]; set2: string[] };
  conditional?: { if_field: string; if_match: { eq?: unknown; one_of?: unknown[]; ne?: unknown }; then_field: string; then_match: { required?: boolean; one_of?: unknown[]; eq?: unknown } };
  custom_entity_check?: { field_sources: string[]; fn: (entity: any) => LuaMultiReturn<[true | undefined, string | undefined]> | true };
}

declare interface KongPluginSchema {
  name: string;
  fields: SchemaFieldEntry[];
  entity_checks?: SchemaEntityCheck[];
}

declare module "kong.db.schema.typedefs" {
  /** @noSelf */
  interface Typedefs {
    /** A plugin that cannot be scoped to a consumer. */
    no_consumer: SchemaField;
    no_route: SchemaField;
    no_service: SchemaField;
    protocols_http: SchemaField;
    host: SchemaField;
    port: SchemaField;
    /** A header name. */
    header_name: SchemaField;
    /** An absolute path ("/..."). */
    path: SchemaField;
    ip_or_cidr: SchemaField;
    uuid: SchemaField;
  }
  const typedefs: Typedefs;
  export = typedefs;
}

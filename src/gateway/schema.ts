/**
 * Kong's schema validator for plugin entities (semantics and messages of Kong 3.x
 * kong/db/schema/init.lua): defaults filled, types and constraints checked, entity checks
 * run, errors named by field path. Used by the gateway's config loader and the CLI
 * validator, so it needs plain LuaJIT and cjson only: no ngx here.
 *
 * Errors are flat: "config.redis.port" -> "value should be between 0 and 65535", array
 * elements by position ("config.names.2"), entity checks at "@entity" ("config.@entity"
 * for a record's own checks).
 */
import cjson = require("cjson.safe");
import typedefs = require("./kong/db/schema/typedefs");

const find = string.find;
const sub = string.sub;
const match = string.match;
const floor = math.floor;
const concat = table.concat;

/** cjson.null and ngx.null are the same light userdata (NULL). */
const NULL: unknown = cjson.null;
const ARRAY_MT = cjson.array_mt;
const HUGE = math.huge;

/** Flattened field errors: "config.minute" -> "expected a number"; "@entity" for entity checks. */
export type FieldErrors = LuaTable<string, string>;

type Table = LuaTable<AnyNotNil, unknown>;

const REQUIRED = "required field missing";
const ENTITY = "@entity";

/** Kong attributes the shared declarations (src/types/kong-schema.d.ts) leave out. */
interface MatchRule {
  pattern: string;
  err: string;
}

interface FieldDef extends SchemaField {
  ne?: unknown;
  not_one_of?: (string | number)[];
  len_eq?: number;
  starts_with?: string;
  not_match?: string;
  match_all?: MatchRule[];
  match_none?: MatchRule[];
  match_any?: { patterns: string[]; err: string };
  contains?: unknown;
  uuid?: boolean;
  timestamp?: boolean;
  mutually_exclusive_subsets?: unknown[][];
  /** Replaces the message of a failed validator. */
  err?: string;
  elements?: FieldDef;
  keys?: FieldDef;
  values?: FieldDef;
  entity_checks?: SchemaEntityCheck[];
}

/** The argument of one entity check; list checks (at_least_one_of, ...) are plain arrays. */
interface CheckArg {
  if_field?: string;
  if_match?: FieldDef;
  then_field?: string;
  then_match?: FieldDef;
  then_err?: string;
  then_at_least_one_of?: string[];
  else_match?: FieldDef;
  else_then_at_least_one_of?: string[];
  else_then_err?: string;
  field_sources?: string[];
  fn?: (entity: unknown) => unknown;
  set1?: string[];
  set2?: string[];
  run_with_missing_fields?: boolean;
  run_with_invalid_fields?: boolean;
}

interface Ctx {
  errors: FieldErrors;
  count: number;
}

/** Where an entity check runs: the record's fields, its path, the error sink. */
interface Scope {
  ctx: Ctx;
  fields: SchemaFieldEntry[];
  path: string;
}

/** A failed entity check: `detail` goes into the checker's message, `message` replaces it. */
interface CheckFailure {
  detail?: string;
  message?: string;
}

interface Checker {
  runWithMissing: boolean;
  runWithInvalid: boolean;
  /** Keys of the argument naming the fields; absent: the argument is the field list. */
  sources?: string[];
  /** Sources whose fields must be present for the check to run. */
  required?: string[];
  /** Kong's message; `%s` takes the failure's detail. */
  message?: string;
  fn: (this: void, entity: Table, arg: CheckArg, scope: Scope) => CheckFailure | undefined;
}

/** pcall with the callee's results spread: (ok, result1, result2). */
const protect = pcall as unknown as (
  this: void,
  f: unknown,
  ...args: unknown[]
) => LuaMultiReturn<[boolean, unknown, unknown]>;

// Small helpers -------------------------------------------------------------------------

function join(prefix: string, name: string): string {
  return prefix === "" ? name : prefix + "." + name;
}

function addError(ctx: Ctx, path: string, message: string): void {
  if (ctx.errors.get(path) === undefined) {
    ctx.errors.set(path, message);
    ctx.count++;
  }
}

function setError(ctx: Ctx, path: string, message: string): void {
  if (ctx.errors.get(path) === undefined) ctx.count++;
  ctx.errors.set(path, message);
}

function addEntityError(ctx: Ctx, path: string, message: string): void {
  const key = join(path, ENTITY);
  const previous = ctx.errors.get(key);
  if (previous === undefined) ctx.count++;
  ctx.errors.set(key, previous === undefined ? message : previous + "; " + message);
}

/** Is there an error at `path` or anywhere under it? */
function hasErrorAt(ctx: Ctx, path: string): boolean {
  const prefix = path + ".";
  const n = prefix.length;
  for (const [k] of pairs(ctx.errors)) {
    if (k === path || sub(k, 1, n) === prefix) return true;
  }
  return false;
}

function deepCopy(value: unknown): unknown {
  if (type(value) !== "table") return value;
  const out = new LuaTable<AnyNotNil, unknown>();
  for (const [k, v] of pairs(value as Table)) out.set(k, deepCopy(v));
  const mt = getmetatable(value as object);
  if (mt !== undefined) setmetatable(out, mt as LuaMetatable<Table>);
  return out;
}

/** Kong's is_sequence: only positive integer keys 1..n, no holes (an empty table is one). */
function isSequence(t: Table): boolean {
  let count = 0;
  let max = 0;
  for (const [k] of pairs(t)) {
    count++;
    if (t.get(count) === undefined) return false;
    if (type(k) !== "number" || (k as number) < 0 || floor(k as number) !== k) return false;
    if ((k as number) > max) max = k as number;
  }
  return count === max;
}

/** Kong's is_nonempty: not nil/null, not an empty table, not "". */
function isNonEmpty(value: unknown): boolean {
  if (value === undefined || value === NULL || value === "") return false;
  if (type(value) === "table" && next(value as Table)[0] === undefined) return false;
  return true;
}

/** `t.a.b` for the path "a.b"; nil through anything that is not a table. */
function getField(t: unknown, name: string): unknown {
  if (type(t) !== "table") return undefined;
  const [dot] = find(name, ".", 1, true);
  if (dot === undefined) return (t as Table).get(name);
  return getField((t as Table).get(sub(name, 1, dot - 1)), sub(name, dot + 1));
}

function setField(t: Table, name: string, value: unknown): void {
  const [dot] = find(name, ".", 1, true);
  if (dot === undefined) {
    t.set(name, value);
    return;
  }
  const head = sub(name, 1, dot - 1);
  let inner = t.get(head);
  if (type(inner) !== "table") {
    inner = new LuaTable();
    t.set(head, inner);
  }
  setField(inner as Table, sub(name, dot + 1), value);
}

function fieldNamed(fields: SchemaFieldEntry[], name: string): FieldDef | undefined {
  for (const entry of fields) {
    const def = entry[name];
    if (def !== undefined) return def as FieldDef;
  }
  return undefined;
}

/** The definition of "a.b" in a record's fields, through nested records. */
function schemaField(fields: SchemaFieldEntry[], name: string): FieldDef | undefined {
  const [dot] = find(name, ".", 1, true);
  if (dot === undefined) return fieldNamed(fields, name);
  const outer = fieldNamed(fields, sub(name, 1, dot - 1));
  if (outer === undefined || outer.fields === undefined) return undefined;
  return schemaField(outer.fields, sub(name, dot + 1));
}

function quotedList(names: unknown[]): string {
  const parts: string[] = [];
  for (const name of names) {
    parts[parts.length] = type(name) === "table" ? "(" + quotedList(name as unknown[]) + ")" : "'" + tostring(name) + "'";
  }
  return concat(parts, ", ");
}

function listOf(values: unknown[]): string {
  const parts: string[] = [];
  for (const v of values) parts[parts.length] = tostring(v);
  return concat(parts, ", ");
}

/** Integers as Kong's `%d` prints them; anything else as tostring does. */
function num(n: number): string {
  return n === floor(n) && n !== HUGE && n !== -HUGE ? string.format("%d", n) : tostring(n);
}

function matches(value: unknown, pattern: string): boolean {
  const t = type(value);
  if (t !== "string" && t !== "number") return false;
  return match(tostring(value), pattern)[0] !== undefined;
}

// Field validators, in Kong's order ------------------------------------------------------

function lengthOf(field: FieldDef, value: unknown): number {
  if (type(value) === "string") return (value as string).length;
  if (field.type === "map") {
    let n = 0;
    for (const [_k] of pairs(value as Table)) n++;
    return n;
  }
  return (value as Table).length();
}

function sameType(a: unknown, b: unknown): boolean {
  return type(a) === type(b);
}

/** Runs the constraint attributes of `field` on a type-correct value: the first failure's message. */
function checkConstraints(field: FieldDef, value: unknown): string | undefined {
  if (field.eq !== undefined && value !== field.eq) return "value must be " + tostring(field.eq);
  if (field.ne !== undefined && value === field.ne) return "value must not be " + tostring(value);
  if (field.not_one_of !== undefined) {
    for (const option of field.not_one_of) if (value === option) return "must not be one of: " + listOf(field.not_one_of);
  }
  if (field.one_of !== undefined) {
    let found = false;
    for (const option of field.one_of) {
      if (value === option) {
        found = true;
        break;
      }
    }
    if (!found) return "expected one of: " + listOf(field.one_of);
  }
  if (field.gt !== undefined && sameType(value, field.gt) && !((value as number) > field.gt)) {
    return "value must be greater than " + tostring(field.gt);
  }
  if (field.timestamp === true && type(value) === "number" && !((value as number) > 0)) return "expected a valid timestamp";
  if (field.uuid === true && !(type(value) === "string" && (value as string).length === 36 &&
    matches(value, "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"))) {
    return "expected a valid UUID";
  }
  if (field.between !== undefined && type(value) === "number") {
    const [lo, hi] = [field.between[0], field.between[1]];
    if ((value as number) < lo || (value as number) > hi) return "value should be between " + num(lo) + " and " + num(hi);
  }
  const lenMin = field.len_min ?? (field.type === "string" ? 1 : undefined);
  if (field.len_eq !== undefined || lenMin !== undefined || field.len_max !== undefined) {
    const len = lengthOf(field, value);
    if (field.len_eq !== undefined && len !== field.len_eq) return "length must be " + num(field.len_eq);
    if (lenMin !== undefined && len < lenMin) return "length must be at least " + num(lenMin);
    if (field.len_max !== undefined && len > field.len_max) return "length must be at most " + num(field.len_max);
  }
  if (field.starts_with !== undefined && type(value) === "string" &&
    sub(value as string, 1, field.starts_with.length) !== field.starts_with) {
    return "should start with: " + field.starts_with;
  }
  if (field.not_match !== undefined && matches(value, field.not_match)) return "invalid value: " + tostring(value);
  if (field.match_none !== undefined) {
    for (const rule of field.match_none) if (matches(value, rule.pattern)) return rule.err;
  }
  if (field.match !== undefined && !matches(value, field.match)) return "invalid value: " + tostring(value);
  if (field.match_all !== undefined) {
    for (const rule of field.match_all) if (!matches(value, rule.pattern)) return rule.err;
  }
  if (field.match_any !== undefined) {
    let any = false;
    for (const pattern of field.match_any.patterns) {
      if (matches(value, pattern)) {
        any = true;
        break;
      }
    }
    if (!any) return field.match_any.err;
  }
  if (field.contains !== undefined && type(value) === "table") {
    let found = false;
    for (const item of value as unknown[]) {
      if (item === field.contains) {
        found = true;
        break;
      }
    }
    if (!found) return "expected to contain: " + tostring(field.contains);
  }
  if (field.custom_validator !== undefined) {
    const [called, ok, err] = protect(field.custom_validator, value);
    if (!called) return tostring(ok);
    if (ok === undefined || ok === false) return err !== undefined ? tostring(err) : "failed validating: " + tostring(value);
  }
  if (field.mutually_exclusive_subsets !== undefined && type(value) === "table") {
    const owner = new LuaTable<AnyNotNil, unknown[]>();
    for (const subset of field.mutually_exclusive_subsets) for (const el of subset) owner.set(el as AnyNotNil, subset);
    const seen = new LuaTable<unknown[], boolean>();
    const hit: unknown[][] = [];
    for (const v of value as unknown[]) {
      const subset = owner.get(v as AnyNotNil);
      if (subset !== undefined && !seen.has(subset)) {
        seen.set(subset, true);
        hit[hit.length] = subset;
      }
    }
    if (hit.length > 1) return "these sets are mutually exclusive: " + quotedList(hit);
  }
  return undefined;
}

// Values --------------------------------------------------------------------------------

/** What a missing field becomes: its default, an expanded record, null, or nil when required. */
function missingValue(field: FieldDef): unknown {
  if (field.default !== undefined) return deepCopy(field.default);
  if (field.type === "record") return new LuaTable();
  if (field.required === true) return undefined;
  return NULL;
}

/**
 * Fills defaults in and validates one value. Returns the processed copy (null stays
 * NULL until the end); errors go to `ctx`. Elements, keys and map values are required.
 * A value that fails its type comes back as given: entity checks still see it, as in Kong.
 */
function checkValue(ctx: Ctx, field: FieldDef, value: unknown, path: string, required: boolean): unknown {
  if (value === NULL) {
    if (field.ne === NULL) addError(ctx, path, field.err ?? "value must not be null");
    else if (field.eq !== undefined && field.eq !== NULL) addError(ctx, path, "value must be " + tostring(field.eq));
    else if (required || field.required === true) addError(ctx, path, REQUIRED);
    return NULL;
  }
  if (field.eq === NULL) {
    addError(ctx, path, field.err ?? "value must be null");
    return value;
  }
  const before = ctx.count;
  const kind = field.type;
  const vtype = type(value);
  let out = value;
  if (kind === "array" || kind === "set") {
    if (vtype !== "table" || !isSequence(value as Table)) {
      addError(ctx, path, kind === "array" ? "expected an array" : "expected a set");
      return value;
    }
    if (field.elements === undefined) {
      addError(ctx, path, "error in schema definition: missing attribute elements");
      return value;
    }
    out = checkElements(ctx, field.elements, value as Table, path, kind === "set");
  } else if (kind === "map") {
    if (vtype !== "table") {
      addError(ctx, path, "expected a map");
      return value;
    }
    if (field.keys === undefined || field.values === undefined) {
      addError(ctx, path, "error in schema definition: missing attribute " + (field.keys === undefined ? "keys" : "values"));
      return value;
    }
    const copy = new LuaTable<AnyNotNil, unknown>();
    for (const [k, v] of pairs(value as Table)) {
      const at = join(path, tostring(k));
      const key = checkValue(ctx, field.keys, k, at, true);
      const item = checkValue(ctx, field.values, v, at, true);
      if (key !== undefined && key !== NULL) copy.set(key as AnyNotNil, item);
    }
    out = copy;
  } else if (kind === "record") {
    if (vtype !== "table") {
      addError(ctx, path, "expected a record");
      return value;
    }
    out = checkRecord(ctx, field.fields ?? [], field.entity_checks, value as Table, path);
  } else if (kind === "foreign") {
    // A reference: `{ id = ... }` as Kong stores it, or a name/id string as declarative files write it.
    if (vtype !== "table" && vtype !== "string") {
      addError(ctx, path, "expected a record");
      return value;
    }
    out = deepCopy(value);
  } else if (kind === "integer") {
    if (vtype !== "number" || floor(value as number) !== value || value === HUGE || value === -HUGE) {
      addError(ctx, path, "expected an integer");
      return value;
    }
  } else if (kind === "number" || kind === "string" || kind === "boolean") {
    // NaN and infinities come from JSON bodies (NaN, Infinity, 1e309): no JSON can carry
    // them back out (GET, the persisted state), so they are no numbers here.
    if (vtype !== kind || (kind === "number" && (value !== value || value === HUGE || value === -HUGE))) {
      addError(ctx, path, kind === "number" ? "expected a number" : kind === "string" ? "expected a string" : "expected a boolean");
      return value;
    }
    // A vault reference stands for a value only known when it is resolved: no validators.
    if (kind === "string" && field.referenceable === true && isReference(value)) return value;
  } else {
    addError(ctx, path, "invalid type: " + tostring(kind));
    return value;
  }
  // Like Kong, an aggregate whose parts failed is not checked as a whole.
  if (ctx.count !== before) return out;
  const err = checkConstraints(field, out);
  if (err !== undefined) addError(ctx, path, field.err ?? err);
  return out;
}

function checkElements(ctx: Ctx, elements: FieldDef, value: Table, path: string, unique: boolean): Table {
  const out = new LuaTable<AnyNotNil, unknown>();
  const seen = unique ? new LuaTable<AnyNotNil, boolean>() : undefined;
  let j = 0;
  const n = value.length();
  for (let i = 1; i <= n; i++) {
    const v = value.get(i) as AnyNotNil;
    if (seen !== undefined) {
      if (seen.has(v)) continue;
      seen.set(v, true);
    }
    j++;
    // Paths name the element's position in the input, duplicates included.
    out.set(j, checkValue(ctx, elements, v, join(path, tostring(i)), true));
  }
  if (ARRAY_MT !== undefined) setmetatable(out, ARRAY_MT as LuaMetatable<Table>);
  return out;
}

function checkRecord(ctx: Ctx, fields: SchemaFieldEntry[], checks: SchemaEntityCheck[] | undefined, input: Table, path: string): Table {
  const out = new LuaTable<AnyNotNil, unknown>();
  for (const [k] of pairs(input)) {
    const name = tostring(k);
    if (fieldNamed(fields, name) === undefined) addError(ctx, join(path, name), "unknown field");
  }
  for (const entry of fields) {
    for (const [name, def] of pairs(entry)) {
      const field = def as FieldDef;
      const at = join(path, name as string);
      let value = input.get(name);
      if (value === undefined) value = missingValue(field);
      if (value === undefined) addError(ctx, at, REQUIRED);
      else out.set(name, checkValue(ctx, field, value, at, false));
    }
  }
  if (checks !== undefined) runEntityChecks({ ctx, fields, path }, checks, out);
  return out;
}

// Entity checks -------------------------------------------------------------------------

/** Does `value` pass `test`, with the attributes `test` lacks taken from the field's definition? */
function passes(scope: Scope, name: string, test: FieldDef, value: unknown): LuaMultiReturn<[boolean, string | undefined]> {
  const merged = new LuaTable<string, unknown>();
  const base = schemaField(scope.fields, name);
  if (base !== undefined) for (const [k, v] of pairs(base as unknown as LuaTable<string, unknown>)) merged.set(k, v);
  for (const [k, v] of pairs(test as unknown as LuaTable<string, unknown>)) merged.set(k, v);
  const scratch: Ctx = { errors: new LuaTable(), count: 0 };
  checkValue(scratch, merged as unknown as FieldDef, value === undefined ? NULL : value, "", false);
  if (scratch.count === 0) return $multi(true, undefined);
  const own = scratch.errors.get("");
  return $multi(false, own ?? (next(scratch.errors)[1] as string));
}

function anyNonEmpty(entity: Table, names: string[]): boolean {
  for (const name of names) if (isNonEmpty(getField(entity, name))) return true;
  return false;
}

function nonEmptyOf(entity: Table, names: string[]): string[] {
  const out: string[] = [];
  for (const name of names) if (isNonEmpty(getField(entity, name))) out[out.length] = name;
  return out;
}

function formatted(template: string | undefined, detail: string): string | undefined {
  return template !== undefined ? string.format(template, detail) : undefined;
}

const CHECKERS = new LuaTable<string, Checker>();

CHECKERS.set("at_least_one_of", {
  runWithMissing: true,
  runWithInvalid: true,
  message: "at least one of these fields must be non-empty: %s",
  fn: (entity, arg) => {
    const names = arg as unknown as string[];
    return anyNonEmpty(entity, names) ? undefined : { detail: quotedList(names) };
  },
});

CHECKERS.set("conditional_at_least_one_of", {
  runWithMissing: true,
  runWithInvalid: true,
  sources: ["if_field", "then_at_least_one_of", "else_then_at_least_one_of"],
  message: "at least one of these fields must be non-empty: %s",
  fn: (entity, arg, scope) => {
    const ifField = arg.if_field!;
    const value = getField(entity, ifField);
    if (value === undefined) return undefined;
    if (!passes(scope, ifField, arg.if_match ?? {} as FieldDef, value)[0]) {
      if (arg.else_match === undefined || !passes(scope, ifField, arg.else_match, value)[0]) return undefined;
      const names = arg.else_then_at_least_one_of ?? [];
      if (anyNonEmpty(entity, names)) return undefined;
      const list = quotedList(names);
      return { detail: list, message: formatted(arg.else_then_err, list) };
    }
    const names = arg.then_at_least_one_of ?? [];
    if (anyNonEmpty(entity, names)) return undefined;
    const list = quotedList(names);
    return { detail: list, message: formatted(arg.then_err, list) };
  },
});

CHECKERS.set("only_one_of", {
  runWithMissing: false,
  runWithInvalid: true,
  message: "exactly one of these fields must be non-empty: %s",
  fn: (entity, arg) => {
    const names = arg as unknown as string[];
    return nonEmptyOf(entity, names).length === 1 ? undefined : { detail: quotedList(names) };
  },
});

CHECKERS.set("distinct", {
  runWithMissing: false,
  runWithInvalid: true,
  message: "values of these fields must be distinct: %s",
  fn: (entity, arg) => {
    const names = arg as unknown as string[];
    const seen = new LuaTable<AnyNotNil, boolean>();
    for (const name of names) {
      const value = getField(entity, name);
      if (isNonEmpty(value)) {
        if (seen.has(value as AnyNotNil)) return { detail: quotedList(names) };
        seen.set(value as AnyNotNil, true);
      }
    }
    return undefined;
  },
});

CHECKERS.set("conditional", {
  runWithMissing: false,
  runWithInvalid: true,
  sources: ["if_field", "then_field"],
  required: ["if_field"],
  message: "failed conditional validation given value of field '%s'",
  fn: (entity, arg, scope) => {
    const ifField = arg.if_field!;
    const thenField = arg.then_field!;
    const thenMatch = arg.then_match ?? {} as FieldDef;
    if (!passes(scope, ifField, arg.if_match ?? {} as FieldDef, getField(entity, ifField))[0]) return undefined;
    const thenValue = getField(entity, thenField);
    if (thenMatch.required === true && (thenValue === undefined || thenValue === NULL)) {
      setError(scope.ctx, join(scope.path, thenField), REQUIRED);
      return { detail: ifField };
    }
    const [ok, err] = passes(scope, thenField, thenMatch, thenValue);
    if (ok) return undefined;
    setError(scope.ctx, join(scope.path, thenField), err!);
    return { detail: ifField, message: formatted(arg.then_err, ifField) };
  },
});

CHECKERS.set("custom_entity_check", {
  runWithMissing: false,
  runWithInvalid: false,
  sources: ["field_sources"],
  required: ["field_sources"],
  fn: (entity, arg) => {
    const [called, ok, err] = protect(arg.fn, entity);
    if (!called) return { detail: tostring(ok) };
    if (ok !== undefined && ok !== false) return undefined;
    return { detail: err !== undefined ? tostring(err) : "failed entity check: custom_entity_check" };
  },
});

CHECKERS.set("mutually_required", {
  runWithMissing: true,
  runWithInvalid: false,
  message: "all or none of these fields must be set: %s",
  fn: (entity, arg) => {
    const names = arg as unknown as string[];
    const n = nonEmptyOf(entity, names).length;
    return n === 0 || n === names.length ? undefined : { detail: quotedList(names) };
  },
});

CHECKERS.set("mutually_exclusive", {
  runWithMissing: true,
  runWithInvalid: false,
  message: "only one or none of these fields must be set: %s",
  fn: (entity, arg) => {
    const names = arg as unknown as string[];
    return nonEmptyOf(entity, names).length <= 1 ? undefined : { detail: quotedList(names) };
  },
});

CHECKERS.set("mutually_exclusive_sets", {
  runWithMissing: true,
  runWithInvalid: false,
  sources: ["set1", "set2"],
  message: "these sets are mutually exclusive: %s",
  fn: (entity, arg) => {
    const first = nonEmptyOf(entity, arg.set1 ?? []);
    const second = nonEmptyOf(entity, arg.set2 ?? []);
    if (first.length === 0 || second.length === 0) return undefined;
    return { detail: "(" + quotedList(first) + "), (" + quotedList(second) + ")" };
  },
});

function runEntityCheck(scope: Scope, name: string, arg: CheckArg, entity: Table): void {
  const { ctx, path } = scope;
  const checker = CHECKERS.get(name);
  if (checker === undefined) {
    addEntityError(ctx, path, "unknown entity check: " + name);
    return;
  }
  const names: string[] = [];
  const required = new LuaTable<string, boolean>();
  if (checker.sources === undefined) {
    for (const fname of arg as unknown as string[]) {
      names[names.length] = fname;
      required.set(fname, true);
    }
  } else {
    const args = arg as unknown as LuaTable<string, unknown>;
    for (const source of checker.sources) {
      let mandatory = false;
      if (checker.required !== undefined) for (const r of checker.required) if (r === source) mandatory = true;
      const v = args.get(source);
      const list = type(v) === "string" ? [v as string] : type(v) === "table" ? (v as string[]) : [];
      for (const fname of list) {
        names[names.length] = fname;
        if (mandatory) required.set(fname, true);
      }
    }
  }
  const runWithMissing = checker.runWithMissing || arg.run_with_missing_fields === true;
  const runWithInvalid = checker.runWithInvalid || arg.run_with_invalid_fields === true;
  const input = new LuaTable<AnyNotNil, unknown>();
  const missing: string[] = [];
  let allNil = true;
  let allValid = true;
  for (const fname of names) {
    const value = getField(entity, fname);
    if (value === undefined) {
      if (!runWithMissing && required.has(fname)) missing[missing.length] = fname;
    } else {
      allNil = false;
    }
    if (hasErrorAt(ctx, join(path, fname))) allValid = false;
    setField(input, fname, value);
  }
  if (!allValid && !runWithInvalid) return;
  if (allNil && !runWithMissing) return;
  if (missing.length > 0) {
    for (const fname of missing) addError(ctx, join(path, fname), "field required for entity check");
    return;
  }
  const failure = checker.fn(input, arg, scope);
  if (failure === undefined) return;
  let message = failure.message;
  if (message === undefined) {
    const detail = failure.detail ?? "";
    message = checker.message !== undefined ? string.format(checker.message, detail) : detail;
  }
  addEntityError(ctx, path, message !== "" ? message : "failed entity check: " + name);
}

function runEntityChecks(scope: Scope, checks: SchemaEntityCheck[], entity: Table): void {
  for (const check of checks) {
    for (const [name, arg] of pairs(check as unknown as LuaTable<string, unknown>)) {
      if (arg !== NULL) runEntityCheck(scope, name, arg as CheckArg, entity);
    }
  }
}

// Plugin entities -----------------------------------------------------------------------

function reference(): FieldDef {
  return { type: "foreign" };
}

/** Kong's plugin entity fields (kong/db/schema/entities/plugins.lua), in its order. */
function baseFields(): [string, FieldDef][] {
  return [
    ["id", typedefs.uuid as FieldDef],
    ["name", { type: "string", required: true }],
    ["instance_name", typedefs.utf8_name as FieldDef],
    ["created_at", { type: "integer" }],
    ["updated_at", { type: "integer" }],
    ["route", reference()],
    ["service", reference()],
    ["consumer", reference()],
    ["config", { type: "record", required: true, fields: [] }],
    ["protocols", typedefs.protocols as FieldDef],
    ["enabled", { type: "boolean", required: true, default: true }],
    ["tags", typedefs.tags as FieldDef],
  ];
}

function entry(name: string, field: FieldDef): SchemaFieldEntry {
  const e: SchemaFieldEntry = {};
  e[name] = field;
  return e;
}

/** A plugin's top-level field list: Kong's plugin entity with the plugin schema's fields on top. */
const combined = setmetatable(new LuaTable<KongPluginSchema, SchemaFieldEntry[]>(), { __mode: "k" });

function pluginFields(schema: KongPluginSchema): SchemaFieldEntry[] {
  const cached = combined.get(schema);
  if (cached !== undefined) return cached;
  const own = schema.fields ?? [];
  const fields: SchemaFieldEntry[] = [];
  const taken = new LuaTable<string, boolean>();
  for (const [name, base] of baseFields()) {
    let field = fieldNamed(own, name) ?? base;
    // A plugin always has a config: a schema's optional `config` record still may not be null.
    if (name === "config" && field.required !== true) {
      const copy = new LuaTable<string, unknown>();
      for (const [k, v] of pairs(field as unknown as LuaTable<string, unknown>)) copy.set(k, v);
      copy.set("required", true);
      field = copy as unknown as FieldDef;
    }
    fields[fields.length] = entry(name, field);
    taken.set(name, true);
  }
  for (const e of own) {
    for (const [name, def] of pairs(e)) {
      if (!taken.has(name as string)) fields[fields.length] = entry(name as string, def as FieldDef);
    }
  }
  combined.set(schema, fields);
  return fields;
}

/** Output has no nulls: a null field is an absent one. */
function stripNulls(t: Table): void {
  for (const [k, v] of pairs(t)) {
    if (v === NULL) t.set(k, undefined);
    else if (type(v) === "table") stripNulls(v as Table);
  }
}

/**
 * Validate a plugin entity table `{ name, config, protocols, ... }` (as decoded from JSON)
 * against a plugin schema. Returns the entity with defaults filled in (a new table;
 * input not mutated), or undefined plus the errors.
 */
export function validatePlugin(
  schema: KongPluginSchema,
  entity: LuaTable | LuaTable<string, unknown>,
): LuaMultiReturn<[LuaTable | undefined, FieldErrors | undefined]> {
  const ctx: Ctx = { errors: new LuaTable(), count: 0 };
  if (type(entity) !== "table") {
    addEntityError(ctx, "", "expected an input table");
    return $multi(undefined, ctx.errors);
  }
  const out = checkRecord(ctx, pluginFields(schema), schema.entity_checks, entity as Table, "");
  if (ctx.count > 0) return $multi(undefined, ctx.errors);
  stripNulls(out);
  return $multi(out as LuaTable, undefined);
}

/** Path order: segment by segment, positions numerically ("x.2" before "x.10"). */
function pathLess(a: string, b: string): boolean {
  let i = 1;
  let j = 1;
  for (;;) {
    const [ea] = find(a, ".", i, true);
    const [eb] = find(b, ".", j, true);
    const sa = sub(a, i, ea !== undefined ? ea - 1 : -1);
    const sb = sub(b, j, eb !== undefined ? eb - 1 : -1);
    if (sa !== sb) {
      const na = tonumber(sa);
      const nb = tonumber(sb);
      if (na !== undefined && nb !== undefined) return na < nb;
      return sa < sb;
    }
    if (ea === undefined || eb === undefined) return ea === undefined && eb !== undefined;
    i = ea + 1;
    j = eb + 1;
  }
}

/** One line, fields sorted: "config.minute: expected a number; config.hour: ..." */
export function formatErrors(errors: FieldErrors): string {
  const keys: string[] = [];
  for (const [k] of pairs(errors)) keys[keys.length] = k;
  table.sort(keys, pathLess);
  const parts: string[] = [];
  for (const k of keys) {
    const message = errors.get(k);
    if (k === ENTITY) parts[parts.length] = message;
    else if (sub(k, -ENTITY.length - 1) === "." + ENTITY) parts[parts.length] = sub(k, 1, -ENTITY.length - 2) + ": " + message;
    else parts[parts.length] = k + ": " + message;
  }
  return concat(parts, "; ");
}

// Vault references -----------------------------------------------------------------------

/** Kong's kong.vault.is_reference: "{vault://...}". */
export function isReference(value: unknown): boolean {
  return type(value) === "string" && sub(value as string, 1, 9) === "{vault://" && sub(value as string, -1) === "}";
}

type Deref = (this: void, reference: string) => string;

function resolveIn(fields: SchemaFieldEntry[], record: Table, deref: Deref): void {
  let refs: Table | undefined;
  for (const entry of fields) {
    for (const [name, def] of pairs(entry)) {
      const field = def as FieldDef;
      const value = record.get(name);
      if (type(value) === "string") {
        if (field.type === "string" && field.referenceable === true && isReference(value)) {
          refs = refs ?? new LuaTable();
          refs.set(name, value);
          record.set(name, deref(value as string));
        }
      } else if (type(value) === "table") {
        const inner = field.type === "array" || field.type === "set" ? field.elements : field.type === "map" ? field.values : undefined;
        if (field.type === "record") {
          resolveIn(field.fields ?? [], value as Table, deref);
        } else if (inner !== undefined && inner.type === "string" && inner.referenceable === true) {
          for (const [k, v] of pairs(value as Table)) {
            if (!isReference(v)) continue;
            refs = refs ?? new LuaTable();
            const at = (refs.get(name) as Table | undefined) ?? new LuaTable();
            refs.set(name, at);
            at.set(k, v);
            (value as Table).set(k, deref(v as string));
          }
        }
      }
    }
  }
  if (refs !== undefined) record.set("$refs", refs);
}

/**
 * As Kong does when it reads a plugin: every vault reference in a referenceable string
 * field (or array, set or map of them) of a validated entity is replaced by `deref(ref)`,
 * and the record that held it keeps the reference under "$refs" (in place).
 */
export function resolveReferences(schema: KongPluginSchema, entity: Table, deref: Deref): void {
  resolveIn(pluginFields(schema), entity, deref);
}

/** A copy with the references put back where resolveReferences replaced them ("$refs" gone). */
export function withReferences(value: unknown): unknown {
  if (type(value) !== "table") return value;
  const out = new LuaTable<AnyNotNil, unknown>();
  for (const [k, v] of pairs(value as Table)) if (k !== "$refs") out.set(k, withReferences(v));
  const refs = (value as Table).get("$refs");
  if (type(refs) === "table") {
    for (const [k, ref] of pairs(refs as Table)) {
      if (type(ref) !== "table") {
        out.set(k, ref);
        continue;
      }
      const inner = out.get(k) as Table | undefined;
      if (inner !== undefined) for (const [i, r] of pairs(ref as Table)) inner.set(i, r);
    }
  }
  const mt = getmetatable(value as object);
  if (mt !== undefined) setmetatable(out, mt as LuaMetatable<Table>);
  return out;
}

// Schema as JSON ---------------------------------------------------------------------------

const encodeScalar = cjson.encode;

/** Kong's fdata_to_jsonable arity: "yes" an array, "no" an object, "maybe" an array unless a key is not a number. */
type Arrayness = "yes" | "no" | "maybe";

function jsonString(value: unknown): string {
  return encodeScalar(value)[0] ?? "null";
}

function fieldsToJson(fields: SchemaFieldEntry[]): string {
  const parts: string[] = [];
  for (const entry of fields) {
    const [name, fdata] = next(entry);
    if (name !== undefined) parts[parts.length] = "{" + jsonString(name) + ":" + fdataToJson(fdata as Table, "no") + "}";
  }
  return "[" + concat(parts, ",") + "]";
}

/**
 * Kong's kong/api/api_helpers.lua schema_to_jsonable, emitted as JSON text directly (Debian's
 * cjson has no array_mt to mark empty lists): functions left out, NaN and infinities as
 * "nan", "inf", "-inf", a record's `fields` as a list of one-key objects.
 */
function fdataToJson(fdata: Table, arrayness: Arrayness): string {
  const keys: AnyNotNil[] = [];
  const values: string[] = [];
  let isArray = arrayness;
  const fieldType = fdata.get("type");
  const entries: [AnyNotNil, unknown][] = [];
  if (arrayness === "yes") {
    for (let i = 1; i <= fdata.length(); i++) entries[entries.length] = [i, fdata.get(i)];
  } else {
    for (const [k, v] of pairs(fdata)) entries[entries.length] = [k, v];
  }
  for (const [k, v] of entries) {
    if (isArray === "maybe" && type(k) !== "number") isArray = "no";
    const vtype = type(v);
    let text: string | undefined;
    if (vtype === "table") {
      if (k === "fields" && fieldType === "record") text = fieldsToJson(v as SchemaFieldEntry[]);
      else if (k === "default" && fieldType === "array") text = fdataToJson(v as Table, "yes");
      else text = fdataToJson(v as Table, "maybe");
    } else if (vtype === "number") {
      const n = v as number;
      text = n !== n ? '"nan"' : n === HUGE ? '"inf"' : n === -HUGE ? '"-inf"' : jsonString(n);
    } else if (vtype === "string" || vtype === "boolean") {
      text = jsonString(v);
    } else if (v === NULL) {
      text = "null";
    }
    if (text !== undefined) {
      keys[keys.length] = k;
      values[values.length] = text;
    }
  }
  if (isArray !== "no") {
    // In key order, as cjson writes an array; pairs() may visit a hash part in any order.
    const order: number[] = [];
    for (let i = 0; i < keys.length; i++) order[i] = i;
    table.sort(order, (a, b) => (keys[a] as number) < (keys[b] as number));
    const items: string[] = [];
    for (const i of order) items[items.length] = values[i];
    return "[" + concat(items, ",") + "]";
  }
  const parts: string[] = [];
  for (let i = 0; i < keys.length; i++) parts[parts.length] = jsonString(tostring(keys[i])) + ":" + values[i];
  return "{" + concat(parts, ",") + "}";
}

/**
 * What Kong's `GET /plugins/schema/{name}` answers: the plugin's `config` record as
 * `{"fields": [...]}`, functions (custom validators, entity check functions) left out.
 */
export function pluginSchemaJson(schema: KongPluginSchema): string {
  const config = fieldNamed(schema.fields ?? [], "config");
  return '{"fields":' + fieldsToJson(config?.fields ?? []) + "}";
}

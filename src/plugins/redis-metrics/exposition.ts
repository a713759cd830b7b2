/**
 * Prometheus text format 0.0.4 from series values: HELP and TYPE once per metric (in
 * metrics.ts order), series sorted, histogram buckets made cumulative with `le` as Kong's
 * exporter writes it (zero-padded), then +Inf, _count and _sum.
 */
import { ALL, BY_NAME, type MetricDef } from "./metrics";
import { bucketPart } from "./store";

export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

const floor = math.floor;

export function formatValue(this: void, value: number): string {
  if (value === floor(value) && value > -1e15 && value < 1e15) return string.format("%d", value);
  return string.format("%.17g", value);
}

/** Kong's `le` format: every bound of a histogram the same width, one decimal at least. */
function bucketLabels(this: void, buckets: number[]): string[] {
  let digits = 1;
  let decimals = 1;
  for (const b of buckets) {
    digits = math.max(digits, string.len(string.format("%d", floor(b))));
    const [, fraction] = string.match(string.format("%.6f", b), "^(%d+)%.(%d-)0*$");
    if (fraction !== undefined) decimals = math.max(decimals, string.len(fraction));
  }
  const format = `%0${digits + 1 + decimals}.${decimals}f`;
  const out: string[] = [];
  for (const b of buckets) out.push(string.format(format, b));
  return out;
}
const LE = new LuaTable<MetricDef, string[]>();
for (const m of ALL) if (m.buckets !== undefined) LE.set(m, bucketLabels(m.buckets));

/** `name{labels}` with one more label. */
function withLabel(this: void, base: string, label: string): string {
  const open = string.find(base, "{", 1, true)[0]!;
  const inner = string.sub(base, open + 1, -2);
  return string.sub(base, 1, open) + (inner === "" ? label : inner + "," + label) + "}";
}

/** A series without labels is written without braces, as Kong's exporter does. */
function bare(this: void, series: string): string {
  return string.sub(series, -2) === "{}" ? string.sub(series, 1, -3) : series;
}

function renderHistogram(this: void, out: string[], m: MetricDef, bases: string[], values: LuaTable<string, number>): void {
  const le = LE.get(m)!;
  const name = m.name;
  for (const base of bases) {
    const labelled = string.sub(base, name.length + 1);
    let cumulative = 0;
    for (let i = 0; i < le.length; i++) {
      cumulative += values.get(base + "\t" + bucketPart(i + 1)) ?? 0;
      out.push(withLabel(name + "_bucket" + labelled, `le="${le[i]}"`) + " " + formatValue(cumulative));
    }
    const count = values.get(base + "\tcount") ?? 0;
    out.push(withLabel(name + "_bucket" + labelled, 'le="+Inf"') + " " + formatValue(count));
    out.push(bare(name + "_count" + labelled) + " " + formatValue(count));
    out.push(bare(name + "_sum" + labelled) + " " + formatValue(values.get(base + "\tsum") ?? 0));
  }
}

/**
 * True when `k` is a dict key this plugin could have written: a known metric's
 * `name{labels}` (a histogram's with its `\t<part>`), each label `name="value"` with the
 * value escaped as escapeLabel does, and a finite number. A snapshot read back from Redis
 * is whatever a party that can write there put in it: a raw newline or an unbalanced
 * quote in a key would otherwise write lines of its own into the exposition.
 */
export function isSeries(this: void, k: unknown, value: unknown): boolean {
  if (type(k) !== "string" || type(value) !== "number") return false;
  const v = value as number;
  if (v !== v || v === math.huge || v === -math.huge) return false;
  const key = k as string;
  const [open, , name] = string.find(key, "^([%a_:][%w_:]*){");
  if (open === undefined) return false;
  const m = BY_NAME.get(name as string);
  if (m === undefined) return false;
  let pos = string.len(name as string) + 2;
  const len = string.len(key);
  if (string.sub(key, pos, pos) !== "}") {
    for (;;) {
      const [, labelEnd] = string.find(key, "^[%a_][%w_]*=\"", pos);
      if (labelEnd === undefined) return false;
      pos = labelEnd + 1;
      // The value: plain characters or one of escapeLabel's escapes, up to the closing quote.
      for (;;) {
        const [, plainEnd] = string.find(key, '^[^\\"\n\t]*', pos);
        pos = plainEnd! + 1;
        const c = string.sub(key, pos, pos);
        if (c === '"') break;
        if (c !== "\\") return false;
        const escaped = string.sub(key, pos + 1, pos + 1);
        if (escaped !== "\\" && escaped !== '"' && escaped !== "n") return false;
        pos += 2;
      }
      pos++;
      const next = string.sub(key, pos, pos);
      if (next === "}") break;
      if (next !== ",") return false;
      pos++;
    }
  }
  if (m.buckets === undefined) return pos === len;
  const part = string.sub(key, pos + 1);
  if (part === "\tsum" || part === "\tcount") return true;
  const [, , index] = string.find(part, "^\tb(%d%d)$");
  return index !== undefined && (tonumber(index) as number) >= 1 && (tonumber(index) as number) <= m.buckets.length;
}

/**
 * The exposition of `values` (dict keys: `name{labels}`, histogram parts
 * `name{labels}\t<part>`). Keys of unknown metrics are skipped.
 */
export function render(this: void, values: LuaTable<string, number>): string {
  const byMetric = new LuaTable<string, string[]>();
  const seen = new LuaTable<string, boolean>();
  for (const [k, v] of pairs(values)) {
    if (!isSeries(k, v)) continue;
    const [name] = string.match(k, "^([%w_:]+){");
    if (name === undefined) continue;
    const m = BY_NAME.get(name);
    if (m === undefined) continue;
    let base = k;
    if (m.buckets !== undefined) {
      const [tab] = string.find(k, "\t[^\t]*$");
      if (tab === undefined) continue;
      base = string.sub(k, 1, tab - 1);
      if (seen.get(base) === true) continue;
      seen.set(base, true);
    }
    let list = byMetric.get(name);
    if (list === undefined) {
      list = [];
      byMetric.set(name, list);
    }
    list.push(base);
  }
  const out: string[] = [];
  for (const m of ALL) {
    const bases = byMetric.get(m.name);
    if (bases === undefined) continue;
    table.sort(bases);
    out.push(`# HELP ${m.name} ${m.help}`);
    out.push(`# TYPE ${m.name} ${m.type}`);
    if (m.buckets !== undefined) renderHistogram(out, m, bases, values);
    else for (const base of bases) out.push(bare(base) + " " + formatValue(values.get(base)!));
  }
  out.push("");
  return table.concat(out, "\n");
}

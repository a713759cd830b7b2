/**
 * IPv4/IPv6 addresses and CIDRs as fixed-width binary strings, and the matcher every
 * worker compiles from a list: IPv4 as sets of blocks by prefix length (one table read per
 * prefix length the list has), IPv6 as merged, sorted ranges searched by bisection
 * (O(log n)). Neither depends on the list's size.
 *
 * IPv4 is 4 bytes, IPv6 16. An IPv4-mapped IPv6 address (::ffff:a.b.c.d), and a CIDR
 * inside ::ffff:0:0/96, is taken as the IPv4 one, so a mapped client matches its IPv4
 * rules. Binary strings of one width compare in address order with Lua's `<` (LuaJIT
 * compares bytes, not by locale).
 *
 * Pure Lua (no ngx): the schema validates with the same parser the matcher uses, so an
 * entry the config accepts is one the matcher understands.
 */
const char = string.char;
const byte = string.byte;
const sub = string.sub;
const find = string.find;
const match = string.match;
const floor = math.floor;

const MAPPED_PREFIX = string.rep(char(0), 10) + char(255, 255);
/** An address longer than this is not one (the longest IPv6 text with an IPv4 tail is 45). */
const MAX_TEXT = 64;

/**
 * A leading zero ("01", "08") is refused, as Kong (inet_pton) does: other parsers read such
 * a part as octal, so the same text would mean another address elsewhere.
 */
function leadingZero(this: void, digits: string): boolean {
  return digits.length > 1 && sub(digits, 1, 1) === "0";
}

function parseV4(this: void, text: string): string | undefined {
  const [a, b, c, d] = match(text, "^(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)$");
  if (a === undefined) return undefined;
  if (leadingZero(a) || leadingZero(b!) || leadingZero(c!) || leadingZero(d!)) return undefined;
  const octets = [tonumber(a)!, tonumber(b)!, tonumber(c)!, tonumber(d)!];
  for (const o of octets) if (o > 255) return undefined;
  return char(octets[0], octets[1], octets[2], octets[3]);
}

/** Hex groups separated by ":" (no empty group), as 16-bit numbers; an IPv4 tail counts as two. */
function groups(this: void, text: string, allowV4Tail: boolean, out: number[]): boolean {
  if (text === "") return true;
  let start = 1;
  const length = text.length;
  while (start <= length + 1) {
    let [stop] = find(text, ":", start, true);
    const last = stop === undefined;
    if (stop === undefined) stop = length + 1;
    const group = sub(text, start, stop - 1);
    if (last && allowV4Tail && find(group, ".", 1, true)[0] !== undefined) {
      const v4 = parseV4(group);
      if (v4 === undefined) return false;
      const [b1, b2, b3, b4] = byte(v4, 1, 4);
      out.push(b1 * 256 + b2);
      out.push(b3 * 256 + b4);
      return true;
    }
    if (match(group, "^%x%x?%x?%x?$")[0] === undefined) return false;
    out.push(tonumber(group, 16)!);
    if (last) return true;
    start = stop + 1;
  }
  return false;
}

function parseV6(this: void, text: string): string | undefined {
  if (match(text, "^[%x:.]+$")[0] === undefined) return undefined;
  const [gap] = find(text, "::", 1, true);
  const head: number[] = [];
  const tail: number[] = [];
  if (gap === undefined) {
    if (!groups(text, true, head) || head.length !== 8) return undefined;
  } else {
    if (find(text, "::", gap + 1, true)[0] !== undefined) return undefined;
    if (!groups(sub(text, 1, gap - 1), false, head) || !groups(sub(text, gap + 2), true, tail)) return undefined;
    if (head.length + tail.length > 7) return undefined;
    const zeros = 8 - head.length - tail.length;
    for (let i = 0; i < zeros; i++) head.push(0);
    for (const g of tail) head.push(g);
  }
  const bytes: number[] = [];
  for (const g of head) {
    bytes.push(floor(g / 256));
    bytes.push(g % 256);
  }
  return char(...bytes);
}

/** The address as 4 (IPv4, also when mapped into IPv6) or 16 bytes; undefined when it is not one. */
export function parseAddress(this: void, text: unknown): string | undefined {
  if (type(text) !== "string") return undefined;
  const s = text as string;
  if (s === "" || s.length > MAX_TEXT) return undefined;
  if (find(s, ":", 1, true)[0] === undefined) return parseV4(s);
  const v6 = parseV6(s);
  if (v6 !== undefined && sub(v6, 1, 12) === MAPPED_PREFIX) return sub(v6, 13);
  return v6;
}

/** The first and last address of `bin`'s /prefix network. */
function bounds(this: void, bin: string, prefix: number): LuaMultiReturn<[string, string]> {
  const first: number[] = [];
  const last: number[] = [];
  for (let i = 0; i < bin.length; i++) {
    const b = byte(bin, i + 1);
    const kept = prefix - 8 * i;
    if (kept >= 8) {
      first.push(b);
      last.push(b);
    } else if (kept <= 0) {
      first.push(0);
      last.push(255);
    } else {
      const span = 2 ** (8 - kept);
      const low = b - (b % span);
      first.push(low);
      last.push(low + span - 1);
    }
  }
  return $multi(char(...first), char(...last));
}

function v4String(this: void, n: number): string {
  return char(floor(n / 16777216) % 256, floor(n / 65536) % 256, floor(n / 256) % 256, n % 256);
}

/** The common case, without the general path's tables: "a.b.c.d" or "a.b.c.d/p". */
function parseV4Entry(this: void, s: string): LuaMultiReturn<[string | undefined, string | undefined]> {
  const [a, b, c, d, p] = match(s, "^(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)/?(%d?%d?)$");
  if (a === undefined) return $multi(undefined, undefined);
  if (leadingZero(a) || leadingZero(b!) || leadingZero(c!) || leadingZero(d!) || leadingZero(p!)) return $multi(undefined, undefined);
  const [na, nb, nc, nd] = [tonumber(a)!, tonumber(b)!, tonumber(c)!, tonumber(d)!];
  if (na > 255 || nb > 255 || nc > 255 || nd > 255) return $multi(undefined, undefined);
  const hasSlash = find(s, "/", 1, true)[0] !== undefined;
  if (hasSlash && p === "") return $multi(undefined, undefined);
  const prefix = hasSlash ? tonumber(p)! : 32;
  if (prefix > 32) return $multi(undefined, undefined);
  const n = ((na * 256 + nb) * 256 + nc) * 256 + nd;
  const span = 2 ** (32 - prefix);
  const first = n - (n % span);
  return $multi(v4String(first), v4String(first + span - 1));
}

/**
 * An address or CIDR as its first and last address (same width), or undefined and why,
 * naming the value. An address alone is a /32 or /128.
 */
export function parseEntry(this: void, text: unknown): LuaMultiReturn<[string | undefined, string | undefined, string | undefined]> {
  if (type(text) !== "string") return $multi(undefined, undefined, "invalid ip or cidr range: not a string");
  const s = text as string;
  const [fastFirst, fastLast] = parseV4Entry(s);
  if (fastFirst !== undefined) return $multi(fastFirst, fastLast, undefined);
  const shown = s.length > MAX_TEXT ? sub(s, 1, MAX_TEXT) + "..." : s;
  const [slash] = find(s, "/", 1, true);
  const addrText = slash === undefined ? s : sub(s, 1, slash - 1);
  if (find(addrText, "%", 1, true)[0] !== undefined) return $multi(undefined, undefined, `invalid ip or cidr range: '${shown}' (zone ids are not allowed)`);
  let bin: string | undefined;
  let isV6Text = find(addrText, ":", 1, true)[0] !== undefined;
  if (addrText !== "" && addrText.length <= MAX_TEXT) bin = isV6Text ? parseV6(addrText) : parseV4(addrText);
  if (bin === undefined) return $multi(undefined, undefined, `invalid ip or cidr range: '${shown}'`);
  const max = bin.length * 8;
  let prefix = max;
  if (slash !== undefined) {
    const prefixText = sub(s, slash + 1);
    if (match(prefixText, "^%d%d?%d?$")[0] === undefined || leadingZero(prefixText) || tonumber(prefixText)! > max) {
      return $multi(undefined, undefined, `invalid ip or cidr range: '${shown}' (the prefix length must be 0-${max})`);
    }
    prefix = tonumber(prefixText)!;
  }
  if (isV6Text && sub(bin, 1, 12) === MAPPED_PREFIX && prefix >= 96) {
    bin = sub(bin, 13);
    prefix = prefix - 96;
    isV6Text = false;
  }
  const [first, last] = bounds(bin, prefix);
  return $multi(first, last, undefined);
}

/** Kong's schema custom_validator shape: true, or nil and the message. */
export function validateEntry(this: void, value: unknown): LuaMultiReturn<[true | undefined, string | undefined]> {
  const [first, , err] = parseEntry(value);
  if (first === undefined) return $multi(undefined, err);
  return $multi(true, undefined);
}

/** Merged ranges of one width, sorted: starts[i] <= ends[i] < starts[i + 1]. */
interface Ranges {
  starts: string[];
  ends: string[];
}

/**
 * IPv4 entries as sets of network numbers (address / block size), one set per block size
 * present. A lookup reads one set per size, the same reads whatever the address: LuaJIT
 * keeps them in the caller's trace, where a bisection's branches, which change with every
 * address, leave the trace at each step (and a string comparison is a runtime call).
 */
interface V4Sets {
  /** Block sizes (2^(32 - prefix length)) present, largest first. */
  sizes: number[];
  /** sets[i]: the network numbers of the blocks of sizes[i]. */
  sets: LuaTable<number, boolean>[];
}

export interface Matcher {
  v4: V4Sets;
  v6: Ranges;
  /** Entries it was built from. */
  size: number;
}

function merge(this: void, spans: string[], width: number): Ranges {
  // One string per span, first then last: the default comparator sorts them by first
  // address without a Lua callback per comparison (100,000 entries load in milliseconds).
  table.sort(spans);
  const starts: string[] = [];
  const ends: string[] = [];
  let n = 0;
  for (const span of spans) {
    const first = sub(span, 1, width);
    const last = sub(span, width + 1);
    if (n > 0 && first <= ends[n - 1]) {
      if (last > ends[n - 1]) ends[n - 1] = last;
    } else {
      starts[n] = first;
      ends[n] = last;
      n++;
    }
  }
  return { starts, ends };
}

/** A 4-byte address as its number. */
function v4Number(this: void, bin: string): number {
  const [a, b, c, d] = byte(bin, 1, 4);
  return ((a * 256 + b) * 256 + c) * 256 + d;
}

/**
 * The v4 spans (first .. last, numbers) as aligned blocks in sets by block size. An entry
 * from parseEntry is one CIDR block; any other span is cut into the blocks that tile it. A
 * block inside a larger one is left out, and so is a size left with no block: a lookup
 * reads no set it does not need.
 */
function v4Sets(this: void, firsts: number[], lasts: number[]): V4Sets {
  const firstsBySize = new LuaTable<number, number[]>();
  const allSizes: number[] = [];
  for (let i = 0; i < firsts.length; i++) {
    let first = firsts[i];
    const last = lasts[i];
    while (first <= last) {
      // The largest block that starts at `first` (aligned) and ends by `last`.
      let size = 1;
      while (size < 4294967296 && first % (size * 2) === 0 && first + size * 2 - 1 <= last) size *= 2;
      let blocks = firstsBySize.get(size);
      if (blocks === undefined) {
        blocks = [];
        firstsBySize.set(size, blocks);
        allSizes.push(size);
      }
      blocks.push(first);
      first += size;
    }
  }
  table.sort(allSizes, (a, b) => a > b);
  const sizes: number[] = [];
  const sets: LuaTable<number, boolean>[] = [];
  for (const size of allSizes) {
    let set: LuaTable<number, boolean> | undefined;
    for (const first of firstsBySize.get(size)!) {
      let covered = false;
      for (let j = 0; j < sizes.length && !covered; j++) covered = sets[j].get(floor(first / sizes[j])) === true;
      if (covered) continue;
      if (set === undefined) set = new LuaTable();
      set.set(first / size, true);
    }
    if (set !== undefined) {
      sizes.push(size);
      sets.push(set);
    }
  }
  return { sizes, sets };
}

/** A matcher from (first, last) pairs as parseEntry returns them. */
export function compile(this: void, firsts: string[], lasts: string[]): Matcher {
  const v4Firsts: number[] = [];
  const v4Lasts: number[] = [];
  const v6: string[] = [];
  for (let i = 0; i < firsts.length; i++) {
    const first = firsts[i];
    if (first.length === 4) {
      v4Firsts.push(v4Number(first));
      v4Lasts.push(v4Number(lasts[i]));
    } else {
      v6.push(first + lasts[i]);
    }
  }
  return { v4: v4Sets(v4Firsts, v4Lasts), v6: merge(v6, 16), size: firsts.length };
}

/** A matcher from a list of textual entries; raises on an invalid one (schemas validate them first). */
export function compileList(this: void, entries: string[] | undefined): Matcher {
  const firsts: string[] = [];
  const lasts: string[] = [];
  if (entries !== undefined && type(entries) === "table") {
    for (const entry of entries) {
      const [first, last, err] = parseEntry(entry);
      if (first === undefined) error(err!);
      firsts.push(first);
      lasts.push(last!);
    }
  }
  return compile(firsts, lasts);
}

/** Whether the binary address `bin` (from parseAddress) is in one of the matcher's ranges. */
export function contains(this: void, m: Matcher, bin: string): boolean {
  if (bin.length === 4) return containsV4(m.v4, v4Number(bin));
  const ranges = m.v6;
  const starts = ranges.starts;
  let lo = 0;
  let hi = starts.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = floor((lo + hi) / 2);
    if (starts[mid] <= bin) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found >= 0 && bin <= ranges.ends[found];
}

function containsV4(this: void, v4: V4Sets, n: number): boolean {
  const sizes = v4.sizes;
  const count = sizes.length;
  const sets = v4.sets;
  // The first two sizes (most lists have one or two: /32s, /24s) outside the loop: a loop
  // that runs at most once per request makes a trace of its own, whose exit returns to the
  // interpreter.
  if (count === 0) return false;
  if (sets[0].get(floor(n / sizes[0])) === true) return true;
  if (count === 1) return false;
  if (sets[1].get(floor(n / sizes[1])) === true) return true;
  for (let i = 2; i < count; i++) if (sets[i].get(floor(n / sizes[i])) === true) return true;
  return false;
}

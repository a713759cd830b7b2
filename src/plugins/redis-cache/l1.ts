/**
 * The worker's copy of hot entries (L1): one cache per prepared configuration, bounded by
 * its entry count (l1_size), and all of them together by one byte budget per worker
 * (l1_max_bytes). resty.lrucache counts entries only, so 1000 entries of 1 MiB each were
 * allowed per configuration; here every entry is charged its size and the least
 * recently used entry of any configuration leaves first when the worker's total would
 * pass the budget.
 *
 * Two intrusive doubly linked lists thread the entries: one per cache (recency within a
 * configuration, for the count bound) and one for the worker (recency across all, for
 * the byte bound). Pure Lua (ngx.now only), unit-tested under busted.
 */

/** What an entry costs besides its own bytes (its tables, key, list links). */
export const ENTRY_OVERHEAD = 256;

interface Node<V> {
  key: string;
  value: V;
  /** ngx.now() seconds after which the entry is gone. */
  expiresAt: number;
  size: number;
  owner: L1<V>;
  prev?: Node<V>;
  next?: Node<V>;
  gprev?: Node<V>;
  gnext?: Node<V>;
}

export interface L1<V> {
  nodes: LuaTable<string, Node<V>>;
  /** Most recently used first. */
  head?: Node<V>;
  tail?: Node<V>;
  count: number;
  maxCount: number;
}

/** The worker-wide list, most recently used first, and the bytes its entries are charged. */
let ghead: Node<any> | undefined;
let gtail: Node<any> | undefined;
let totalBytes = 0;
/** l1_max_bytes' default. */
export const DEFAULT_MAX_BYTES = 16 * 1024 * 1024;
let budget = DEFAULT_MAX_BYTES;

export function newL1<V>(this: void, maxCount: number): L1<V> {
  return { nodes: new LuaTable(), count: 0, maxCount };
}

/** The worker's budget; entries past it leave at once (least recently used first). */
export function setMaxBytes(this: void, bytes: number): void {
  budget = bytes;
  while (totalBytes > budget && gtail !== undefined) remove(gtail);
}

export function maxBytes(this: void): number {
  return budget;
}

export function usedBytes(this: void): number {
  return totalBytes;
}

function unlinkLocal<V>(this: void, c: L1<V>, n: Node<V>): void {
  if (n.prev !== undefined) n.prev.next = n.next;
  else c.head = n.next;
  if (n.next !== undefined) n.next.prev = n.prev;
  else c.tail = n.prev;
  n.prev = undefined;
  n.next = undefined;
}

function pushLocal<V>(this: void, c: L1<V>, n: Node<V>): void {
  n.next = c.head;
  if (c.head !== undefined) c.head.prev = n;
  c.head = n;
  if (c.tail === undefined) c.tail = n;
}

function unlinkGlobal(this: void, n: Node<any>): void {
  if (n.gprev !== undefined) n.gprev.gnext = n.gnext;
  else ghead = n.gnext;
  if (n.gnext !== undefined) n.gnext.gprev = n.gprev;
  else gtail = n.gprev;
  n.gprev = undefined;
  n.gnext = undefined;
}

function pushGlobal(this: void, n: Node<any>): void {
  n.gnext = ghead;
  if (ghead !== undefined) ghead.gprev = n;
  ghead = n;
  if (gtail === undefined) gtail = n;
}

function remove<V>(this: void, n: Node<V>): void {
  const c = n.owner;
  if (c.nodes.get(n.key) !== n) return;
  c.nodes.delete(n.key);
  c.count--;
  totalBytes -= n.size;
  unlinkLocal(c, n);
  unlinkGlobal(n);
}

/** The live value under `key`, now the most recently used; undefined when absent or expired. */
export function get<V>(this: void, c: L1<V>, key: string): V | undefined {
  const n = c.nodes.get(key);
  if (n === undefined) return undefined;
  if (n.expiresAt <= ngx.now()) {
    remove(n);
    return undefined;
  }
  unlinkLocal(c, n);
  pushLocal(c, n);
  unlinkGlobal(n);
  pushGlobal(n);
  return n.value;
}

/**
 * Keeps `value` for `ttl` seconds, charged `bytes` (plus ENTRY_OVERHEAD). An entry larger
 * than the whole budget is not kept (and replaces nothing: an older copy is dropped).
 */
export function set<V>(this: void, c: L1<V>, key: string, value: V, ttl: number, bytes: number): void {
  const old = c.nodes.get(key);
  if (old !== undefined) remove(old);
  const size = bytes + ENTRY_OVERHEAD;
  if (size > budget || ttl <= 0) return;
  while (totalBytes + size > budget && gtail !== undefined) remove(gtail);
  while (c.count >= c.maxCount && c.tail !== undefined) remove(c.tail);
  const n: Node<V> = { key, value, expiresAt: ngx.now() + ttl, size, owner: c };
  c.nodes.set(key, n);
  c.count++;
  totalBytes += size;
  pushLocal(c, n);
  pushGlobal(n);
}

export function del<V>(this: void, c: L1<V>, key: string): void {
  const n = c.nodes.get(key);
  if (n !== undefined) remove(n);
}

export function flush<V>(this: void, c: L1<V>): void {
  while (c.tail !== undefined) remove(c.tail);
}

export function count<V>(this: void, c: L1<V>): number {
  return c.count;
}

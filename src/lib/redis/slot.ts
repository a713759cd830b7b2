/**
 * Redis Cluster key slots: CRC16 (XMODEM: polynomial 0x1021, initial value 0) of the
 * key's hash tag, modulo 16384, as the Redis Cluster specification defines them. The
 * tag is the part between the first `{` and the next `}` when that part is not empty;
 * otherwise the whole key is hashed. The Node side (ioredis, cluster-key-slot) and
 * CLUSTER KEYSLOT must agree with this: spec/integration/16-redis-cluster.test.ts checks.
 */
import * as bitop from "bit";

export const SLOTS = 16384;

const band = bitop.band;
const bxor = bitop.bxor;
const lshift = bitop.lshift;
const rshift = bitop.rshift;
const byte = string.byte;

/** One entry per byte value: the table-driven CRC16 costs one lookup per key byte. */
const TABLE: number[] = [];
for (let i = 0; i < 256; i++) {
  let crc = lshift(i, 8);
  for (let b = 0; b < 8; b++) crc = band(band(crc, 0x8000) !== 0 ? bxor(lshift(crc, 1), 0x1021) : lshift(crc, 1), 0xffff);
  TABLE[i] = crc;
}

/** CRC16/XMODEM of `s` from byte `from` to byte `to` (1-based, inclusive). */
export function crc16(this: void, s: string, from = 1, to = s.length): number {
  let crc = 0;
  for (let i = from; i <= to; i++) {
    crc = band(bxor(lshift(crc, 8), TABLE[bxor(band(rshift(crc, 8), 0xff), byte(s, i))]), 0xffff);
  }
  return crc;
}

/** The cluster slot of `key`. */
export function keySlot(this: void, key: string): number {
  const [open] = string.find(key, "{", 1, true);
  if (open !== undefined) {
    const [close] = string.find(key, "}", open + 1, true);
    if (close !== undefined && close > open + 1) return band(crc16(key, open + 1, close - 1), SLOTS - 1);
  }
  return band(crc16(key), SLOTS - 1);
}

/**
 * LuaJIT's FFI library (`require("ffi")`), the parts this project uses. lua-types declares
 * only `ffi.cdef`/`ffi.C`/`ffi.load` as a global namespace, but LuaJIT has no `ffi`
 * global: the module must be required. Dot-called throughout.
 */

/** A C data object (cdata): pointers, arrays, structs. Opaque to TypeScript. */
declare interface FfiCData {
  readonly __ffiCDataBrand: unique symbol;
}
/** A cdata array of bytes or ints, indexed from 0 as in C (TSTL adds no offset: not a TS array). */
declare interface FfiArray extends FfiCData {
  [index: number]: number;
}
/** A C library namespace (`ffi.C`, `ffi.load(...)`); each symbol is looked up on access. */
declare type FfiLibrary = LuaTable<string, unknown>;

/** @noSelf */
declare interface LuaJitFfi {
  cdef(defs: string): void;
  C: FfiLibrary;
  load(name: string, global?: boolean): FfiLibrary;
  /** `ffi.new("unsigned char[?]", n)`, `ffi.new("int[1]")`. */
  "new"<T extends FfiCData = FfiArray>(ct: string, ...init: unknown[]): T;
  /** Bytes of a pointer or array as a Lua string. */
  string(ptr: FfiCData, len?: number): string;
  cast<T extends FfiCData = FfiCData>(ct: string, value: unknown): T;
  sizeof(ct: string | FfiCData, nelem?: number): number | undefined;
  copy(dst: FfiCData, src: FfiCData | string, len?: number): void;
  fill(dst: FfiCData, len: number, c?: number): void;
  gc<T extends FfiCData>(cdata: T, finalizer: ((this: void, cdata: T) => void) | undefined): T;
}

declare module "ffi" {
  const ffi: LuaJitFfi;
  export = ffi;
}

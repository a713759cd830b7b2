/**
 * LuaJIT 2.1's string buffers (`require("string.buffer")`, in OpenResty's and Debian's
 * LuaJIT): appends without a Lua string per part; compiled by the JIT. Colon-called.
 */
declare interface LuaStringBuffer {
  put(...parts: (string | number | LuaStringBuffer)[]): LuaStringBuffer;
  putf(format: string, ...args: unknown[]): LuaStringBuffer;
  reset(): LuaStringBuffer;
  tostring(): string;
  /** The bytes held, as a pointer and a length (valid until the buffer changes). */
  ref(): LuaMultiReturn<[FfiCData, number]>;
  /** `#buf`: the bytes held. */
  len: LuaLengthMethod<number>;
}

declare module "string.buffer" {
  /** @noSelf */
  interface LuaStringBufferModule {
    "new"(size?: number): LuaStringBuffer;
  }
  const buffer: LuaStringBufferModule;
  export = buffer;
}

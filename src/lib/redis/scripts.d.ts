/** One script of redis-lua/, as the build embeds it. */
declare interface EmbeddedScript {
  sha1: string;
  numkeys: number;
  source: string;
}

/** The generated module (scripts/build.mjs) embedding redis-lua/*.lua with their SHA-1. */
declare module "krs.scripts" {
  const scripts: LuaTable<string, EmbeddedScript>;
  export = scripts;
}

/**
 * Flag parsing for the commands that keep their own dispatch (gateway, keys, cache,
 * upstream), on Node's own parser (util.parseArgs, strict): `--flag value`,
 * `--flag=value`, `--switch`; anything unknown or a missing value is one UsageError line.
 * Arguments that start with a single `-` stay arguments (an API key may start with one).
 */
import { parseArgs as nodeParseArgs } from "node:util";

export class UsageError extends Error {}

export interface ParsedArgs {
  flags: Map<string, string>;
  switches: Set<string>;
  positional: string[];
}

export function parseArgs(argv: string[], valueFlags: string[], switchFlags: string[] = []): ParsedArgs {
  // util.parseArgs would read `-abc` as short options; hide such arguments behind tokens.
  const hidden = new Map<string, string>();
  const args = argv.map((arg, i) => {
    if (!arg.startsWith("-") || arg.startsWith("--") || arg === "-") return arg;
    const token = `\u0000krs-arg-${i}`;
    hidden.set(token, arg);
    return token;
  });
  const unhide = (v: string) => hidden.get(v) ?? v;
  const options: Record<string, { type: "string" | "boolean" }> = {};
  for (const f of valueFlags) options[f] = { type: "string" };
  for (const f of switchFlags) options[f] = { type: "boolean" };
  let parsed: ReturnType<typeof nodeParseArgs>;
  try {
    parsed = nodeParseArgs({ args, options, strict: true, allowPositionals: true });
  } catch (e) {
    throw new UsageError(usageMessage(e as Error & { code?: string }));
  }
  const flags = new Map<string, string>();
  const switches = new Set<string>();
  for (const [name, value] of Object.entries(parsed.values)) {
    if (typeof value === "string") flags.set(name, unhide(value));
    else if (value === true) switches.add(name);
  }
  return { flags, switches, positional: parsed.positionals.map(unhide) };
}

/** Node's messages, in the words the commands have always used. */
function usageMessage(e: Error & { code?: string }): string {
  const flag = /'(--?[^' <=]+)/.exec(e.message)?.[1] ?? "";
  switch (e.code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `unknown option ${flag}`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      return /does not take an argument/.test(e.message) ? `${flag} takes no value` : `${flag} needs a value`;
    default:
      return e.message;
  }
}

/** "HOST:PORT" → parts; PORT must be 1..65535. */
export function parseListen(what: string, value: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(value);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 1 && port <= 65535)) throw new UsageError(`${what}: expected HOST:PORT, got '${value}'`);
  return { host: m[1].replace(/^\[|\]$/g, ""), port };
}

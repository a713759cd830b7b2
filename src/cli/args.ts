/** Minimal `--flag value` / `--flag=value` / `--switch` parser with a clear error for anything unknown. */
export class UsageError extends Error {}

export interface ParsedArgs {
  flags: Map<string, string>;
  switches: Set<string>;
  positional: string[];
}

export function parseArgs(argv: string[], valueFlags: string[], switchFlags: string[] = []): ParsedArgs {
  const flags = new Map<string, string>();
  const switches = new Set<string>();
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    if (switchFlags.includes(name)) {
      switches.add(name);
    } else if (valueFlags.includes(name)) {
      const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
      if (value === undefined) throw new UsageError(`--${name} needs a value`);
      flags.set(name, value);
    } else {
      throw new UsageError(`unknown option --${name}`);
    }
  }
  return { flags, switches, positional };
}

/** "HOST:PORT" → parts; PORT must be 1..65535. */
export function parseListen(what: string, value: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(value);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 1 && port <= 65535)) throw new UsageError(`${what}: expected HOST:PORT, got '${value}'`);
  return { host: m[1].replace(/^\[|\]$/g, ""), port };
}

/** `krs`: the kong-redis-suite command line (commander). */
import { Command, CommanderError } from "commander";
import { UsageError } from "./args.js";
import { cacheCommand } from "./cache.js";
import { failureLine, type Register, type Run } from "./command.js";
import { registerDoctor } from "./doctor.js";
import { GatewayError, gatewayCommand } from "./gateway.js";
import { registerInspect } from "./inspect.js";
import { ipCommand } from "./ip.js";
import { jwtCommand } from "./jwt.js";
import { keysCommand } from "./keys.js";
import { registerLogs } from "./logs.js";
import { registerPurge } from "./purge.js";
import { RedisConnectError } from "./redis.js";
import { upstreamCommand } from "./upstream.js";
import { registerUsage } from "./usage.js";

/** Commands on commander, one line each. */
const COMMANDS: Register[] = [
  registerInspect,
  registerPurge,
  registerDoctor,
  registerUsage,
  registerLogs,
];

/** Commands that still parse their own arguments (src/cli/args.ts); listed in `krs --help`. */
const OWN_PARSER: Record<string, { run: (argv: string[]) => Promise<number>; usage: string }> = {
  gateway: { run: gatewayCommand, usage: "gateway start|stop ...     the local gateway (krs gateway --help)" },
  upstream: { run: upstreamCommand, usage: "upstream [--port P] [--host H]   demo upstream (httpbin-like)" },
  keys: { run: keysCommand, usage: "keys create|revoke|list ...   redis-key-auth API keys (krs keys --help)" },
  cache: { run: cacheCommand, usage: "cache purge [KEY] [REDIS]   drop one redis-cache entry, or all of them" },
  jwt: { run: jwtCommand, usage: "jwt credentials|jwks|revoke|token ...   redis-jwt credentials, revocations, test tokens (krs jwt --help)" },
  ip: { run: ipCommand, usage: "ip deny|allow add|remove|list LIST [CIDR] [--ttl 1h] [--reason TEXT] [REDIS]   redis-ip-access lists (REDIS: --redis URL, --redis-cluster or --redis-sentinel; krs ip --help)" },
};

function program(status: { code: number }): Command {
  const out = (s: string) => console.log(s.replace(/\n$/, ""));
  const err = (s: string) => console.error(s.replace(/\n$/, ""));
  const krs = new Command("krs")
    .description("kong-redis-suite operations")
    .exitOverride()
    .configureOutput({ writeOut: out, writeErr: err, outputError: (s, write) => write(`krs: ${s.replace(/^error: /, "")}`) })
    .addHelpText("after", "\nAlso:\n" + Object.values(OWN_PARSER).map((c) => `  ${c.usage}`).join("\n"));
  const run: Run = (name, fn) => async (...args) => {
    try {
      status.code = await fn(...args);
    } catch (e) {
      console.error(failureLine(name, e));
      status.code = e instanceof UsageError ? 2 : 1;
    }
  };
  for (const register of COMMANDS) register(krs, run);
  return krs;
}

export async function main(argv: string[]): Promise<number> {
  const own = argv[0] === undefined ? undefined : OWN_PARSER[argv[0]];
  if (own !== undefined) return ownParser(own.run, argv.slice(1));
  const status = { code: 0 };
  const krs = program(status);
  if (argv.length === 0) {
    krs.outputHelp();
    return 0;
  }
  try {
    await krs.parseAsync(argv, { from: "user" });
    return status.code;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    throw e;
  }
}

async function ownParser(run: (argv: string[]) => Promise<number>, argv: string[]): Promise<number> {
  // `krs keys create --help` and the like: the command's whole usage.
  if (argv.includes("--help") || argv.includes("-h")) argv = ["--help"];
  try {
    return await run(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`krs: ${e.message}`);
      return 2;
    }
    // Failures a command reports as they are, in one line: a gateway that would not start,
    // a Redis that could not be reached.
    if (e instanceof GatewayError || e instanceof RedisConnectError) {
      console.error(`krs: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

/** `krs`: the kong-redis-suite command line. */
import { UsageError } from "./args.js";
import { cacheCommand } from "./cache.js";
import { GatewayError, gatewayCommand } from "./gateway.js";
import { ipCommand } from "./ip.js";
import { keysCommand } from "./keys.js";
import { upstreamCommand } from "./upstream.js";

const USAGE = `usage: krs <command> ...
  krs gateway start --config FILE --prefix DIR [--proxy HOST:PORT] [--admin HOST:PORT] [--workers N]
  krs gateway stop --prefix DIR
  krs upstream [--port P] [--host H]      demo upstream (httpbin-like)
  krs keys create --consumer USERNAME [--consumer-id ID] [--custom-id ID] [--ttl SECONDS] [--redis URL]
  krs keys revoke KEY_OR_ID [--redis URL]
  krs keys list [--consumer USERNAME] [--json] [--redis URL]
  krs cache purge [KEY] [--redis URL]     drop one redis-cache entry (an X-Cache-Key), or all of them
  krs ip deny|allow add|remove|list LIST [CIDR] [--ttl 1h] [--reason TEXT] [--redis URL]`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case "gateway":
        return await gatewayCommand(rest);
      case "upstream":
        return await upstreamCommand(rest);
      case "cache":
        return await cacheCommand(rest);
      case "keys":
        return await keysCommand(rest);
      case "ip":
        return await ipCommand(rest);
      case undefined:
      case "help":
      case "--help":
        console.log(USAGE);
        return 0;
      default:
        throw new UsageError(`unknown command '${command}'`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`krs: ${e.message}\n${USAGE}`);
      return 2;
    }
    if (e instanceof GatewayError) {
      console.error(`krs: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

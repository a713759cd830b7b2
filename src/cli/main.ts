/** `krs`: the kong-redis-suite command line. */
import { UsageError } from "./args.js";
import { GatewayError, gatewayCommand } from "./gateway.js";
import { upstreamCommand } from "./upstream.js";

const USAGE = `usage: krs <command> ...
  krs gateway start --config FILE --prefix DIR [--proxy HOST:PORT] [--admin HOST:PORT] [--workers N]
  krs gateway stop --prefix DIR
  krs upstream [--port P] [--host H]      demo upstream (httpbin-like)`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case "gateway":
        return await gatewayCommand(rest);
      case "upstream":
        return await upstreamCommand(rest);
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

// The demo upstream in a container (docker-compose.yml): Node 22 runs src/cli/upstream.ts
// directly by stripping its types, so the compose file needs no build step and runs the
// very server `make up` runs. (spec/integration/06-compose.test.ts checks upstream.ts
// stays within what type stripping accepts.)
import { upstreamCommand } from "../src/cli/upstream.ts";

process.exitCode = await upstreamCommand(process.argv.slice(2));

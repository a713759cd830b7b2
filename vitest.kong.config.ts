/**
 * `npm run test:kong`: the integration specs against real Kong (official image, started by
 * testcontainers; see spec/kong/target.ts), the same spec files the local gateway runs.
 * Without a reachable Docker engine it says so on one line and exits 0 having run nothing.
 */
import { defineConfig } from "vitest/config";

async function dockerProblem(): Promise<string | undefined> {
  try {
    const { getContainerRuntimeClient } = await import("testcontainers");
    await getContainerRuntimeClient();
    return undefined;
  } catch (e) {
    return (e as Error).message.split("\n")[0];
  }
}

const problem = await dockerProblem();
if (problem !== undefined) {
  console.log(`test:kong skipped: no Docker engine reachable (${problem}); nothing ran, nothing passed. Start Docker or set DOCKER_HOST to run the specs against real Kong.`);
  process.exit(0);
}

process.env.KRS_TARGET = "kong";

export default defineConfig({
  test: {
    include: ["spec/integration/**/*.test.ts"],
    exclude: [
      // These test the local tooling itself (CLI, rock, compose file, demo upstream), not gateway behaviour.
      "spec/integration/02-gateway-cli.test.ts",
      "spec/integration/05-rock.test.ts",
      "spec/integration/06-compose.test.ts",
      "spec/integration/upstream.test.ts",
      "spec/integration/10-krs-*.test.ts",
    ],
    // A Kong container per gateway(): fewer at once than local gateways, and pulls take a while.
    fileParallelism: true,
    maxWorkers: 2,
    minWorkers: 1,
    testTimeout: 120_000,
    hookTimeout: 300_000,
    reporters: ["default"],
  },
});

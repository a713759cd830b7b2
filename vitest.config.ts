import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["spec/integration/**/*.test.ts", "spec/scripts/**/*.test.ts", "bench/**/*.test.ts"],
    // Each file starts its own gateway/Redis on free ports; two cores: keep files sequential-ish.
    fileParallelism: true,
    maxWorkers: 2,
    minWorkers: 1,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ["default"],
  },
});

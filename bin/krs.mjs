#!/usr/bin/env node
// The `krs` command. The TypeScript CLI is compiled by `make build` into build/node/.
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const entry = join(root, "build", "node", "src", "cli", "main.js");
if (!existsSync(entry)) {
  console.error("krs: not built yet; run `make build` in " + root);
  process.exit(1);
}
const { main } = await import(entry);
process.exitCode = await main(process.argv.slice(2));

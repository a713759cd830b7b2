/** `npm run docs:keys`: rewrites docs/redis-keys.md's table from src/cli/key-kinds.ts. */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { withRenderedTable } from "./key-kinds.js";
import { suiteRoot } from "./paths.js";

const file = join(suiteRoot(), "docs", "redis-keys.md");
writeFileSync(file, withRenderedTable(readFileSync(file, "utf8")));

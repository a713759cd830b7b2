import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository (or installed package) root: the nearest package.json named kong-redis-suite. */
export function suiteRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg) && JSON.parse(readFileSync(pkg, "utf8")).name === "kong-redis-suite") return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error("cannot find the kong-redis-suite root (package.json)");
    dir = parent;
  }
}

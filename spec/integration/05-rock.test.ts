/**
 * The LuaRocks package: the rockspec lists every module the build put in kong-plugins/
 * (scripts/rockspec.mjs writes it; stale fails here), `luarocks make` (Debian's luarocks,
 * for Lua 5.1 as Kong's LuaJIT) installs a tree with exactly those files, and the local
 * gateway loads the suite's plugins from that tree with the repository's kong.yml.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { bundledPlugins, startGateway, stopGateway } from "../../src/cli/gateway.js";
// @ts-expect-error plain ESM script without type declarations
import { rockModules, rockspecName, rockspecText } from "../../scripts/rockspec.mjs";
import { ROOT, freePort, getJson, stopAll, tempDir } from "../helpers/services.js";

afterAll(stopAll);

const { file: ROCKSPEC } = rockspecName(ROOT) as { file: string };
const modules = rockModules(ROOT) as Map<string, string>;

describe("the rockspec", () => {
  it("is current: regenerated from kong-plugins/ and package.json it is the same file", () => {
    expect(readFileSync(join(ROOT, ROCKSPEC), "utf8"), "run: node scripts/rockspec.mjs").toBe(rockspecText(ROOT));
  });

  it("lists every suite plugin's handler and schema", () => {
    for (const name of bundledPlugins(ROOT)) {
      expect(modules.has(`kong.plugins.${name}.handler`)).toBe(true);
      expect(modules.has(`kong.plugins.${name}.schema`)).toBe(true);
    }
    expect(modules.has("krs.version")).toBe(true);
  });
});

describe("luarocks make into a tree", () => {
  const tree = tempDir("rock-tree");
  const luarocks = (args: string[]) => spawnSync("luarocks", ["--lua-version=5.1", ...args], { cwd: ROOT, encoding: "utf8" });

  it("installs every module, byte for byte, and the local gateway loads the plugins from there", async () => {
    const made = luarocks(["make", "--tree", tree, ROCKSPEC]);
    expect(made.error, "luarocks is missing: make bootstrap installs it").toBeUndefined();
    expect(made.status, made.stderr).toBe(0);
    const luaDir = join(tree, "share", "lua", "5.1");
    for (const [name, file] of modules) {
      const installed = join(luaDir, ...name.split(".")) + ".lua";
      expect(readFileSync(installed, "utf8"), installed).toBe(readFileSync(join(ROOT, file), "utf8"));
    }
    const listed = luarocks(["list", "--tree", tree, "--porcelain"]);
    expect(listed.stdout).toMatch(/^kong-plugin-redis-suite\t/m);

    // The tree comes first on the Lua path (KONG_LUA_PACKAGE_PATH), so its modules are the ones loaded.
    const prefix = tempDir("rock-gw");
    const gw = await startGateway({
      config: join(ROOT, "kong.yml"),
      prefix,
      proxy: `127.0.0.1:${await freePort()}`,
      admin: `127.0.0.1:${await freePort()}`,
      workers: 1,
      plugins: "bundled",
      luaPackagePath: join(luaDir, "?.lua"),
    });
    try {
      expect(readFileSync(join(prefix, "nginx.conf"), "utf8")).toContain(`lua_package_path '${join(luaDir, "?.lua")};`);
      const enabled = (await getJson(`${gw.adminUrl}/plugins/enabled`)).body.enabled_plugins as string[];
      expect([...enabled].sort()).toEqual(bundledPlugins(ROOT));
      const used = new Set(((await getJson(`${gw.adminUrl}/plugins`)).body.data as { name: string }[]).map((p) => p.name));
      expect([...used].sort()).toEqual(bundledPlugins(ROOT));
    } finally {
      await stopGateway(prefix);
    }
  });
});

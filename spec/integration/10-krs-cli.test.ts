/**
 * The `krs` command as a whole, run as a real process: `--help` lists every command and
 * each command's `--help` every flag; unknown flags and missing values give one line
 * naming them and exit 2.
 */
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../helpers/services.js";

const krs = (...argv: string[]) => spawnSync("node", [join(ROOT, "bin", "krs.mjs"), ...argv], { encoding: "utf8", timeout: 30_000, env: { ...process.env, KRS_REDIS_URL: "redis://127.0.0.1:1" } });

const COMMANDS: Record<string, { help: string[]; flags: string[] }> = {
  inspect: { help: ["inspect"], flags: ["--redis", "--plugin", "--batch", "--sample", "--max-ops-per-sec", "--json"] },
  purge: { help: ["purge"], flags: ["--plugin", "--kind", "--match", "--dry-run", "--redis", "--batch", "--max-ops-per-sec", "--json"] },
  doctor: { help: ["doctor"], flags: ["--config", "--redis", "--json"] },
  gateway: { help: ["gateway", "start"], flags: ["--config", "--prefix", "--proxy", "--admin", "--workers"] },
  keys: { help: ["keys", "list"], flags: ["--consumer", "--consumer-id", "--custom-id", "--ttl", "--json", "--redis"] },
  cache: { help: ["cache", "purge"], flags: ["--redis"] },
  upstream: { help: ["upstream"], flags: ["--port", "--host"] },
};

describe("krs --help", () => {
  it("lists every command", () => {
    const r = krs("--help");
    expect(r.status).toBe(0);
    for (const name of Object.keys(COMMANDS)) expect(r.stdout).toMatch(new RegExp(`^\\s+${name}\\b`, "m"));
    expect(krs().stdout).toBe(r.stdout);
  });

  for (const [name, c] of Object.entries(COMMANDS)) {
    it(`krs ${c.help.join(" ")} --help lists every flag`, () => {
      const r = krs(...c.help, "--help");
      expect(r.status, r.stderr).toBe(0);
      for (const flag of c.flags) expect(r.stdout, `${name} ${flag}`).toContain(flag);
    });
  }
});

describe("bad arguments", () => {
  const cases: [string[], RegExp][] = [
    [["inspect", "--bogus"], /^krs: unknown option '--bogus'$/],
    [["purge", "--plugin", "redis-cache", "--bogus"], /^krs: unknown option '--bogus'$/],
    [["doctor", "--config", "kong.yml", "--bogus"], /^krs: unknown option '--bogus'$/],
    [["gateway", "start", "--bogus"], /^krs: unknown option --bogus$/],
    [["keys", "list", "--bogus"], /^krs: unknown option --bogus$/],
    [["cache", "purge", "--bogus"], /^krs: unknown option --bogus$/],
    [["upstream", "--bogus"], /^krs upstream: unknown argument: --bogus/],
    [["inspect", "--redis"], /^krs: option '--redis <url>' argument missing$/],
    [["inspect", "--batch", "0"], /^krs: option '--batch <n>' argument '0' is invalid\. --batch: expected a whole number from 1 to 100000$/],
    [["purge", "--max-ops-per-sec", "fast"], /^krs: option '--max-ops-per-sec <n>' argument 'fast' is invalid/],
    [["doctor", "--config"], /^krs: option '--config <file>' argument missing$/],
    [["keys", "list", "--redis"], /^krs: --redis needs a value$/],
    [["keys", "frob"], /^krs: keys: unknown subcommand 'frob'/],
    [["gateway", "frob"], /^krs: gateway: unknown subcommand 'frob'/],
    [["frob"], /^krs: unknown command 'frob'$/],
  ];
  for (const [argv, message] of cases) {
    it(`krs ${argv.join(" ")}: exit 2, one line`, () => {
      const r = krs(...argv);
      expect(r.status).toBe(2);
      expect(r.stdout).toBe("");
      const lines = r.stderr.trimEnd().split("\n");
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(message);
    });
  }
});

describe("arguments that start with one dash", () => {
  it("stay arguments: an API key may start with '-' (base64url)", () => {
    const r = krs("keys", "revoke", "-Zm9vYmFy");
    expect(r.stderr.trim()).toMatch(/^krs: could not connect to redis at redis:\/\/127\.0\.0\.1:1/);
    expect(r.status).toBe(1);
  });

  it("--switch=value is refused in one line", () => {
    const r = krs("keys", "list", "--json=yes");
    expect(r).toMatchObject({ status: 2, stderr: "krs: --json takes no value\n" });
  });
});


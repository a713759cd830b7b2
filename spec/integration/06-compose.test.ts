/**
 * The real-Kong files, checked without a Docker engine: docker-compose.yml (by
 * `docker compose config` when the compose plugin is there, else by reading it), its
 * agreement with kong-plugins/, kong.yml and the testcontainers target, the containerised
 * demo upstream, and `npm run test:kong` skipping plainly when no engine is reachable.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import ts from "typescript";
import { parse, parseDocument } from "yaml";
import { describe, expect, it } from "vitest";
import { bundledPlugins } from "../../src/cli/gateway.js";
import { IMAGES } from "../kong/images.js";
import { ROOT } from "../helpers/services.js";

type Service = {
  image?: string;
  profiles?: string[];
  restart?: string;
  network_mode?: string;
  command?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  healthcheck?: { test: string[] };
  depends_on?: Record<string, { condition: string; required?: boolean }>;
  configs?: { source: string; target: string }[];
};

const composeText = readFileSync(join(ROOT, "docker-compose.yml"), "utf8");
const compose = parse(composeText, { merge: true }) as { services: Record<string, Service>; configs: Record<string, { content: string }> };
const services = compose.services;
const kongYml = parse(readFileSync(join(ROOT, "kong.yml"), "utf8")) as {
  services: { url: string; routes: { name: string; plugins?: { name: string; config: Record<string, unknown> }[] }[] }[];
  plugins?: { name: string; config: Record<string, unknown> }[];
};

describe("docker-compose.yml", () => {
  it("is accepted by docker compose (or, without the compose plugin, is well-formed YAML)", () => {
    const version = spawnSync("docker", ["compose", "version"], { encoding: "utf8" });
    if (version.status === 0) {
      for (const profile of [[], ["--profile", "db"]]) {
        const res = spawnSync("docker", ["compose", "--env-file", ".env.example", ...profile, "config", "--quiet"], { cwd: ROOT, encoding: "utf8" });
        expect(res.status, res.stderr).toBe(0);
      }
    } else {
      const doc = parseDocument(composeText, { merge: true });
      expect(doc.errors).toEqual([]);
      expect(doc.warnings).toEqual([]);
    }
  });

  it("runs Kong, Redis and the demo upstream; Postgres and the migrations under the db profile", () => {
    expect(Object.keys(services).sort()).toEqual(["kong", "kong-migrations", "postgres", "redis", "upstream"]);
    expect(services.postgres.profiles).toEqual(["db"]);
    expect(services["kong-migrations"].profiles).toEqual(["db"]);
    expect(services["kong-migrations"].command).toEqual(["kong", "migrations", "bootstrap"]);
    for (const name of ["kong", "redis", "upstream"]) expect(services[name].profiles, name).toBeUndefined();
  });

  it("pins every image, and the same Kong and Postgres as the testcontainers target", () => {
    for (const [name, svc] of Object.entries(services)) {
      expect(svc.image, name).toMatch(/^[\w./-]+:\d[\w.-]*$/);
    }
    // (KRS_KONG_IMAGE may point test:kong elsewhere; the default is what compose pins.)
    expect(services.kong.image).toBe(process.env.KRS_KONG_IMAGE === undefined ? IMAGES.kong : services.kong.image);
    expect(services["kong-migrations"].image).toBe(IMAGES.kong);
    expect(services.postgres.image).toBe(IMAGES.postgres);
    expect(services.kong.image).toMatch(/^kong:3\./);
    expect(services.redis.image).toMatch(/^redis:7\./);
  });

  it("gives every service a restart policy and every long-running one a healthcheck", () => {
    for (const [name, svc] of Object.entries(services)) {
      expect(svc.restart, name).toMatch(/^(unless-stopped|always|on-failure)$/);
      if (name !== "kong-migrations") expect(svc.healthcheck?.test.length, name).toBeGreaterThan(1);
      // One kong.yml for compose and `make up`: everything on the host's loopback.
      expect(svc.network_mode, name).toBe("host");
    }
    expect(services.kong.depends_on?.redis.condition).toBe("service_healthy");
    expect(services.kong.depends_on?.upstream.condition).toBe("service_healthy");
    expect(services.kong.depends_on?.["kong-migrations"]).toEqual({ condition: "service_completed_successfully", required: false });
  });

  it("lists every suite plugin of kong-plugins/ in KONG_PLUGINS, mounted read-only on the Lua path", () => {
    const env = services.kong.environment!;
    expect(env.KONG_PLUGINS).toBe(["bundled", ...bundledPlugins(ROOT)].join(","));
    expect(services["kong-migrations"].environment!.KONG_PLUGINS).toBe(env.KONG_PLUGINS);
    const mount = services.kong.volumes!.find((v) => v.startsWith("./kong-plugins:"))!;
    expect(mount).toMatch(/:ro$/);
    const inside = mount.split(":")[1];
    expect(env.KONG_LUA_PACKAGE_PATH).toBe(`${inside}/?.lua;;`);
  });

  it("is DB-less with the repository's kong.yml by default, Postgres when asked", () => {
    const env = services.kong.environment!;
    expect(env.KONG_DATABASE).toBe("${KONG_DATABASE:-off}");
    const mount = services.kong.volumes!.find((v) => v.startsWith("./kong.yml:"))!;
    expect(mount).toMatch(/:ro$/);
    expect(env.KONG_DECLARATIVE_CONFIG).toBe(mount.split(":")[1]);
    expect(services["kong-migrations"].environment!.KONG_DATABASE).toBe("postgres");
    expect(env.KONG_PG_HOST).toBe("127.0.0.1");
  });

  it("gives Redis a password from .env, AOF on, and Kong the same password for kong.yml's vault reference", () => {
    expect(services.redis.command).toEqual(expect.arrayContaining(["--appendonly", "yes"]));
    const conf = services.redis.configs![0];
    expect(services.redis.command).toContain(conf.target);
    expect(compose.configs[conf.source].content).toMatch(/^requirepass \$\{KRS_REDIS_PASSWORD:\?[^}]+\}\s*$/);
    expect(services.kong.environment!.KRS_REDIS_PASSWORD).toMatch(/^\$\{KRS_REDIS_PASSWORD:\?/);
    expect(services.redis.volumes).toContain("redis-data:/data");
  });

  it("needs no variable that .env.example does not set or that has no default", () => {
    const example = readFileSync(join(ROOT, ".env.example"), "utf8");
    const set = new Set([...example.matchAll(/^#?([A-Z_][A-Z0-9_]*)=/gm)].map((m) => m[1]));
    for (const [, name, op] of composeText.matchAll(/\$\{([A-Z_][A-Z0-9_]*)(:[-?])?/g)) {
      if (op === ":-") continue;
      expect(set.has(name), `${name} is required by docker-compose.yml but not in .env.example`).toBe(true);
    }
  });

  it("mounts only files that exist", () => {
    for (const svc of Object.values(services)) {
      for (const volume of svc.volumes ?? []) {
        const source = volume.split(":")[0];
        if (source.startsWith(".")) expect(existsSync(join(ROOT, source)), source).toBe(true);
      }
    }
  });
});

describe("kong.yml", () => {
  const routes = kongYml.services.flatMap((s) => s.routes);
  // Global plugins (structured-log) apply to every route of the demo service too.
  const plugins = [...routes.flatMap((r) => r.plugins ?? []), ...(kongYml.plugins ?? [])];

  it("shows every suite plugin on a route of the demo service", () => {
    expect([...new Set(plugins.map((p) => p.name))].sort()).toEqual(bundledPlugins(ROOT));
  });

  it("says what to try on every route", () => {
    const text = readFileSync(join(ROOT, "kong.yml"), "utf8");
    expect(text.match(/# Try:/g)?.length).toBe(routes.length + (kongYml.plugins ?? []).length);
  });

  it("reaches Redis with the password by env vault reference, and the upstream where compose and make up run it", () => {
    for (const p of plugins) {
      const redis = p.config.redis as Record<string, unknown> | undefined;
      if (redis === undefined) continue;
      expect(redis, p.name).toMatchObject({ host: "127.0.0.1", port: 6379, password: "{vault://env/krs-redis-password}" });
    }
    expect(kongYml.services.map((s) => s.url)).toEqual(["http://127.0.0.1:8080"]);
    expect(services.upstream.command).toEqual(expect.arrayContaining(["--port", "8080"]));
    expect(readFileSync(join(ROOT, "Makefile"), "utf8")).toMatch(/^UPSTREAM_PORT\s*\?=\s*8080$/m);
  });
});

describe("the containerised demo upstream", () => {
  it("uses only syntax Node's type stripping accepts, and no local imports", () => {
    const file = join(ROOT, "src", "cli", "upstream.ts");
    // Only the erasable-syntax check matters here (TS1294); no lib, no imports resolved: fast.
    const program = ts.createProgram([file], { noEmit: true, erasableSyntaxOnly: true, noLib: true, types: [], noResolve: true });
    const diagnostics = ts.getPreEmitDiagnostics(program).filter((d) => d.file?.fileName === file && d.code === 1294);
    expect(diagnostics.map((d) => ts.flattenDiagnosticMessageText(d.messageText, "\n"))).toEqual([]);
    const imports = [...readFileSync(file, "utf8").matchAll(/^import .* from "([^"]+)";$/gm)].map((m) => m[1]);
    for (const spec of imports) expect(spec).toMatch(/^node:/);
  });

  it("starts from docker/upstream.mjs with the compose command's arguments", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", "docker/upstream.mjs", "--host", "127.0.0.1", "--port", "0"], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    try {
      const line = await new Promise<string>((resolve, reject) => {
        let out = "";
        child.stdout.on("data", (d: Buffer) => {
          out += d.toString();
          if (out.includes("\n")) resolve(out.trim());
        });
        child.on("exit", (code) => reject(new Error(`exited with ${code}`)));
        setTimeout(() => reject(new Error("no output")), 15_000);
      });
      const port = /^upstream listening on http:\/\/127\.0\.0\.1:(\d+)$/.exec(line)?.[1];
      expect(port, line).toBeDefined();
      expect((await fetch(`http://127.0.0.1:${port}/anything`)).status).toBe(200);
    } finally {
      child.kill("SIGTERM");
    }
  });
});

describe("npm run test:kong", () => {
  it("says on one line that it skipped, and exits 0, when no Docker engine is reachable", () => {
    const res = spawnSync(process.execPath, [join(ROOT, "node_modules", "vitest", "vitest.mjs"), "run", "--config", "vitest.kong.config.ts"], {
      cwd: ROOT,
      encoding: "utf8",
      env: { ...process.env, DOCKER_HOST: "unix:///nonexistent/krs-no-docker.sock", KRS_TARGET: "" },
    });
    expect(res.status).toBe(0);
    const lines = res.stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^test:kong skipped: no Docker engine reachable \(.+\); nothing ran, nothing passed\./);
    expect(res.stdout + res.stderr).not.toMatch(/passed \(|Tests\s+\d/);
  });
});

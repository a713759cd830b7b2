/**
 * The real-Kong target of the integration specs (`npm run test:kong`, KRS_TARGET=kong):
 * `gateway()` in spec/helpers/services.ts starts the official Kong image with
 * testcontainers instead of the local gateway, with the same declarative config, the
 * built plugins (kong-plugins/) and the test fixtures (spec/fixtures/lua/) copied in.
 *
 * Kong runs with host networking: the specs' upstreams and redis-servers listen on
 * 127.0.0.1 of the host, and Kong must reach them at the very addresses the configs name
 * (a Linux Docker engine, or Docker Desktop with host networking turned on).
 * DB-less by default; `database: true` adds a Postgres container, runs
 * `kong migrations bootstrap` and imports the config with `kong config db_import`, so the
 * Admin API accepts writes as on Kong with a database.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { GenericContainer, Wait, type StartedTestContainer } from "testcontainers";
import { bundledPlugins } from "../../src/cli/gateway.js";
import type { GatewayOptions, TestGateway } from "../helpers/services.js";
import { IMAGES } from "./images.js";

export const ON_KONG = process.env.KRS_TARGET === "kong";

const ROOT = join(import.meta.dirname, "..", "..");


const STARTUP_MS = 180_000;

async function freePort(): Promise<number> {
  const { createServer } = await import("node:net");
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => res(typeof addr === "object" && addr !== null ? addr.port : 0));
    });
  });
}

async function waitForAdmin(url: string, logs: () => string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    try {
      if ((await fetch(`${url}/status`, { signal: AbortSignal.timeout(1000) })).status === 200) return;
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`Kong did not answer on ${url}:\n${logs()}`);
}

async function startPostgres(): Promise<{ port: number; container: StartedTestContainer }> {
  const port = await freePort();
  const container = await new GenericContainer(IMAGES.postgres)
    .withNetworkMode("host")
    .withEnvironment({ POSTGRES_USER: "kong", POSTGRES_PASSWORD: "kong", POSTGRES_DB: "kong" })
    .withCommand(["postgres", "-p", String(port), "-c", "listen_addresses=127.0.0.1"])
    // initdb's temporary server says it once, the real one a second time.
    .withWaitStrategy(Wait.forLogMessage(/database system is ready to accept connections/, 2))
    .withStartupTimeout(STARTUP_MS)
    .start();
  return { port, container };
}

/** Kong with `configFile` (a declarative YAML), as `gateway()` starts the local gateway. */
export async function kongGateway(configFile: string, prefix: string, opts: GatewayOptions & { database?: boolean }, fixturePlugins: string[], fixtureRoot: string): Promise<TestGateway> {
  const [proxyPort, adminPort] = [await freePort(), await freePort()];
  const plugins = ["bundled", ...bundledPlugins(ROOT), ...(opts.plugins ?? fixturePlugins)];
  const lines: string[] = [];
  const env: Record<string, string> = {
    KONG_PLUGINS: [...new Set(plugins)].join(","),
    KONG_LUA_PACKAGE_PATH: "/krs/kong-plugins/?.lua;/krs/fixtures/?.lua;;",
    KONG_PROXY_LISTEN: `127.0.0.1:${proxyPort}`,
    KONG_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
    // Host networking: nothing else may listen, or parallel Kongs collide.
    KONG_ADMIN_GUI_LISTEN: "off",
    KONG_STATUS_LISTEN: "off",
    KONG_STREAM_LISTEN: "off",
    KONG_NGINX_WORKER_PROCESSES: String(opts.workers ?? 2),
    KONG_LOG_LEVEL: opts.logLevel ?? "notice",
    KONG_PROXY_ERROR_LOG: "/dev/stderr",
    KONG_ADMIN_ERROR_LOG: "/dev/stderr",
    KONG_PROXY_ACCESS_LOG: "off",
    KONG_ADMIN_ACCESS_LOG: "off",
    KONG_ANONYMOUS_REPORTS: "off",
    // The shared dicts the suite's plugins use, as the local gateway's nginx.conf declares
    // them (Kong injects one directive per variable: the second rides on the first's line).
    KONG_NGINX_HTTP_LUA_SHARED_DICT: "krs_cache 64m; lua_shared_dict krs_metrics 16m",
  };
  const copies = [{ content: readFileSync(configFile, "utf8"), target: "/krs/kong.yml" }];
  if (opts.trustedCertificate !== undefined) {
    copies.push({ content: readFileSync(opts.trustedCertificate, "utf8"), target: "/krs/trusted.pem" });
    env.KONG_LUA_SSL_TRUSTED_CERTIFICATE = "/krs/trusted.pem";
  }

  let postgres: StartedTestContainer | undefined;
  let container = new GenericContainer(IMAGES.kong)
    .withNetworkMode("host")
    .withCopyContentToContainer(copies)
    .withCopyDirectoriesToContainer([
      { source: join(ROOT, "kong-plugins"), target: "/krs/kong-plugins" },
      { source: fixtureRoot, target: "/krs/fixtures" },
    ])
    .withLogConsumer((stream) => {
      stream.on("data", (chunk: Buffer | string) => lines.push(...String(chunk).split("\n").filter((l) => l !== "")));
    })
    .withWaitStrategy(Wait.forLogMessage(/start worker process/))
    .withStartupTimeout(STARTUP_MS);
  if (opts.database === true) {
    const pg = await startPostgres();
    postgres = pg.container;
    Object.assign(env, {
      KONG_DATABASE: "postgres",
      KONG_PG_HOST: "127.0.0.1",
      KONG_PG_PORT: String(pg.port),
      KONG_PG_USER: "kong",
      KONG_PG_PASSWORD: "kong",
      KONG_PG_DATABASE: "kong",
      // Admin API changes reach the router and plugins before the next request, as the specs expect.
      KONG_WORKER_CONSISTENCY: "strict",
    });
    container = container.withCommand([
      "sh", "-c",
      "kong migrations bootstrap && kong config db_import /krs/kong.yml && exec /docker-entrypoint.sh kong docker-start",
    ]);
  } else {
    Object.assign(env, { KONG_DATABASE: "off", KONG_DECLARATIVE_CONFIG: "/krs/kong.yml" });
  }
  const kong = await container.withEnvironment(env).start().catch(async (e: unknown) => {
    await postgres?.stop();
    throw e;
  });
  const adminUrl = `http://127.0.0.1:${adminPort}`;
  await waitForAdmin(adminUrl, () => lines.join("\n"));
  const errorLog = () => [...lines];
  return {
    proxyUrl: `http://127.0.0.1:${proxyPort}`,
    adminUrl,
    prefix,
    errorLog,
    unexpectedErrors: (expected = []) => errorLog().filter((l) => /\[(error|alert|crit|emerg)\]/.test(l) && !expected.some((re) => re.test(l))),
    stop: async () => {
      await kong.stop();
      await postgres?.stop();
    },
  };
}

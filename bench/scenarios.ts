// Benchmark scenarios. To add one (a plugin, say), append an entry to SCENARIOS: give it
// a gateway config (usually `oneService(env, { plugins: [...] })`), a path, and the
// scenario it is compared with (usually `gateway-no-plugins`).

/** What a scenario's config and setup can use: the ports this run started things on. */
export interface BenchEnv {
  /** Base URL of the nginx benchmark upstream, e.g. http://127.0.0.1:41234 */
  upstreamUrl: string;
  /** Port of the run's redis-server; set only when the scenario has `needsRedis`. */
  redisPort?: number;
}

/** Kong 3.x declarative config (the subset the benchmarks use). */
export interface DeclarativeConfig {
  _format_version: "3.0";
  services?: ServiceEntry[];
  routes?: (RouteEntry & { service: { name: string } })[];
  plugins?: PluginEntry[];
  consumers?: ConsumerEntry[];
}

export interface ServiceEntry {
  name: string;
  url: string;
  routes?: RouteEntry[];
  plugins?: PluginEntry[];
}

export interface RouteEntry {
  name: string;
  paths?: string[];
  hosts?: string[];
  methods?: string[];
  strip_path?: boolean;
  plugins?: PluginEntry[];
}

export interface PluginEntry {
  name: string;
  config?: Record<string, unknown>;
  enabled?: boolean;
}

export interface ConsumerEntry {
  username: string;
  custom_id?: string;
  plugins?: PluginEntry[];
}

interface ScenarioBase {
  name: string;
  /** One line for the report. */
  description: string;
  /** Request path (with query) that wrk sends. */
  path: string;
  method?: string;
  body?: string;
  headers?: Record<string, string>;
  /** Extra Lua for wrk's script (e.g. a `request` function that varies keys). */
  wrkLua?: string;
  /** Name of the scenario this one is compared with; it runs in the same invocation. */
  baseline?: string;
  /** Status a single check request must get before the load starts (default 200).
   *  When it is >= 400, wrk's error-status count is expected and not flagged. */
  expectStatus?: number;
  /** Start a redis-server for this scenario (its port is `env.redisPort`). */
  needsRedis?: boolean;
  /** Runs after the processes are up and before the check request (e.g. seed Redis). */
  setup?: (env: BenchEnv) => Promise<void>;
}

export type Scenario =
  | (ScenarioBase & { target: "upstream" })
  | (ScenarioBase & { target: "gateway"; config: (env: BenchEnv) => DeclarativeConfig });

/** The usual shape: one service pointing at the benchmark upstream, one route on "/". */
export function oneService(
  env: BenchEnv,
  extra: { plugins?: PluginEntry[]; routePlugins?: PluginEntry[]; consumers?: ConsumerEntry[] } = {},
): DeclarativeConfig {
  const config: DeclarativeConfig = {
    _format_version: "3.0",
    services: [
      {
        name: "bench",
        url: env.upstreamUrl,
        routes: [{ name: "bench-root", paths: ["/"], ...(extra.routePlugins !== undefined ? { plugins: extra.routePlugins } : {}) }],
        ...(extra.plugins !== undefined ? { plugins: extra.plugins } : {}),
      },
    ],
  };
  if (extra.consumers !== undefined) config.consumers = extra.consumers;
  return config;
}

export const SCENARIOS: Scenario[] = [
  {
    name: "upstream-direct",
    description: "wrk straight at the nginx upstream (the ceiling)",
    target: "upstream",
    path: "/",
  },
  {
    name: "gateway-no-plugins",
    description: "through the local gateway, one service and route, no plugins",
    target: "gateway",
    config: (env) => oneService(env),
    path: "/",
    baseline: "upstream-direct",
  },
];

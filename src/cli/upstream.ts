// A small httpbin-like HTTP server: the service behind the gateway for `make up` and
// the integration tests. Node's `http` only, no dependencies.

import { randomBytes } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { parseArgs as nodeParseArgs } from "node:util";

export interface UpstreamServer {
  port: number;
  host: string;
  close(): Promise<void>;
}

const DEFAULT_HOST = "127.0.0.1";
const DEFAULT_PORT = 8080;
const MAX_DELAY_MS = 60_000;
const MAX_BYTES = 10 * 1024 * 1024;
const HITS_PATH = "/__hits";

type Query = Record<string, string | string[]>;

interface Echo {
  method: string;
  path: string;
  query: Query;
  headers: Record<string, string | string[]>;
  body: string;
  url: string;
  origin: string;
}

function queryObject(params: URLSearchParams): Query {
  const out: Query = {};
  for (const [name, value] of params) {
    const prev = out[name];
    if (prev === undefined) out[name] = value;
    else if (Array.isArray(prev)) prev.push(value);
    else out[name] = [prev, value];
  }
  return out;
}

function headerObject(req: http.IncomingMessage): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (value !== undefined) out[name.toLowerCase()] = value;
  }
  return out;
}

function echo(req: http.IncomingMessage, url: URL, body: Buffer): Echo {
  return {
    method: req.method ?? "GET",
    path: url.pathname,
    query: queryObject(url.searchParams),
    headers: headerObject(req),
    body: body.toString("utf8"),
    url: url.toString(),
    origin: req.socket.remoteAddress ?? "",
  };
}

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

/** Parses a path segment that must be a plain non-negative decimal integer. */
function intSegment(segment: string): number | undefined {
  if (!/^[0-9]{1,10}$/.test(segment)) return undefined;
  return Number(segment);
}

/** 1xx, 204 and 304 responses never carry a body. */
function statusAllowsBody(code: number): boolean {
  return code >= 200 && code !== 204 && code !== 304;
}

export function startUpstream(opts: { host?: string; port?: number }): Promise<UpstreamServer> {
  const host = opts.host ?? DEFAULT_HOST;
  const hits = new Map<string, number>();
  let port = 0;

  const send = (
    res: http.ServerResponse,
    status: number,
    body: unknown,
    headers: Record<string, string> = {},
  ): void => {
    const common = { "X-Upstream-Port": String(port), ...headers };
    if (!statusAllowsBody(status) || body === undefined) {
      res.writeHead(status, common);
      res.end();
      return;
    }
    const text = JSON.stringify(body);
    res.writeHead(status, {
      "Content-Type": "application/json",
      "Content-Length": String(Buffer.byteLength(text)),
      ...common,
    });
    res.end(text);
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    // The Host header may be missing or malformed; the echoed URL still needs a base.
    let url: URL;
    try {
      url = new URL(req.url ?? "/", `http://${req.headers.host ?? `${host}:${port}`}`);
    } catch {
      url = new URL(req.url ?? "/", `http://${host}:${port}`);
    }
    const path = url.pathname;
    const method = req.method ?? "GET";
    const body = await readBody(req);

    if (path === HITS_PATH) {
      if (method === "GET" || method === "HEAD") {
        send(res, 200, Object.fromEntries(hits));
      } else if (method === "DELETE") {
        hits.clear();
        send(res, 204, undefined);
      } else {
        send(res, 405, { message: "method not allowed" }, { Allow: "GET, HEAD, DELETE" });
      }
      return;
    }
    hits.set(path, (hits.get(path) ?? 0) + 1);

    if (path === "/anything" || path.startsWith("/anything/")) {
      send(res, 200, echo(req, url, body));
      return;
    }

    const match = /^\/(status|delay|bytes|cache)\/([^/]+)$/.exec(path);
    const arg = match === null ? undefined : intSegment(match[2] ?? "");
    if (match === null || arg === undefined) {
      send(res, 404, { message: "not found" });
      return;
    }

    switch (match[1]) {
      case "status":
        if (arg < 200 || arg > 599) {
          send(res, 400, { message: "status code must be between 200 and 599" });
        } else {
          send(res, arg, { status: arg });
        }
        return;
      case "delay": {
        const ms = Math.min(arg, MAX_DELAY_MS);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, ms);
          // A client that gave up must not keep the timer (and the close()) waiting.
          res.on("close", () => {
            clearTimeout(timer);
            resolve();
          });
        });
        if (!res.writableEnded && !res.destroyed) send(res, 200, echo(req, url, body));
        return;
      }
      case "bytes": {
        const data = randomBytes(Math.min(arg, MAX_BYTES));
        res.writeHead(200, {
          "Content-Type": "application/octet-stream",
          "Content-Length": String(data.length),
          "X-Upstream-Port": String(port),
        });
        res.end(data);
        return;
      }
      case "cache":
        send(res, 200, echo(req, url, body), { "Cache-Control": `public, max-age=${arg}` });
        return;
      default:
        send(res, 404, { message: "not found" });
    }
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (res.headersSent) {
        res.destroy();
      } else {
        send(res, 500, { message: err instanceof Error ? err.message : String(err) });
      }
    });
  });

  // Longer than nginx's upstream keepalive_timeout (60 s): a pooled connection must not be
  // closed here just as the gateway reuses it (that race shows up as a 502).
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;

  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off("error", reject);
      port = (server.address() as AddressInfo).port;
      resolve({
        port,
        host,
        close: () =>
          new Promise<void>((done, fail) => {
            server.close((err) => (err === undefined ? done() : fail(err)));
            // Keep-alive connections (the gateway pools them) would hold close() open.
            server.closeAllConnections();
          }),
      });
    });
  });
}

const USAGE = "usage: krs upstream [--host HOST] [--port PORT]";

function parseArgs(argv: string[]): { host: string; port: number } | string {
  let values: { host?: string; port?: string };
  try {
    ({ values } = nodeParseArgs({ args: argv, options: { host: { type: "string" }, port: { type: "string" } }, strict: true, allowPositionals: false }));
  } catch (e) {
    const err = e as Error & { code?: string };
    const quoted = /'([^']*)'/.exec(err.message)?.[1] ?? "";
    if (err.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") return `${quoted.split(" ")[0]} needs a value`;
    return `unknown argument: ${argv.find((a) => a === quoted || a.startsWith(quoted + "=")) ?? quoted}`;
  }
  if (values.host === "") return "--host needs a value";
  if (values.port === "") return "--port needs a value";
  let port = DEFAULT_PORT;
  if (values.port !== undefined) {
    const n = intSegment(values.port);
    if (n === undefined || n > 65535) return `invalid port: ${values.port}`;
    port = n;
  }
  return { host: values.host ?? DEFAULT_HOST, port };
}

/** CLI: `krs upstream [--port P] [--host H]`; runs until SIGINT/SIGTERM; prints one line with the URL. Returns exit code. */
export async function upstreamCommand(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(USAGE);
    return 0;
  }
  const args = parseArgs(argv);
  if (typeof args === "string") {
    console.error(`krs upstream: ${args} (krs upstream --help)`);
    return 2;
  }
  let server: UpstreamServer;
  try {
    server = await startUpstream(args);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const reason =
      code === "EADDRINUSE"
        ? `${args.host}:${args.port} is already in use`
        : err instanceof Error
          ? err.message
          : String(err);
    console.error(`krs upstream: cannot listen: ${reason}`);
    return 1;
  }
  const shown = server.host.includes(":") ? `[${server.host}]` : server.host;
  console.log(`upstream listening on http://${shown}:${server.port}`);

  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      resolve();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  await server.close();
  return 0;
}

/**
 * The Admin API of the local gateway: Kong's read endpoints and `POST /config` (DB-less
 * reload without restart, validated first; a bad config changes nothing), seen by every
 * worker.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ON_KONG, gateway, getJson, stopAll, upstream, type TestGateway } from "../helpers/services.js";

let gw: TestGateway;
let url: string;

const initial = () => ({
  _format_version: "3.0",
  services: [{ name: "one", url, routes: [{ name: "one", paths: ["/one"] }] }],
  consumers: [{ username: "carol", custom_id: "c-1" }, { username: "dan 50%/x" }],
  plugins: [{ name: "krs-test-second", config: { tag: "v1" } }],
});

beforeAll(async () => {
  const up = await upstream();
  url = `http://127.0.0.1:${up.port}`;
  gw = await gateway(initial(), { workers: 2 });
});

afterAll(stopAll);

async function postConfig(body: unknown, contentType = "application/json") {
  return getJson(`${gw.adminUrl}/config`, {
    method: "POST",
    headers: { "content-type": contentType },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

/** Enough requests that both workers answer some (connections are spread by the kernel). */
async function manyTags(path: string, n = 40): Promise<Set<string | null>> {
  const tags = new Set<string | null>();
  await Promise.all(Array.from({ length: n }, async () => {
    const res = await fetch(`${gw.proxyUrl}${path}`, { headers: { connection: "close" } });
    await res.arrayBuffer();
    tags.add(res.headers.get("x-second-tag"));
  }));
  return tags;
}

describe("read endpoints", () => {
  it("GET / describes the node", async () => {
    const { status, body } = await getJson(`${gw.adminUrl}/`);
    expect(status).toBe(200);
    expect(body.tagline).toBe("Welcome to kong");
    expect(body.configuration.database).toBe("off");
    expect(body.node_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(body.plugins.available_on_server["krs-test-first"]).toBe(true);
  });

  it("lists and fetches entities in Kong's shape", async () => {
    const services = await getJson(`${gw.adminUrl}/services`);
    expect(services.body.next).toBeNull();
    expect(services.body.data.map((s: { name: string }) => s.name)).toEqual(["one"]);
    const byName = await getJson(`${gw.adminUrl}/services/one`);
    expect(byName.body.host).toBe("127.0.0.1");
    const byId = await getJson(`${gw.adminUrl}/services/${byName.body.id}`);
    expect(byId.body.name).toBe("one");
    const routes = await getJson(`${gw.adminUrl}/services/one/routes`);
    expect(routes.body.data[0].service).toEqual({ id: byName.body.id });
    expect((await getJson(`${gw.adminUrl}/consumers/carol`)).body.custom_id).toBe("c-1");
    const plugins = await getJson(`${gw.adminUrl}/plugins`);
    expect(plugins.body.data[0].config).toEqual({ tag: "v1", count: 3, exit_in: "access", exit_body: true, serialize_probe: false });
    expect((await getJson(`${gw.adminUrl}/consumers/nobody`)).status).toBe(404);
    // Each path segment is decoded exactly once: %2F stays inside it, %25 is a "%".
    expect((await getJson(`${gw.adminUrl}/consumers/dan%2050%25%2Fx`)).body.username).toBe("dan 50%/x");
    expect((await getJson(`${gw.adminUrl}/routes`)).body.data).toHaveLength(1);
    // An empty list is an array, not an object.
    expect((await getJson(`${gw.adminUrl}/consumers/carol/plugins`)).body.data).toEqual([]);
  });

  it("derives the same ids from the same names (nodes agree without a database)", async () => {
    const other = await gateway(initial(), { workers: 1 });
    const a = await getJson(`${gw.adminUrl}/plugins`);
    const b = await getJson(`${other.adminUrl}/plugins`);
    expect(b.body.data[0].id).toBe(a.body.data[0].id);
    await other.stop();
  });

  it("GET /plugins/schema/{name} answers the config record as JSON, functions left out, as Kong does", async () => {
    const { status, body } = await getJson(`${gw.adminUrl}/plugins/schema/krs-test-first`);
    expect(status).toBe(200);
    // Kong's shape: a list of one-key objects, in the schema's order.
    expect(body.fields.every((f: object) => Object.keys(f).length === 1)).toBe(true);
    expect(body.fields.map((f: object) => Object.keys(f)[0])).toEqual(["tag", "exit_status", "exit_in", "exit_body", "serialize_probe", "error_in", "count"]);
    const fields = Object.fromEntries(body.fields.map((f: object) => Object.entries(f)[0]));
    expect(fields.tag).toMatchObject({ type: "string", required: true, description: "Echoed in headers." });
    expect(fields.exit_status).toMatchObject({ type: "integer", between: [100, 599] });
    expect(fields.exit_in).toMatchObject({ default: "access", one_of: ["access", "header_filter"] });

    // redis-cache's content_type elements have a custom_validator (a function): left out.
    const cache = await getJson(`${gw.adminUrl}/plugins/schema/redis-cache`);
    expect(cache.status).toBe(200);
    const cacheFields = Object.fromEntries(cache.body.fields.map((f: object) => Object.entries(f)[0]));
    expect(cacheFields.content_type).toMatchObject({ type: "array", elements: { type: "string" }, default: ["text/plain", "application/json"] });
    expect(cacheFields.content_type.elements.custom_validator).toBeUndefined();
    // A nested record's fields keep Kong's list shape.
    expect(Array.isArray(cacheFields.redis.fields)).toBe(true);
    expect(cacheFields.redis.fields.map((f: object) => Object.keys(f)[0])).toContain("password");
  });

  it("GET /plugins/schema/{name} for a plugin not enabled: 404", async () => {
    const { status, body } = await getJson(`${gw.adminUrl}/plugins/schema/no-such-plugin`);
    expect(status).toBe(404);
    expect(body).toEqual({ message: "No plugin named 'no-such-plugin'" });
  });

  it("GET /status answers", async () => {
    const { status, body } = await getJson(`${gw.adminUrl}/status`);
    expect(status).toBe(200);
    expect(body.database.reachable).toBe(true);
  });
});

describe("POST /config", () => {
  it("refuses an invalid config with Kong's error shape and keeps the old one", async () => {
    const bad = { ...initial(), plugins: [{ name: "krs-test-second", config: { tag: 42 } }] };
    const res = await postConfig(bad);
    expect(res.status).toBe(400);
    expect(res.body.name).toBe("invalid declarative configuration");
    expect(res.body.message).toContain("config.tag: expected a string");
    expect(await manyTags("/one/anything")).toEqual(new Set(["v1"]));
  });

  it("refuses a body that is not a config", async () => {
    expect((await postConfig("{not json")).status).toBe(400);
    expect((await postConfig("a: [", "application/x-yaml")).status).toBe(400);
  });

  it("refuses NaN, Infinity, 1e309 and a regex path PCRE cannot compile with 400, naming the field", async () => {
    const service = (extra: string) => `{"_format_version":"3.0","services":[{"name":"n","url":"${url}"${extra}}]}`;
    for (const extra of [`,"retries":NaN`, `,"port":Infinity`, `,"read_timeout":1e309`]) {
      const res = await postConfig(service(extra));
      expect(res.status, extra).toBe(400);
      expect(res.body.name).toBe("invalid declarative configuration");
      if (!ON_KONG) expect(res.body.message).toMatch(/: (retries|port|read_timeout): expected an integer$/);
    }
    const regex = await postConfig({ _format_version: "3.0", services: [{ name: "rx", url, routes: [{ name: "rx", paths: ["~/((x"] }] }] });
    expect(regex.status).toBe(400);
    expect(regex.body.name).toBe("invalid declarative configuration");
    expect(regex.body.message).toContain("invalid regex: '/((x'");
    expect(await manyTags("/one/anything")).toEqual(new Set(["v1"]));
  });

  it("replaces the config on every worker without a restart", async () => {
    const next = {
      _format_version: "3.0",
      services: [{ name: "two", url, routes: [{ name: "two", paths: ["/two"] }] }],
      plugins: [{ name: "krs-test-second", config: { tag: "v2" } }],
    };
    const res = await postConfig(next);
    expect(res.status).toBe(201);
    expect(await manyTags("/two/anything")).toEqual(new Set(["v2"]));
    const gone = await getJson(`${gw.proxyUrl}/one/anything`);
    expect(gone.status).toBe(404);
  });

  it("accepts YAML, as Kong does", async () => {
    const yaml = `_format_version: "3.0"\nservices:\n  - name: three\n    url: ${url}\n    routes:\n      - name: three\n        paths: ["/three"]\n`;
    const res = await postConfig(yaml, "application/x-yaml");
    expect(res.status).toBe(201);
    expect(await manyTags("/three/anything")).toEqual(new Set([null]));
  });

  it("logs no unexpected errors", () => {
    expect(gw.unexpectedErrors()).toEqual([]);
  });
});

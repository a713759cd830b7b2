/**
 * The Redis core library (krs.redis.*) through the gateway, against real redis-server
 * processes: AUTH (password and ACL user; once per connection, counted in INFO
 * commandstats), wrong password, database selection, TLS with and without certificate
 * verification, Redis stopped / hung / restarted, the circuit breaker (a kill and restart
 * under load; connections and PINGs counted at a server that never answers) and the
 * failure log throttled per plugin instance and Redis endpoint. The krs-test-redis
 * fixture plugin makes one Redis call per request and reports the result in headers.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, writeFileSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort, gateway, startRedis, stopAll, tempDir, upstream, type RedisServer } from "../helpers/services.js";

let upstreamUrl: string;

beforeAll(async () => {
  const up = await upstream();
  upstreamUrl = `http://127.0.0.1:${up.port}`;
});
afterAll(stopAll);

/** One service with the test plugin (and a plain route to compare latencies against). */
function configFor(redis: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return {
    _format_version: "3.0",
    services: [{
      name: "svc",
      url: upstreamUrl,
      routes: [
        { name: "redis", paths: ["/redis"], plugins: [{ name: "krs-test-redis", config: { key: "k", redis, ...extra } }] },
        { name: "plain", paths: ["/plain"] },
      ],
    }],
  };
}

async function hit(url: string): Promise<{ status: number; value: string | null; trips: string | null; ms: number }> {
  const started = performance.now();
  const res = await fetch(url);
  await res.arrayBuffer();
  return { status: res.status, value: res.headers.get("x-redis-value"), trips: res.headers.get("x-redis-round-trips"), ms: performance.now() - started };
}

function ioredis(server: RedisServer, opts: Record<string, unknown> = {}): Redis {
  return new Redis({ port: server.port, host: "127.0.0.1", lazyConnect: false, maxRetriesPerRequest: 1, ...opts });
}

describe("connections", () => {
  it("authenticates with a password, and counts round trips per request", async () => {
    const redis = await startRedis(["--requirepass", "s3cret-pw"]);
    const gw = await gateway(configFor({ port: redis.port, password: "s3cret-pw" }));
    const first = await hit(`${gw.proxyUrl}/redis/anything`);
    expect(first.status).toBe(200);
    expect(first.value).toBe("1");
    // command mode: INCR then EXPIRE, two round trips, counted in the request facts (kong.ctx.shared.krs.redis)
    expect(first.trips).toBe("2");
    expect((await hit(`${gw.proxyUrl}/redis/anything`)).value).toBe("2");
    expect(gw.unexpectedErrors()).toEqual([]);
  });

  it("authenticates as an ACL user", async () => {
    const redis = await startRedis(["--user", "default", "off", "--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all"]);
    const gw = await gateway(configFor({ port: redis.port, username: "alice", password: "alice-pw" }));
    expect((await hit(`${gw.proxyUrl}/redis/anything`)).value).toBe("1");
    expect(gw.unexpectedErrors()).toEqual([]);
  });

  it("a wrong password fails clearly and never logs the password", async () => {
    const redis = await startRedis(["--requirepass", "right-pw"]);
    const gw = await gateway(configFor({ port: redis.port, password: "wrong-pw-123" }, { fault_tolerant: false }));
    const res = await hit(`${gw.proxyUrl}/redis/anything`);
    expect(res.status).toBe(500);
    const log = gw.errorLog().join("\n");
    expect(log).toMatch(/\[krs-test-redis\] redis unavailable: redis AUTH refused: WRONGPASS/);
    expect(log).not.toContain("wrong-pw-123");
    expect(log).not.toContain("right-pw");
  });

  it("selects the configured database", async () => {
    const redis = await startRedis();
    const gw = await gateway(configFor({ port: redis.port, database: 3 }, { mode: "pipeline" }));
    const res = await hit(`${gw.proxyUrl}/redis/anything`);
    expect(res.value).toBe("1");
    // INCR, EXPIRE and GET pipelined: one round trip
    expect(res.trips).toBe("1");
    const db3 = ioredis(redis, { db: 3 });
    const db0 = ioredis(redis, { db: 0 });
    expect(await db3.get("krs:krs-test:v1:{k}:counter")).toBe("1");
    expect(await db3.ttl("krs:krs-test:v1:{k}:counter")).toBeGreaterThan(0);
    expect(await db0.dbsize()).toBe(0);
    db3.disconnect();
    db0.disconnect();
  });
  it("AUTH and SELECT go once per connection the gateway opens, never on a reused one", async () => {
    const redis = await startRedis(["--requirepass", "pool-pw"]);
    const admin = ioredis(redis, { password: "pool-pw" });
    const count = async () => {
      const [stats, commands] = [await admin.info("stats"), await admin.info("commandstats")];
      const calls = (cmd: string) => Number(new RegExp(`cmdstat_${cmd}:calls=(\\d+)`).exec(commands)?.[1] ?? 0);
      return { connections: Number(/total_connections_received:(\d+)/.exec(stats)![1]), auth: calls("auth"), select: calls("select") };
    };
    const before = await count();
    const gw = await gateway(configFor({ port: redis.port, password: "pool-pw", database: 5 }), { workers: 2 });
    const statuses: number[] = [];
    // Concurrent rounds: each worker opens a few connections, then reuses them.
    for (let round = 0; round < 15; round++) {
      await Promise.all(Array.from({ length: 8 }, async () => statuses.push((await hit(`${gw.proxyUrl}/redis/anything`)).status)));
    }
    const after = await count();
    admin.disconnect();
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    const opened = after.connections - before.connections;
    // Reuse really happened (120 requests, two Redis calls each)…
    expect(opened).toBeGreaterThan(0);
    expect(opened).toBeLessThan(60);
    // …and only the connections the gateway opened authenticated and selected.
    expect({ auth: after.auth - before.auth, select: after.select - before.select }).toEqual({ auth: opened, select: opened });
    expect(gw.unexpectedErrors()).toEqual([]);
  });
});

describe("scripts", () => {
  it("SCRIPT FLUSH in the middle of traffic: EVALSHA falls back to EVAL, no request fails", async () => {
    const redis = await startRedis();
    const now = 1_700_000_040_000;
    // One fixed one-minute window with room for everything: every call admits.
    const args = [now, "fixed", 120000, 1, "minute", 1_000_000, 1_700_000_040_000 - (now % 60000), 60000, 1_700_000_040_000 - (now % 60000) - 60000, 60000].map(String);
    const gw = await gateway(configFor({ port: redis.port }, { mode: "script", script: "rate-limit", script_args: args }));
    const admin = ioredis(redis);
    const statuses: number[] = [];
    const values = new Set<string>();
    let flushes = 0;
    const flusher = (async () => {
      for (let i = 0; i < 20; i++) {
        await admin.script("FLUSH");
        flushes++;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    for (let round = 0; round < 10; round++) {
      await Promise.all(Array.from({ length: 20 }, async () => {
        const res = await hit(`${gw.proxyUrl}/redis/anything`);
        statuses.push(res.status);
        values.add(String(res.value).split(",")[0]);
      }));
    }
    await flusher;
    expect(flushes).toBe(20);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect([...values]).toEqual(["1"]);
    const stats = await admin.info("commandstats");
    // Some calls really did hit NOSCRIPT and were retried with EVAL.
    expect(stats).toMatch(/cmdstat_eval:calls=[1-9]/);
    admin.disconnect();
    expect(gw.unexpectedErrors()).toEqual([]);
  });
});

describe("script replies", () => {
  it.each([12_000, 4_000_000])("a reply longer than one read (a %i-byte bulk inside an array) comes back whole, and the connection stays usable", async (size) => {
    const redis = await startRedis();
    const now = 1_700_000_040_000;
    const body = "x".repeat(size);
    const entry = `1|60000|${now}|E|${body}`;
    const admin = ioredis(redis);
    await admin.set("krs:test:big", entry, "PX", 60000);
    // cache-lookup-3: a readable entry is answered {1, value, refresh}.
    const gw = await gateway(configFor({ port: redis.port }, {
      mode: "script", script: "cache-lookup",
      script_keys: ["krs:test:big", "krs:test:big:fill", "krs:test:big:refresh"],
      script_args: ["token", "1000", String(now), "0", "0", "E", "0"],
      value_md5: true,
    }));
    const reply = `[1,${entry},0]`;
    for (let i = 0; i < 3; i++) {
      const res = await hit(`${gw.proxyUrl}/redis/anything`);
      expect(res.status).toBe(200);
      expect(res.value).toBe(`${createHash("md5").update(reply).digest("hex")}:${reply.length}`);
    }
    admin.disconnect();
    expect(gw.unexpectedErrors()).toEqual([]);
  });

  it("a reply of 200,000 small values in a nested array (an ip-access list of 100,000 entries) comes back whole, read once", async () => {
    const redis = await startRedis();
    const admin = ioredis(redis);
    const names: string[] = [];
    for (let i = 0; i < 100_000; i++) names.push(`${10 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}.0/24`);
    for (let i = 0; i < names.length; i += 20_000) {
      const members: (string | number)[] = [];
      for (const name of names.slice(i, i + 20_000)) members.push("+inf", name);
      await admin.zadd("krs:test:list:entries", ...members);
    }
    await admin.set("krs:test:list:version", "7");
    // ip-access-load-3: { version, { entry, "0", ... } (by score, then byte order), {} }.
    const gw = await gateway(configFor({ port: redis.port }, {
      mode: "script", script: "ip-access-load",
      script_keys: ["krs:test:list:entries", "krs:test:list:reasons", "krs:test:list:version"],
      script_args: ["1700000000000", "0"],
      value_md5: true,
    }));
    const sorted = [...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const reply = `[7,[${sorted.map((n) => `${n},0`).join(",")}],[]]`;
    const expected = `${createHash("md5").update(reply).digest("hex")}:${reply.length}`;
    for (let i = 0; i < 2; i++) {
      const res = await hit(`${gw.proxyUrl}/redis/anything`);
      expect(res.status).toBe(200);
      expect(res.value).toBe(expected);
    }
    admin.disconnect();
    expect(gw.unexpectedErrors()).toEqual([]);
  });
});

describe("TLS", () => {
  let tlsRedis: RedisServer;
  let ca: string;
  let otherCa: string;

  beforeAll(async () => {
    const dir = tempDir("tls");
    const ssl = (args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
    for (const name of ["ca", "other-ca"]) {
      ssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", `/CN=krs test ${name}`, "-keyout", `${name}.key`, "-out", `${name}.pem`]);
    }
    ssl(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=redis.test", "-keyout", "server.key", "-out", "server.csr"]);
    writeFileSync(join(dir, "san.ext"), "subjectAltName=DNS:redis.test,IP:127.0.0.1\n");
    ssl(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem"]);
    // nginx workers run unprivileged (nobody): they must be able to read the CA bundles.
    chmodSync(dir, 0o755);
    for (const f of ["ca.pem", "other-ca.pem"]) chmodSync(join(dir, f), 0o644);
    ca = join(dir, "ca.pem");
    otherCa = join(dir, "other-ca.pem");
    const tlsPort = await freePort();
    tlsRedis = await startRedis([
      "--tls-port", String(tlsPort), "--tls-cert-file", join(dir, "server.pem"), "--tls-key-file", join(dir, "server.key"),
      "--tls-ca-cert-file", ca, "--tls-auth-clients", "no",
    ]);
    tlsRedis.port = tlsPort;
  });

  it("connects with TLS and verifies the certificate against the right CA", async () => {
    const gw = await gateway(configFor({ port: tlsRedis.port, ssl: true, ssl_verify: true, server_name: "redis.test" }), { trustedCertificate: ca });
    const res = await hit(`${gw.proxyUrl}/redis/anything`);
    expect(res.status).toBe(200);
    expect(res.value).toBe("1");
    expect(gw.unexpectedErrors()).toEqual([]);
  });

  it("refuses a server certificate signed by another CA", async () => {
    const gw = await gateway(configFor({ port: tlsRedis.port, ssl: true, ssl_verify: true, server_name: "redis.test" }, { fault_tolerant: false }), { trustedCertificate: otherCa });
    const res = await hit(`${gw.proxyUrl}/redis/anything`);
    expect(res.status).toBe(500);
    // Never as a plugin crash: Debian's lua-resty-core asserts on a synchronous failure.
    expect(gw.errorLog().join("\n")).not.toMatch(/error in access phase/);
    expect(gw.errorLog().join("\n")).toMatch(/TLS handshake with redis at 127\.0\.0\.1:\d+ failed: (\d+: (self-signed certificate in certificate chain|certificate verify failed)|handshake aborted)/);
  });
});

describe("failures", () => {
  it("Redis stopped: fault_tolerant lets requests through, otherwise 500; errors logged once per interval", async () => {
    const redis = await startRedis();
    const gw = await gateway(configFor({ port: redis.port }), { workers: 1 });
    const strict = await gateway(configFor({ port: redis.port }, { fault_tolerant: false }), { workers: 1 });
    expect((await hit(`${gw.proxyUrl}/redis/anything`)).value).toBe("1");
    await redis.stop();
    for (let i = 0; i < 20; i++) {
      const tolerant = await hit(`${gw.proxyUrl}/redis/anything`);
      expect(tolerant.status).toBe(200);
      expect(tolerant.value).toBe("failed");
      expect((await hit(`${strict.proxyUrl}/redis/anything`)).status).toBe(500);
    }
    const lines = gw.errorLog().filter((l) => l.includes("[krs-test-redis] redis unavailable"));
    expect(lines.length).toBe(1);
  });

  it("two instances on two Redis endpoints failing differently: both failures logged within the interval, each naming its instance and endpoint", async () => {
    const locked = await startRedis(["--requirepass", "right-pw"]);
    const plain = await startRedis();
    const gw = await gateway({
      _format_version: "3.0",
      services: [{
        name: "svc",
        url: upstreamUrl,
        routes: [
          { name: "a", paths: ["/a"], plugins: [{ name: "krs-test-redis", instance_name: "wrong-password", config: { key: "a", redis: { port: locked.port, password: "wrong-pw-456" } } }] },
          // TLS towards a Redis that speaks plain TCP: the handshake fails.
          { name: "b", paths: ["/b"], plugins: [{ name: "krs-test-redis", config: { key: "b", redis: { port: plain.port, ssl: true, database: 2, timeout: 250 } } }] },
        ],
      }],
    }, { workers: 1 });
    for (let i = 0; i < 5; i++) {
      expect((await hit(`${gw.proxyUrl}/a/anything`)).value).toBe("failed");
      expect((await hit(`${gw.proxyUrl}/b/anything`)).value).toBe("failed");
    }
    const lines = gw.errorLog().filter((l) => l.includes("[krs-test-redis] redis unavailable"));
    const auth = lines.filter((l) => l.includes("AUTH refused"));
    const tls = lines.filter((l) => l.includes("TLS handshake"));
    expect([auth.length, tls.length, lines.length]).toEqual([1, 1, 2]);
    expect(auth[0]).toContain(`(instance wrong-password (id `);
    expect(auth[0]).toContain(`redis 127.0.0.1:${locked.port}/0)`);
    expect(tls[0]).toMatch(new RegExp(`\\(instance [0-9a-f-]{36}, redis 127\\.0\\.0\\.1:${plain.port}/2\\)`));
    expect(lines.join("\n")).not.toMatch(/wrong-pw-456|right-pw/);
  });

  it("Redis restarted: recovers without restarting the gateway", async () => {
    const redis = await startRedis();
    const gw = await gateway(configFor({ port: redis.port }), { workers: 1 });
    expect((await hit(`${gw.proxyUrl}/redis/anything`)).value).toBe("1");
    await redis.stop();
    for (let i = 0; i < 5; i++) expect((await hit(`${gw.proxyUrl}/redis/anything`)).value).toBe("failed");
    // Same port as before: the gateway's config still points at it.
    const restarted = await startRedis([], redis.port);
    const deadline = Date.now() + 5000;
    let value: string | null = "failed";
    while (Date.now() < deadline && value === "failed") {
      value = (await hit(`${gw.proxyUrl}/redis/anything`)).value;
      if (value === "failed") await new Promise((r) => setTimeout(r, 100));
    }
    expect(value).toBe("1");
    await restarted.stop();
  });

  it("Redis hung: after the breaker opens, requests add under 5 ms", async () => {
    const redis = await startRedis();
    const gw = await gateway(configFor({ port: redis.port, timeout: 300 }), { workers: 1 });
    expect((await hit(`${gw.proxyUrl}/redis/anything`)).value).toBe("1");
    redis.process.kill("SIGSTOP");
    try {
      // The first failures wait for the 300 ms timeout…
      const slow = await hit(`${gw.proxyUrl}/redis/anything`);
      expect(slow.value).toBe("failed");
      expect(slow.ms).toBeGreaterThanOrEqual(250);
      for (let i = 0; i < 3; i++) await hit(`${gw.proxyUrl}/redis/anything`);
      // …then the circuit is open: compare with a route that has no plugin.
      const with_: number[] = [];
      const without: number[] = [];
      for (let i = 0; i < 30; i++) {
        const r = await hit(`${gw.proxyUrl}/redis/anything`);
        if (r.value === "failed" && r.ms < 250) with_.push(r.ms);
        without.push((await hit(`${gw.proxyUrl}/plain/anything`)).ms);
      }
      // A probe every 100 ms waits for the timeout once more (one request at a time, in
      // this sequential loop a sizeable share); the rest fail fast.
      expect(with_.length).toBeGreaterThanOrEqual(20);
      const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
      expect(median(with_) - median(without)).toBeLessThan(5);
    } finally {
      redis.process.kill("SIGCONT");
    }
    // And it recovers once Redis answers again.
    const deadline = Date.now() + 5000;
    let value: string | null = "failed";
    while (Date.now() < deadline && value === "failed") {
      value = (await hit(`${gw.proxyUrl}/redis/anything`)).value;
      if (value === "failed") await new Promise((r) => setTimeout(r, 100));
    }
    // INCRs sent while Redis was paused were executed when it resumed, so the count is ≥ 2.
    expect(Number(value)).toBeGreaterThanOrEqual(2);
  });
});

/** Resolves once Redis on `port` answers PING (a listening socket is not enough). */
async function firstPong(port: number, deadlineMs = 5000): Promise<number> {
  const deadline = Date.now() + deadlineMs;
  while (Date.now() < deadline) {
    const answered = await new Promise<boolean>((res) => {
      const s = connect(port, "127.0.0.1");
      let data = "";
      s.setTimeout(200, () => { s.destroy(); res(false); });
      s.once("connect", () => s.write("PING\r\n"));
      s.on("data", (d) => {
        data += d.toString("latin1");
        if (data.includes("\r\n")) { s.destroy(); res(data.startsWith("+PONG")); }
      });
      s.once("error", () => res(false));
    });
    if (answered) return performance.now();
    await sleep(5);
  }
  throw new Error(`redis on ${port} did not answer PING`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("circuit breaker", () => {
  it("Redis killed and restarted ~100 ms later under load: no 500 among requests started 300 ms after it answers PING", async () => {
    const redis = await startRedis();
    const gw = await gateway(configFor({ port: redis.port, timeout: 1000 }, { fault_tolerant: false }), { workers: 2 });
    expect((await hit(`${gw.proxyUrl}/redis/anything`)).status).toBe(200);
    const samples: { start: number; status: number }[] = [];
    let stopLoad = false;
    // Eight clients back to back: both workers busy, a few hundred requests a second.
    const lanes = Array.from({ length: 8 }, async () => {
      for (let i = 0; i < 20_000 && !stopLoad; i++) {
        const start = performance.now();
        const res = await fetch(`${gw.proxyUrl}/redis/anything`);
        await res.arrayBuffer();
        samples.push({ start, status: res.status });
      }
    });
    await sleep(300);
    const killedAt = performance.now();
    await redis.stop();
    await sleep(100);
    await startRedis([], redis.port);
    const pongAt = await firstPong(redis.port);
    await sleep(1500);
    stopLoad = true;
    await Promise.all(lanes);

    const failed = samples.filter((s) => s.status === 500);
    const failedAfterPong = failed.filter((s) => s.start >= pongAt);
    // Negative: the last 500 started before Redis answered again.
    const lastFailure = Math.max(...failed.map((s) => s.start - pongAt));
    const afterPong = samples.filter((s) => s.start >= pongAt).length;
    console.log(`[breaker measurement] requests: ${samples.length}; 500s: ${failed.length} (${failedAfterPong.length} of ${afterPong} started after PING answered); Redis down ${(pongAt - killedAt).toFixed(0)} ms; last 500 started ${lastFailure.toFixed(0)} ms after PING answered`);
    expect(samples.filter((s) => s.status !== 200 && s.status !== 500)).toEqual([]);
    // The kill did hit requests, and traffic went on after the restart.
    expect(failed.filter((s) => s.start >= killedAt && s.start < pongAt).length).toBeGreaterThan(0);
    expect(samples.filter((s) => s.start >= pongAt + 300 && s.status === 200).length).toBeGreaterThan(50);
    const late = failed.filter((s) => s.start >= pongAt + 300).map((s) => Math.round(s.start - pongAt));
    expect(late.length === 0 ? "none" : `${late.length} 500s, started ${late[0]}..${late[late.length - 1]} ms after PING answered`).toBe("none");
    // nginx itself logs the reset of idle pooled connections when their Redis is killed.
    expect(gw.unexpectedErrors([/\[krs-test-redis\] redis unavailable/, /recv\(\) failed \(104: Connection reset by peer\)/])).toEqual([]);
  });
});

/** A TCP server that accepts and reads but never answers: a hung Redis whose calls we can count. */
async function blackHole(): Promise<{ port: number; connections: () => number; received: () => string; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  let connections = 0;
  let received = "";
  const server = createServer((s) => {
    connections++;
    sockets.add(s);
    s.on("data", (d) => (received += d.toString("latin1")));
    s.on("close", () => sockets.delete(s));
    s.on("error", () => undefined);
  });
  await new Promise<void>((res) => server.listen(0, "127.0.0.1", res));
  const addr = server.address();
  const port = typeof addr === "object" && addr !== null ? addr.port : 0;
  return {
    port,
    connections: () => connections,
    received: () => received,
    close: () => new Promise<void>((res) => {
      for (const s of sockets) s.destroy();
      server.close(() => res());
    }),
  };
}

describe("circuit breaker, counted in round trips", () => {
  it("any number of refused connections leaves it closed: the first request after Redis is back gets through", async () => {
    const redis = await startRedis();
    const gw = await gateway(configFor({ port: redis.port }, { fault_tolerant: false }), { workers: 1 });
    expect((await hit(`${gw.proxyUrl}/redis/anything`)).value).toBe("1");
    await redis.stop();
    for (let i = 0; i < 20; i++) expect((await hit(`${gw.proxyUrl}/redis/anything`)).status).toBe(500);
    const restarted = await startRedis([], redis.port);
    const first = await hit(`${gw.proxyUrl}/redis/anything`);
    expect(first.status).toBe(200);
    expect(first.value).toBe("1");
    const admin = ioredis(restarted);
    const stats = await admin.info("stats");
    admin.disconnect();
    // The gateway's one connection (pooled, reused for EXPIRE), the readiness probe and ours.
    expect(Number(/total_connections_received:(\d+)/.exec(stats)![1])).toBe(3);
    expect(gw.errorLog().join("\n")).not.toContain("circuit open");
  });

  it("hung Redis: opens after 3 timeouts; then a burst reaches Redis at most once, and one probe (a PING) goes after the interval", async () => {
    const hole = await blackHole();
    try {
      const gw = await gateway(configFor({ port: hole.port, timeout: 400 }), { workers: 1 });
      const burst = async (n: number) => Promise.all(Array.from({ length: n }, () => hit(`${gw.proxyUrl}/redis/anything`)));
      // Three calls wait for the timeout together: three connections, three INCRs sent.
      const first = await burst(3);
      expect(first.map((r) => r.value)).toEqual(["failed", "failed", "failed"]);
      expect(hole.connections()).toBe(3);
      // Open: 20 more requests. At most one is the probe (if the interval has passed already).
      const second = await burst(20);
      expect(second.every((r) => r.status === 200 && r.value === "failed")).toBe(true);
      expect(hole.connections()).toBeLessThanOrEqual(4);
      // After a timeout (any probe of the burst has failed) and more than the probe
      // interval: exactly one of the next 20 concurrent requests reaches Redis, with a PING.
      await sleep(600);
      const before = hole.connections();
      const pingsBefore = hole.received().split("ping").length;
      const third = await burst(20);
      expect(third.every((r) => r.status === 200 && r.value === "failed")).toBe(true);
      expect(hole.connections() - before).toBe(1);
      expect(hole.received().split("ping").length - pingsBefore).toBe(1);
    } finally {
      await hole.close();
    }
  });
});

/**
 * Measures what redis-cache's L1 costs one worker (issue 18.4): a 1-worker gateway, a
 * route with the plugin (l1_ttl 60 s so nothing expires during the run, everything else
 * default), 600 distinct 512 KiB responses fetched twice each (a miss, then a hit), then
 * the worker's VmRSS from /proc/<pid>/status, before and after.
 *
 *   npx tsx spec/scripts/cache-l1-rss.ts [count] [bytes]
 *
 * Not a test: RSS depends on the allocator and the GC; it is a number to compare, run by
 * hand. Uses the helpers of the integration specs (real Redis, nginx, HTTP; all stopped).
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { gateway, startRedis, stopAll } from "../helpers/services.js";

const COUNT = Number(process.argv[2] ?? 600);
const BYTES = Number(process.argv[3] ?? 512 * 1024);

function rssKiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)![1]);
}

async function main(): Promise<void> {
  // Distinct bodies: LuaJIT interns strings, so equal bodies would share one copy.
  const origin = createServer((req, res) => {
    const body = randomBytes(Math.ceil((BYTES * 3) / 4)).toString("base64").slice(0, BYTES);
    res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": String(body.length) });
    res.end(body);
  });
  await new Promise<void>((r) => origin.listen(0, "127.0.0.1", r));
  try {
    const redis = await startRedis();
    const gw = await gateway(
      {
        _format_version: "3.0",
        services: [
          {
            name: "origin",
            url: `http://127.0.0.1:${(origin.address() as AddressInfo).port}`,
            routes: [{ name: "big", paths: ["/big"], plugins: [{ name: "redis-cache", config: { l1_ttl: 60, redis: { port: redis.port } } }] }],
          },
        ],
      },
      { workers: 1 },
    );
    const master = Number(readFileSync(join(gw.prefix, "logs", "nginx.pid"), "utf8").trim());
    const worker = Number(execFileSync("pgrep", ["-P", String(master)], { encoding: "utf8" }).trim().split("\n")[0]);
    const before = rssKiB(worker);
    const statuses = new Map<string, number>();
    for (let i = 0; i < COUNT; i++) {
      for (let round = 0; round < 2; round++) {
        const res = await fetch(`${gw.proxyUrl}/big/${i}`);
        await res.arrayBuffer();
        const status = res.headers.get("x-cache-status") ?? "none";
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
      }
    }
    await new Promise((r) => setTimeout(r, 1000));
    const after = rssKiB(worker);
    console.log(`worker ${worker}: VmRSS before ${before} kB, after ${COUNT} distinct ${BYTES}-byte responses (each fetched twice) ${after} kB; growth ${((after - before) / 1024).toFixed(1)} MiB`);
    console.log(`X-Cache-Status counts: ${JSON.stringify(Object.fromEntries(statuses))}`);
  } finally {
    origin.close();
    origin.closeAllConnections();
    await stopAll();
  }
}

await main();

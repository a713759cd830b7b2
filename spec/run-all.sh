#!/usr/bin/env bash
# Every test: Lua unit specs (busted on LuaJIT), then the Node-driven specs (vitest) that
# start their own redis-server, upstreams and gateways on free loopback ports. Ends with
# one line "N passed, N failed" summing both runners.
set -uo pipefail
cd "$(dirname "$0")/.."
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
status=0

echo "== unit (busted, LuaJIT)"
busted | tee "$results/busted.tap"
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1

echo "== integration (vitest: real redis-server, nginx gateway, HTTP)"
npx vitest run --reporter=default --reporter=json --outputFile.json="$results/vitest.json" || status=1

node - "$results/busted.tap" "$results/vitest.json" <<'NODE'
const { readFileSync, existsSync } = require("node:fs");
const [tap, json] = process.argv.slice(2);
const lines = readFileSync(tap, "utf8").split("\n");
let passed = lines.filter((l) => /^ok \d+/.test(l)).length;
let failed = lines.filter((l) => /^not ok \d+/.test(l)).length;
let skipped = lines.filter((l) => /^ok \d+.*# skip/i.test(l)).length;
passed -= skipped;
if (existsSync(json)) {
  const report = JSON.parse(readFileSync(json, "utf8"));
  passed += report.numPassedTests;
  failed += report.numFailedTests;
  skipped += report.numPendingTests + report.numTodoTests;
} else {
  failed += 1; // vitest did not report at all
}
// A skipped test is never counted as passed.
console.log(`${passed} passed, ${failed} failed` + (skipped > 0 ? `, ${skipped} skipped` : ""));
NODE
exit $status

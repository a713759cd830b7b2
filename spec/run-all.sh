#!/usr/bin/env bash
# Every test: Lua unit specs (busted on LuaJIT), then the Node-driven specs (vitest) that
# start their own redis-server, upstreams and gateways on free loopback ports.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
echo "== unit (busted, LuaJIT)"
busted || status=1
echo "== integration (vitest: real redis-server, nginx gateway, HTTP)"
npx vitest run || status=1
exit $status

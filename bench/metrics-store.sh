#!/usr/bin/env bash
# redis-metrics's two ways to count (issue 13, item 3), measured in CPU time per request
# so that a loaded machine moves them less than a req/s ratio: (a) ngx.shared:incr for
# each of the 6 series a request touches; (b) the per-worker buffer (a Lua table add)
# with its flush's share (one incr per series per 1000 requests). One nginx worker, the
# real shared dict. Usage: bash bench/metrics-store.sh [requests]
set -euo pipefail
n=${1:-200000}
dir=$(mktemp -d)
trap 'kill "$(cat "$dir/nginx.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
modules=/usr/lib/nginx/modules
[[ -e $modules/ngx_http_lua_module.so ]] || modules=/usr/share/nginx/modules
mkdir -p "$dir/logs"
cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
daemon on;
pid $dir/nginx.pid;
error_log $dir/logs/error.log notice;
load_module $modules/ndk_http_module.so;
load_module $modules/ngx_http_lua_module.so;
events { worker_connections 64; }
http {
  access_log off;
  lua_shared_dict krs_metrics 16m;
  server {
    listen 127.0.0.1:$port;
    location / {
      content_by_lua_block {
        local N = $n
        local dict = ngx.shared.krs_metrics
        local keys = {}
        for i = 1, 6 do keys[i] = 'kong_http_requests_total{service="bench",route="bench-root",code="200",source="service",workspace="default",consumer="",n="' .. i .. '"}' end
        local t0 = os.clock()
        for _ = 1, N do for k = 1, 6 do dict:incr(keys[k], 1, 0) end end
        local shm = (os.clock() - t0) / N * 1e9
        local pending = {}
        t0 = os.clock()
        for i = 1, N do
          for k = 1, 6 do
            local key = keys[k]
            local v = pending[key]
            if v ~= nil then pending[key] = v + 1 else pending[key] = 1 end
          end
          if i % 1000 == 0 then
            for key, v in pairs(pending) do dict:incr(key, v, 0) end
            pending = {}
          end
        end
        local buffered = (os.clock() - t0) / N * 1e9
        ngx.say(string.format("per request (6 series): ngx.shared:incr %.0f ns CPU, per-worker buffer + flush %.0f ns CPU", shm, buffered))
      }
    }
  }
}
EOF
nginx -p "$dir" -c "$dir/nginx.conf"
for _ in 1 2 3; do curl -s "http://127.0.0.1:$port/"; done

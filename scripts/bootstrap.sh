#!/usr/bin/env bash
# Installs what kong-redis-suite needs on Debian/Ubuntu, only what is missing:
# nginx with lua-nginx-module, LuaJIT, the lua-resty libraries, cjson, busted, redis, wrk,
# promtool (Debian's prometheus package: the metrics specs parse every exposition with it),
# then the npm packages. Other systems: install the same (or OpenResty) by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

# file or command that proves it is there → Debian package
declare -A NEED=(
  [/usr/lib/nginx/modules/ngx_http_lua_module.so]=nginx-extras
  [/usr/share/lua/5.1/resty/core.lua]=lua-resty-core
  [/usr/share/lua/5.1/resty/lrucache.lua]=lua-resty-lrucache
  [/usr/share/lua/5.1/nginx/redis.lua]=lua-nginx-redis
  [/usr/share/lua/5.1/nginx/string.lua]=lua-nginx-string
  [/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so]=lua-cjson
  [/usr/share/lua/5.1/lyaml]=lua-yaml
  [cmd:luajit]=luajit2
  [cmd:busted]=lua-busted
  [cmd:luarocks]=luarocks
  [cmd:redis-server]=redis-server
  [cmd:wrk]=wrk
  [cmd:openssl]=openssl
  [cmd:curl]=curl
  [cmd:python3]=python3
  [cmd:promtool]=prometheus
)

missing=()
for probe in "${!NEED[@]}"; do
  if [[ $probe == cmd:* ]]; then
    command -v "${probe#cmd:}" >/dev/null 2>&1 || missing+=("${NEED[$probe]}")
  else
    # multiarch: accept the library under any triplet directory
    ls ${probe/x86_64-linux-gnu/*} >/dev/null 2>&1 || missing+=("${NEED[$probe]}")
  fi
done

if ((${#missing[@]} > 0)); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: missing ${missing[*]}; this is not a Debian/Ubuntu system: install nginx with lua-nginx-module (or OpenResty), LuaJIT, lua-resty-redis, lua-resty-string, lua-resty-lrucache, lua-cjson, lyaml, busted, redis-server, wrk and promtool" >&2
    exit 1
  fi
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "bootstrap: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  echo "bootstrap: installing ${missing[*]}"
  $SUDO apt-get update -qq
  # luajit2 (OpenResty's LuaJIT fork, what nginx-extras links) conflicts with Debian's luajit.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's postinst may start a system nginx/redis on the default ports; the suite runs its own.
  if command -v service >/dev/null 2>&1; then
    $SUDO service nginx stop >/dev/null 2>&1 || true
    # Only promtool is wanted from the prometheus package, not a server on :9090.
    $SUDO service prometheus stop >/dev/null 2>&1 || true
  fi
fi

if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "bootstrap: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

# kong-redis-suite — the two commands: `make up` (run it) and `make test` (test it).
SHELL := /bin/bash
.DEFAULT_GOAL := help

STATE       ?= .krs
PROXY       ?= 127.0.0.1:8000
ADMIN       ?= 127.0.0.1:8001
UPSTREAM_PORT ?= 8080
REDIS_PORT  ?= 6379
KRS         := node bin/krs.mjs

.PHONY: help bootstrap build check-build up down test test-unit test-integration bench profile typecheck clean

help:
	@echo "make up      install what is missing, build, start Redis + demo upstream + gateway with kong.yml"
	@echo "make down    stop everything make up started"
	@echo "make test    install what is missing, build, run every test"
	@echo "make bench   benchmarks (wrk), results in bench/results/"
	@echo "make profile instructions per request of each bench scenario (valgrind callgrind; repeatable)"
	@echo "make build   compile TypeScript to Lua (kong-plugins/, build/gateway/) and the CLI"

bootstrap:
	@bash scripts/bootstrap.sh

build: bootstrap
	@node scripts/build.mjs
	@node scripts/rockspec.mjs
	@npx tsc -p tsconfig.json

# kong-plugins/ is committed: a fresh build (in memory) must match it byte for byte.
check-build: bootstrap
	@node scripts/build.mjs --check
	@node scripts/rockspec.mjs --check

typecheck: bootstrap
	@npx tsc -p tsconfig.json --noEmit

up: build down
	@mkdir -p $(STATE)/redis
	@redis-server --bind 127.0.0.1 --port $(REDIS_PORT) --daemonize yes --save '' --appendonly no \
	  --dir $(abspath $(STATE)/redis) --pidfile $(abspath $(STATE)/redis/redis.pid) --logfile $(abspath $(STATE)/redis/redis.log)
	@nohup $(KRS) upstream --port $(UPSTREAM_PORT) > $(STATE)/upstream.log 2>&1 & echo $$! > $(STATE)/upstream.pid
	@for i in $$(seq 1 50); do curl -fsS -o /dev/null http://127.0.0.1:$(UPSTREAM_PORT)/anything 2>/dev/null && break; sleep 0.1; done
	@$(KRS) gateway start --config kong.yml --prefix $(STATE)/gateway --proxy $(PROXY) --admin $(ADMIN)
	@echo
	@echo "  proxy      http://$(PROXY)"
	@echo "  admin API  http://$(ADMIN)"
	@echo "  upstream   http://127.0.0.1:$(UPSTREAM_PORT)   redis 127.0.0.1:$(REDIS_PORT)"
	@echo
	@echo "  try:  curl -i http://$(PROXY)/demo/anything?hello=world"
	@echo "  stop: make down"

down:
	@if [ -f bin/krs.mjs ] && [ -d build/node ]; then $(KRS) gateway stop --prefix $(STATE)/gateway >/dev/null; fi
	@if [ -f $(STATE)/upstream.pid ]; then kill $$(cat $(STATE)/upstream.pid) 2>/dev/null || true; rm -f $(STATE)/upstream.pid; fi
	@if [ -f $(STATE)/redis/redis.pid ]; then kill $$(cat $(STATE)/redis/redis.pid) 2>/dev/null || true; rm -f $(STATE)/redis/redis.pid; fi
	@echo "stopped"

test: check-build build
	@bash spec/run-all.sh

test-unit: build
	@busted

test-integration: build
	@npx vitest run

bench: build
	@npx tsx bench/run.ts

# Instructions per request (callgrind), repeatable where req/s on a shared machine is not.
profile: build
	@command -v valgrind >/dev/null || { echo "make profile needs valgrind (apt-get install valgrind)"; exit 1; }
	@npx tsx bench/callgrind.ts $(ARGS)

clean: down
	rm -rf build $(STATE)

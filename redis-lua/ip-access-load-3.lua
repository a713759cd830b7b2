-- redis-ip-access: read one shared list as of one version (what a worker compiles, and
-- what `list` shows). Read-only: expired entries are skipped, not removed.
--
-- KEYS[1]  entries  krs:redis-ip-access:v1:{<list>}:entries   zset  entry -> expires_at ms (+inf: never)
-- KEYS[2]  reasons  krs:redis-ip-access:v1:{<list>}:reasons   hash  entry -> reason
-- KEYS[3]  version  krs:redis-ip-access:v1:{<list>}:version   string
--
-- ARGV[1]  now           unix ms, the caller's clock
-- ARGV[2]  with_reasons  "1": reasons too (listing); "0": not (a worker needs none)
--
-- Reply: { version, entries, reasons }
--   version  the list's version, "" when it has none
--   entries  { entry, expires_at, entry, expires_at, ... }  expires_at unix ms as a
--            string, "0" = never
--   reasons  { reason, ... } in the order of entries ("" = none), or {} without ARGV[2]
--
-- Clock: only ARGV[1], the caller's.
local rcall = redis.call

local now = ARGV[1]
local withReasons = ARGV[2] == "1"

local version = rcall("GET", KEYS[3]) or ""
local live = rcall("ZRANGEBYSCORE", KEYS[1], "(" .. now, "+inf", "WITHSCORES")
local names = {}
for i = 2, #live, 2 do
  if live[i] == "inf" then live[i] = "0" end
  names[#names + 1] = live[i - 1]
end
local reasonList = {}
if withReasons and #names > 0 then
  -- HGETALL rather than HMGET: unpacking 100,000 names would overflow Lua's stack.
  local all = rcall("HGETALL", KEYS[2])
  local byName = {}
  for i = 1, #all, 2 do byName[all[i]] = all[i + 1] end
  for i = 1, #names do reasonList[i] = byName[names[i]] or "" end
end
return { version, live, reasonList }

-- redis-ip-access: remove one entry of a shared list and tell every worker.
--
-- Removes the entry and its reason, drops entries expired by ARGV[2]; when something was
-- removed, gives the list a new version and PUBLISHes its name (see ip-access-add-3.lua).
-- An emptied list leaves only its version, for a day.
--
-- KEYS[1]  entries  krs:redis-ip-access:v1:{<list>}:entries   zset  entry -> expires_at ms (+inf: never)
-- KEYS[2]  reasons  krs:redis-ip-access:v1:{<list>}:reasons   hash  entry -> reason
-- KEYS[3]  version  krs:redis-ip-access:v1:{<list>}:version   string
--
-- ARGV[1]  entry    the address or CIDR, as it was added
-- ARGV[2]  now      unix ms, the caller's clock
-- ARGV[3]  channel  krs:redis-ip-access:v1:changes
-- ARGV[4]  list     the list's name, the message published
--
-- Reply: { removed, version }  removed = 1, or 0 when the list had no such live entry;
--                              version the list's version ("" when it has none)
--
-- Clock: only ARGV[2], the caller's.
local rcall = redis.call

local entries = KEYS[1]
local reasons = KEYS[2]
local versionKey = KEYS[3]

local entry = ARGV[1]
local now = tonumber(ARGV[2])
local channel = ARGV[3]
local list = ARGV[4]

local score = rcall("ZSCORE", entries, entry)
local live = score and (score == "inf" or tonumber(score) > now)
rcall("ZREM", entries, entry)
rcall("HDEL", reasons, entry)

local expired = rcall("ZRANGEBYSCORE", entries, "-inf", now)
for i = 1, #expired do rcall("HDEL", reasons, expired[i]) end
local pruned = rcall("ZREMRANGEBYSCORE", entries, "-inf", now)

if not live and pruned == 0 then
  return { 0, rcall("GET", versionKey) or "" }
end

local previous = rcall("GET", versionKey)
local seq = 0
if previous then seq = tonumber(string.match(previous, "%-(%d+)$")) or 0 end
local version = ARGV[2] .. "-" .. (seq + 1)
rcall("SET", versionKey, version)

local last = rcall("ZREVRANGE", entries, 0, 0, "WITHSCORES")
if last[2] == nil then
  rcall("DEL", entries, reasons)
  rcall("PEXPIRE", versionKey, 86400000)
elseif last[2] == "inf" then
  rcall("PERSIST", versionKey)
else
  rcall("PEXPIREAT", versionKey, tonumber(last[2]) + 86400000)
end

rcall("PUBLISH", channel, list)
return { live and 1 or 0, version }

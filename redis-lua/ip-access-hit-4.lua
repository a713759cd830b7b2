-- redis-ip-access: count one client's ban-worthy responses (a batch from one worker) and
-- ban it when it reaches the threshold, in one script: the count is shared by every node,
-- and exactly one call (the one that crosses the threshold) adds the ban and publishes it.
--
-- The counter is a fixed window that starts at the client's first counted response.
-- A client already banned (a live entry in the list) is not banned again, and its
-- counter is dropped when the ban is added. Adding a ban drops the list's expired entries
-- and their reasons.
--
-- KEYS[1]  counter  krs:redis-ip-access:v1:{<list>}:hits:<part(address)>  string  integer
-- KEYS[2]  entries  krs:redis-ip-access:v1:{<list>}:entries   zset  entry -> expires_at ms (+inf: never)
-- KEYS[3]  reasons  krs:redis-ip-access:v1:{<list>}:reasons   hash  entry -> reason
-- KEYS[4]  version  krs:redis-ip-access:v1:{<list>}:version   string
--
-- ARGV[1]  count       responses in this batch (>= 1)
-- ARGV[2]  window      ms the counter lives from its first response
-- ARGV[3]  threshold   responses that make a ban
-- ARGV[4]  expires_at  unix ms the ban ends
-- ARGV[5]  reason      text stored with the ban
-- ARGV[6]  now         unix ms, the caller's clock
-- ARGV[7]  channel     krs:redis-ip-access:v1:changes
-- ARGV[8]  list        the list's name, the message published
-- ARGV[9]  entry       the client address (the list entry)
--
-- Reply: { banned, count }  banned = 1 when this call added the ban; count the counter
--                           after this batch
--
-- Clock: only ARGV[4] and ARGV[6], the caller's.
local rcall = redis.call

local counter = KEYS[1]
local entries = KEYS[2]
local reasons = KEYS[3]
local versionKey = KEYS[4]

local count = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local threshold = tonumber(ARGV[3])
local expiresAt = tonumber(ARGV[4])
local reason = ARGV[5]
local now = tonumber(ARGV[6])
local entry = ARGV[9]

local total = rcall("INCRBY", counter, count)
if total == count then rcall("PEXPIRE", counter, window) end
if total < threshold then return { 0, total } end

local score = rcall("ZSCORE", entries, entry)
if score and (score == "inf" or tonumber(score) > now) then return { 0, total } end

-- Expired bans go here as in ip-access-add-3.lua: the ban list is changed by this script
-- far more often than by add, and would otherwise grow without bound.
local expired = rcall("ZRANGEBYSCORE", entries, "-inf", now)
for i = 1, #expired do rcall("HDEL", reasons, expired[i]) end
rcall("ZREMRANGEBYSCORE", entries, "-inf", now)

rcall("ZADD", entries, expiresAt, entry)
rcall("HSET", reasons, entry, reason)
rcall("DEL", counter)

local previous = rcall("GET", versionKey)
local seq = 0
if previous then seq = tonumber(string.match(previous, "%-(%d+)$")) or 0 end
rcall("SET", versionKey, ARGV[6] .. "-" .. (seq + 1))

-- The keys' lifetimes, as ip-access-add-3.lua sets them.
local last = rcall("ZREVRANGE", entries, 0, 0, "WITHSCORES")
if last[2] == "inf" then
  rcall("PERSIST", entries)
  rcall("PERSIST", reasons)
  rcall("PERSIST", versionKey)
else
  local until_ = tonumber(last[2])
  rcall("PEXPIREAT", entries, until_)
  rcall("PEXPIREAT", reasons, until_)
  rcall("PEXPIREAT", versionKey, until_ + 86400000)
end

rcall("PUBLISH", ARGV[7], ARGV[8])
return { 1, total }

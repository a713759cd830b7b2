-- redis-ip-access: add (or replace) one entry of a shared list and tell every worker.
--
-- Sets the entry's expiry and reason, drops entries expired by ARGV[4], gives the list a
-- new version and PUBLISHes the list's name, in one script: a list never changes in Redis
-- without a new version (what the periodic check compares) and the message (what the
-- subscribers act on). The three keys live as long as the list's longest-lived entry
-- (PEXPIREAT), or without a TTL while it holds an entry without one (docs/redis-keys.md).
--
-- KEYS[1]  entries  krs:redis-ip-access:v1:{<list>}:entries   zset  entry -> expires_at ms (+inf: never)
-- KEYS[2]  reasons  krs:redis-ip-access:v1:{<list>}:reasons   hash  entry -> reason
-- KEYS[3]  version  krs:redis-ip-access:v1:{<list>}:version   string
--
-- ARGV[1]  entry       the address or CIDR, validated by the caller
-- ARGV[2]  expires_at  unix ms; 0 = never
-- ARGV[3]  reason      text; "" = none
-- ARGV[4]  now         unix ms, the caller's clock
-- ARGV[5]  channel     krs:redis-ip-access:v1:changes
-- ARGV[6]  list        the list's name, the message published
--
-- Reply: { added, version }  added = 1 for a new entry, 0 when it replaced one; version
--                            the list's new version string
--
-- Clock: only ARGV[4] (and ARGV[2]), the caller's.
local rcall = redis.call

local entries = KEYS[1]
local reasons = KEYS[2]
local versionKey = KEYS[3]

local entry = ARGV[1]
local expiresAt = tonumber(ARGV[2])
local reason = ARGV[3]
local now = tonumber(ARGV[4])
local channel = ARGV[5]
local list = ARGV[6]

local expired = rcall("ZRANGEBYSCORE", entries, "-inf", now)
for i = 1, #expired do rcall("HDEL", reasons, expired[i]) end
rcall("ZREMRANGEBYSCORE", entries, "-inf", now)

local score = expiresAt > 0 and expiresAt or "+inf"
local added = rcall("ZADD", entries, score, entry)
if reason ~= "" then
  rcall("HSET", reasons, entry, reason)
else
  rcall("HDEL", reasons, entry)
end

-- A version is unique across the list's lifetimes (the caller's ms plus a sequence), so
-- a worker that missed a deletion and a re-creation still sees a different one.
local previous = rcall("GET", versionKey)
local seq = 0
if previous then seq = tonumber(string.match(previous, "%-(%d+)$")) or 0 end
local version = ARGV[4] .. "-" .. (seq + 1)
rcall("SET", versionKey, version)

local last = rcall("ZREVRANGE", entries, 0, 0, "WITHSCORES")
if last[2] == "inf" then
  rcall("PERSIST", entries)
  rcall("PERSIST", reasons)
  rcall("PERSIST", versionKey)
else
  local until_ = tonumber(last[2])
  rcall("PEXPIREAT", entries, until_)
  if rcall("EXISTS", reasons) == 1 then rcall("PEXPIREAT", reasons, until_) end
  -- The version outlives the entries by a day: a worker that checks after they expired
  -- still sees the list changed (its entries are gone there too, by their own expiry).
  rcall("PEXPIREAT", versionKey, until_ + 86400000)
end

rcall("PUBLISH", channel, list)
return { added, version }

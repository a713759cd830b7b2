--[[
cache-flush: drops every redis-cache entry kept in this Redis, in O(1), by moving to a
new generation (Admin API DELETE /redis-cache, `krs cache purge` without a key).

Every entry and lock key carries the generation in its hash tag
("krs:redis-cache:v1:{<generation>.<cache key>}:entry"); the gateway reads the
generation in the same round trip as each lookup, so after the increment no node finds
an older entry in Redis. Older keys are never read again and expire with their TTLs.

Clock: none.

KEYS[1]  the generation counter (string holding an integer; absent = 0; no TTL)

ARGV: none.

Reply: the new generation (integer).
]]
local rcall = redis.call

local generationKey = KEYS[1]

return rcall("INCR", generationKey)

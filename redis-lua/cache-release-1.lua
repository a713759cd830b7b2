--[[
cache-release: a redis-cache request gives back the fill or refresh lock it holds.

Only the holder can release: the lock is changed only while it still holds the
caller's token (a lock that expired and was taken by another request is left alone).
With a marker lifetime, the lock is replaced by the "uncacheable" marker "!" for that
long, so that requests waiting on the lock go upstream at once instead of waiting
(the holder's response could not be cached); without one it is deleted.

Clock: none.

KEYS[1]  the lock (string: holder token)

ARGV[1]  the caller's lock token
ARGV[2]  marker lifetime, milliseconds; "0" deletes the lock

Reply: 1 when the caller held the lock (and it was released), 0 otherwise.
]]
local rcall = redis.call

local lockKey = KEYS[1]
local token = ARGV[1]
local markerMs = tonumber(ARGV[2])

if rcall("GET", lockKey) ~= token then
  return 0
end
if markerMs > 0 then
  rcall("SET", lockKey, "!", "PX", markerMs)
else
  rcall("DEL", lockKey)
end
return 1

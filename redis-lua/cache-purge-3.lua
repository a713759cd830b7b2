--[[
cache-purge: removes one redis-cache entry with its fill and refresh locks (Admin API
DELETE /redis-cache/:cache_key, `krs cache purge KEY`).

A response that was being fetched when the purge ran may still be stored afterwards
(its request read the upstream before the purge).

Clock: none.

KEYS[1]  the entry
KEYS[2]  its fill lock
KEYS[3]  its refresh lock

ARGV: none.

Reply: 1 when the entry existed, 0 when it did not.
]]
local rcall = redis.call

local entryKey = KEYS[1]
local fillKey = KEYS[2]
local refreshKey = KEYS[3]

local existed = rcall("DEL", entryKey)
rcall("DEL", fillKey, refreshKey)
return existed

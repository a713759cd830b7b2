--[[
metrics-push: a node stores the snapshot of its counters for the cluster view and
registers itself as live until the snapshot expires; nodes whose registration expired
leave the index.

Clock: the gateway's (ARGV[4], epoch milliseconds), compared only with other nodes'
registrations, which used theirs.

KEYS[1]  this node's snapshot (string: JSON)
KEYS[2]  the index of live nodes (sorted set: node id → expiry, epoch ms)

ARGV[1]  the snapshot (JSON)
ARGV[2]  lifetime, milliseconds (a few push intervals)
ARGV[3]  this node's id
ARGV[4]  now, epoch milliseconds

Reply: the number of live nodes, this one included.
]]
local rcall = redis.call

local snapshotKey = KEYS[1]
local indexKey = KEYS[2]
local snapshot = ARGV[1]
local lifetimeMs = tonumber(ARGV[2])
local nodeId = ARGV[3]
local nowMs = tonumber(ARGV[4])

rcall("SET", snapshotKey, snapshot, "PX", lifetimeMs)
rcall("ZADD", indexKey, nowMs + lifetimeMs, nodeId)
rcall("ZREMRANGEBYSCORE", indexKey, "-inf", nowMs)
-- The index lives as long as its longest-lived node: a node with a shorter interval must
-- not cut a slower node's registration short.
local latest = rcall("ZRANGE", indexKey, -1, -1, "WITHSCORES")
local indexTtl = tonumber(latest[2]) - nowMs
if indexTtl > rcall("PTTL", indexKey) then
  rcall("PEXPIRE", indexKey, math.max(indexTtl, 1))
end
return rcall("ZCARD", indexKey)

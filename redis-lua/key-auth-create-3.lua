-- redis-key-auth: store a new API key (its SHA-256, never the key) and index it, atomically.
--
-- Refuses (writes nothing) when a record with this hash or an index entry with this id
-- already exists. Before writing, drops up to 100 index entries of keys that expired by
-- ARGV[8] (their records are already gone with their TTL), so the index stays bounded.
--
-- KEYS[1]  record   krs:redis-key-auth:v1:{k}:key:<sha256 hex>   hash
-- KEYS[2]  index    krs:redis-key-auth:v1:{k}:ids                 hash  id -> JSON summary
-- KEYS[3]  expiring krs:redis-key-auth:v1:{k}:expiring            zset  id -> expires_at
--
-- ARGV[1]  id                  the key's public id (uuid)
-- ARGV[2]  sha256              hex SHA-256 of the key (the same as in KEYS[1])
-- ARGV[3]  consumer_id         "" when not given
-- ARGV[4]  consumer_username   not empty
-- ARGV[5]  consumer_custom_id  "" when not given
-- ARGV[6]  created_at          unix seconds, the caller's clock, with its fraction (ms):
--                              the record and index keep the whole second
-- ARGV[7]  ttl                 whole seconds the key lives; 0 = until revoked
-- ARGV[8]  now                 unix seconds, the caller's clock (what counts as expired)
--
-- Reply: { 1, expires_at }  created; expires_at is created_at + ttl rounded up to the
--                           next whole second (a key lives at least ttl seconds, less
--                           than one more), or 0 (never)
--        { 0, "exists" }    a key with this hash or this id exists; nothing written
--
-- Clock: created_at, now and expires_at are the caller's; expires_at decides when the
-- gateway refuses the key. The record's TTL is Redis's own (EXPIRE ttl + 1: it outlives
-- expires_at, so the cleanup never cuts a key short when the clocks agree).
local rcall = redis.call

local record = KEYS[1]
local index = KEYS[2]
local expiring = KEYS[3]

local id = ARGV[1]
local sha = ARGV[2]
local consumer_id = ARGV[3]
local consumer_username = ARGV[4]
local consumer_custom_id = ARGV[5]
local created_at_exact = tonumber(ARGV[6])
local created_at = math.floor(created_at_exact)
local ttl = tonumber(ARGV[7])
local now = tonumber(ARGV[8])

local PURGE_BATCH = 100

if rcall("EXISTS", record) == 1 or rcall("HEXISTS", index, id) == 1 then
  return { 0, "exists" }
end

local expired = rcall("ZRANGEBYSCORE", expiring, "-inf", now, "LIMIT", 0, PURGE_BATCH)
if #expired > 0 then
  rcall("HDEL", index, unpack(expired))
  rcall("ZREM", expiring, unpack(expired))
end

local expires_at = 0
if ttl > 0 then expires_at = math.ceil(created_at_exact + ttl) end

rcall("HSET", record,
  "id", id,
  "consumer_id", consumer_id,
  "consumer_username", consumer_username,
  "consumer_custom_id", consumer_custom_id,
  "created_at", created_at,
  "expires_at", expires_at)
if ttl > 0 then
  rcall("EXPIRE", record, ttl + 1)
  rcall("ZADD", expiring, expires_at, id)
end

rcall("HSET", index, id, cjson.encode({
  sha256 = sha,
  consumer_id = consumer_id,
  consumer_username = consumer_username,
  consumer_custom_id = consumer_custom_id,
  created_at = created_at,
  expires_at = expires_at,
}))

return { 1, expires_at }

-- redis-key-auth: revoke one API key and tell every gateway worker, atomically.
--
-- Deletes the key's record and its index entries, then PUBLISHes the key's SHA-256 on
-- the invalidation channel, in the same script: a key is never gone from Redis without
-- the message that evicts it from the worker caches. Also drops up to 100 index entries
-- of keys that expired by ARGV[4].
--
-- The caller names the record: revoking by key, from the key's SHA-256; revoking by id,
-- from the sha256 in the id's index entry (read first). ARGV[2] then guards against the
-- index having changed in between.
--
-- KEYS[1]  record   krs:redis-key-auth:v1:{k}:key:<sha256 hex>   hash
-- KEYS[2]  index    krs:redis-key-auth:v1:{k}:ids                 hash  id -> JSON summary
-- KEYS[3]  expiring krs:redis-key-auth:v1:{k}:expiring            zset  id -> expires_at
--
-- ARGV[1]  sha256   hex SHA-256 of the key (the same as in KEYS[1]); the message published
-- ARGV[2]  id       the id the caller expects the record to have; "" = any (revoke by key)
-- ARGV[3]  channel  the invalidation channel, krs:redis-key-auth:v1:invalidations
-- ARGV[4]  now      unix seconds, the caller's clock (what counts as expired)
--
-- Reply: { 1, id }  revoked; the invalidation was published (PUBLISH's receiver count
--                   is not reported: zero receivers is normal when no gateway runs)
--        { 0, "" }  no such key (unknown, expired or already revoked); a stale index
--                   entry for ARGV[2] pointing at this hash is dropped
--
-- Clock: only ARGV[4], the caller's.
local rcall = redis.call

local record = KEYS[1]
local index = KEYS[2]
local expiring = KEYS[3]

local sha = ARGV[1]
local wanted_id = ARGV[2]
local channel = ARGV[3]
local now = tonumber(ARGV[4])

local PURGE_BATCH = 100

local function purge()
  local expired = rcall("ZRANGEBYSCORE", expiring, "-inf", now, "LIMIT", 0, PURGE_BATCH)
  if #expired > 0 then
    rcall("HDEL", index, unpack(expired))
    rcall("ZREM", expiring, unpack(expired))
  end
end

local record_id = rcall("HGET", record, "id")
if record_id and (wanted_id == "" or wanted_id == record_id) then
  rcall("DEL", record)
  rcall("HDEL", index, record_id)
  rcall("ZREM", expiring, record_id)
  rcall("PUBLISH", channel, sha)
  purge()
  return { 1, record_id }
end

if wanted_id ~= "" and not record_id then
  local entry = rcall("HGET", index, wanted_id)
  if entry then
    local ok, summary = pcall(cjson.decode, entry)
    if ok and type(summary) == "table" and summary.sha256 == sha then
      rcall("HDEL", index, wanted_id)
      rcall("ZREM", expiring, wanted_id)
    end
  end
end
purge()
return { 0, "" }

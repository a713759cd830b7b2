-- redis-jwt: change the credentials and tell every gateway worker, atomically.
--
-- All credentials live in one hash, one field each: `key:<key>` for a credential matched
-- against the token's key claim, `kid:<kid>` for a key imported from a JWKS (matched
-- against the token's `kid` header). Every change PUBLISHes "c" on the invalidation
-- channel in the same script, so a credential never changes in Redis without the message
-- that drops it from the worker caches.
--
-- KEYS[1]  credentials  krs:redis-jwt:v1:{c}:credentials   hash  field -> JSON record
--
-- ARGV[1]  op       "put"     add ARGV[4] as field ARGV[3] unless it exists
--                   "delete"  remove field ARGV[3], or the record whose id is ARGV[3]
--                   "jwks"    replace every `kid:` field whose record has `jwks` = ARGV[3]
--                             by the fields/records in ARGV[4..] (pairs), in one step
-- ARGV[2]  channel  krs:redis-jwt:v1:invalidations
-- ARGV[3]  field, id or JWKS set name
-- ARGV[4…] put: the JSON record; jwks: field, record, field, record, …
--
-- Reply: put     { 1 } stored, { 0 } the field exists already
--        delete  { 1, field } removed, { 0, "" } no such credential
--        jwks    { 1, removed, added }; { 0, field } when a kid is held by another set
--                or by no set (nothing changed)
--
-- Clock: none.
local rcall = redis.call

local credentials = KEYS[1]
local op = ARGV[1]
local channel = ARGV[2]
local target = ARGV[3]

if op == "put" then
  if rcall("HSETNX", credentials, target, ARGV[4]) == 0 then
    return { 0 }
  end
  rcall("PUBLISH", channel, "c")
  return { 1 }
end

if op == "delete" then
  if rcall("HDEL", credentials, target) == 1 then
    rcall("PUBLISH", channel, "c")
    return { 1, target }
  end
  local flat = rcall("HGETALL", credentials)
  for i = 1, #flat, 2 do
    local ok, record = pcall(cjson.decode, flat[i + 1])
    if ok and type(record) == "table" and record.id == target then
      rcall("HDEL", credentials, flat[i])
      rcall("PUBLISH", channel, "c")
      return { 1, flat[i] }
    end
  end
  return { 0, "" }
end

if op == "jwks" then
  local flat = rcall("HGETALL", credentials)
  local owned = {}
  local holder = {}
  for i = 1, #flat, 2 do
    local ok, record = pcall(cjson.decode, flat[i + 1])
    local set = ok and type(record) == "table" and record.jwks or nil
    holder[flat[i]] = set or false
    if set == target then
      owned[#owned + 1] = flat[i]
    end
  end
  for i = 4, #ARGV, 2 do
    local current = holder[ARGV[i]]
    if current ~= nil and current ~= target then
      return { 0, ARGV[i] }
    end
  end
  for _, field in ipairs(owned) do
    rcall("HDEL", credentials, field)
  end
  local added = 0
  for i = 4, #ARGV, 2 do
    rcall("HSET", credentials, ARGV[i], ARGV[i + 1])
    added = added + 1
  end
  rcall("PUBLISH", channel, "c")
  return { 1, #owned, added }
end

return redis.error_reply("unknown op " .. tostring(op))

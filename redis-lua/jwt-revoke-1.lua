-- redis-jwt: record one revocation and tell every gateway worker, atomically.
--
-- One key per revocation, each with its own expiry (never one set whose EXPIREAT would
-- re-time every entry):
--   token    krs:redis-jwt:v1:{r}:jti:<part(jti or SHA-256 hex of the token)>  "1"
--            kept until the token's own exp (+ clock_skew), then useless: Redis drops it.
--   subject  krs:redis-jwt:v1:{r}:sub:<part(sub)> or :consumer:<part(consumer)>  "<T>"
--            tokens of that subject issued before T (unix seconds) are refused; a later
--            marker never moves T back, and the expiry only ever grows.
-- Then PUBLISHes "r" on the invalidation channel: every worker stops trusting its
-- "not revoked" answers and asks Redis again.
--
-- KEYS[1]  the revocation key (above)
--
-- ARGV[1]  kind      "token" or "before"
-- ARGV[2]  before    kind "before": T, unix seconds; kind "token": ignored
-- ARGV[3]  until     unix seconds when the entry stops mattering (EXPIREAT)
-- ARGV[4]  now       unix seconds, the caller's clock
-- ARGV[5]  channel   krs:redis-jwt:v1:invalidations
--
-- Reply: { 1, until, before }  stored (until: the key's expiry after this call)
--        { 0, 0, 0 }           nothing to store: ARGV[3] is not after ARGV[4] (the token
--                              has expired already); nothing published
--
-- Clock: only ARGV[4], the caller's (Redis's own clock drops the key at ARGV[3]).
local rcall = redis.call

local key = KEYS[1]
local kind = ARGV[1]
local before = tonumber(ARGV[2]) or 0
local expire_at = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local channel = ARGV[5]

if not expire_at or not now or expire_at <= now then
  return { 0, 0, 0 }
end

if kind == "before" then
  local current = tonumber(rcall("GET", key))
  if current and current > before then
    before = current
  end
  local ttl = rcall("TTL", key)
  if ttl > 0 and now + ttl > expire_at then
    expire_at = now + ttl
  end
  rcall("SET", key, string.format("%d", before))
else
  local ttl = rcall("TTL", key)
  if ttl > 0 and now + ttl > expire_at then
    expire_at = now + ttl
  end
  rcall("SET", key, "1")
end
rcall("EXPIREAT", key, expire_at)
rcall("PUBLISH", channel, "r")
return { 1, expire_at, before }

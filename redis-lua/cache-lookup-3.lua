--[[
cache-lookup: one cache read for redis-cache, with the stampede lock and the
refresh-ahead lock taken in the same atomic step.

- Entry present: returns it. With sliding TTL its expiry restarts at its own TTL. When it
  is inside the last `refresh fraction` of its TTL, the refresh lock is tried (SET NX);
  the caller that gets it refreshes from the upstream while everyone else is served the
  entry.
- Entry absent: the fill lock is tried (SET NX). The caller that gets it fetches and
  stores the response; the others wait for the entry (polling this script), or go
  upstream at once when the lock holds the "uncacheable" marker "!".

Entry values begin with "1|<ttl ms>|<stored at, epoch ms>|<kind>|" (kind: E plain
entry, C encrypted entry, V vary marker); the rest is opaque here. Vary markers are
never refreshed.

Clock: the gateway's (ARGV[3]); this script never reads a clock.

KEYS[1]  the entry (string)
KEYS[2]  the fill lock (string: the holder's token, or "!")
KEYS[3]  the refresh lock (string: the holder's token)

ARGV[1]  the caller's lock token (unique per request)
ARGV[2]  lock lifetime, milliseconds (lock_timeout)
ARGV[3]  now, epoch milliseconds
ARGV[4]  refresh-ahead fraction of the TTL, as a string ("0" = off)
ARGV[5]  "1" = sliding TTL (a hit extends the entry), "0" = fixed

Reply, by its first element:
  {1, value, refresh}  hit; refresh = 1 when the caller now holds the refresh lock
  {2}                  miss; the caller now holds the fill lock
  {3, holder}          miss; another request holds the fill lock (holder is its token,
                       or "!" when that request's response was not cacheable)
]]
local rcall = redis.call

local entryKey = KEYS[1]
local fillKey = KEYS[2]
local refreshKey = KEYS[3]
local token = ARGV[1]
local lockMs = tonumber(ARGV[2])
local nowMs = tonumber(ARGV[3])
local refreshFraction = tonumber(ARGV[4])
local sliding = ARGV[5] == "1"

local value = rcall("GET", entryKey)
if value then
  local ttl, storedAt, kind = string.match(value, "^1|(%d+)|(%d+)|(%a)|")
  ttl = tonumber(ttl)
  storedAt = tonumber(storedAt)
  local refresh = 0
  if ttl and ttl > 0 then
    if sliding then
      rcall("PEXPIRE", entryKey, ttl)
    end
    if refreshFraction > 0 and kind ~= "V" and nowMs - storedAt >= ttl * (1 - refreshFraction) then
      if rcall("SET", refreshKey, token, "NX", "PX", lockMs) then
        refresh = 1
      end
    end
  end
  return { 1, value, refresh }
end

if rcall("SET", fillKey, token, "NX", "PX", lockMs) then
  return { 2 }
end
return { 3, rcall("GET", fillKey) or "" }

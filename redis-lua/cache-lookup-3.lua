--[[
cache-lookup: one cache read for redis-cache, with the stampede lock and the
refresh-ahead lock taken in the same atomic step.

- Entry present and readable by the caller (ARGV[6]): returns it. With sliding TTL its
  expiry restarts at its own TTL. When it is inside the last `refresh fraction` of its
  TTL, the refresh lock is tried (SET NX); the caller that gets it refreshes from the
  upstream while everyone else is served the entry.
- Entry present but not readable by the caller (written by a node with other keys, or
  plain where the caller encrypts): its TTL is never extended and no refresh lock is
  taken. Once its own TTL (stored at + ttl, which sliding TTL never changes) has passed
  it is deleted and the key is treated as absent, so a stale foreign entry cannot keep a
  key uncached. Until then the fill lock is tried: {4} to the caller that gets it (it
  fetches but must not overwrite the entry), {3, holder} to the others.
- Entry absent: the fill lock is tried (SET NX). The caller that gets it fetches and
  stores the response; the others wait for the entry (polling this script), or go
  upstream at once when the lock holds the "uncacheable" marker "!".
- Peek (ARGV[7] = "1", a request that may only be answered from the cache): no lock is
  ever taken; a miss is {3, holder or ""}.

Entry values begin with "1|<ttl ms>|<stored at, epoch ms>|<kind>|" (kind: E plain
entry, K encrypted entry followed by "<key id>|", C encrypted entry without key id, V
vary marker); the rest is opaque here. Vary markers are never refreshed and always
readable. A value without that prefix is returned as a hit, for the gateway to reject.

Clock: the gateway's (ARGV[3]); this script never reads a clock.

KEYS[1]  the entry (string)
KEYS[2]  the fill lock (string: the holder's token, or "!")
KEYS[3]  the refresh lock (string: the holder's token)

ARGV[1]  the caller's lock token (unique per request)
ARGV[2]  lock lifetime, milliseconds (lock_timeout)
ARGV[3]  now, epoch milliseconds
ARGV[4]  refresh-ahead fraction of the TTL, as a string ("0" = off)
ARGV[5]  "1" = sliding TTL (a hit extends the entry), "0" = fixed
ARGV[6]  the kinds the caller reads, space-separated: "E" (plain), "C" (encrypted
         without key id), "K<key id>" per key it holds; "" = every kind
ARGV[7]  "1" = peek: take no lock, "0" = normal

Reply, by its first element:
  {1, value, refresh}  hit; refresh = 1 when the caller now holds the refresh lock
  {2}                  miss; the caller now holds the fill lock
  {3, holder, foreign} miss; another request holds the fill lock (holder is its token,
                       or "!" when that request's response was not cacheable; "" on a
                       peek when nobody does); foreign = 1 when an unexpired entry the
                       caller cannot read is present (absent otherwise)
  {4, value}           an unexpired entry the caller cannot read; the caller now holds
                       the fill lock
]]
local rcall = redis.call
local find = string.find
local match = string.match

local entryKey = KEYS[1]
local fillKey = KEYS[2]
local refreshKey = KEYS[3]
local token = ARGV[1]
local lockMs = tonumber(ARGV[2])
local nowMs = tonumber(ARGV[3])
local refreshFraction = tonumber(ARGV[4])
local sliding = ARGV[5] == "1"
local readable = " " .. (ARGV[6] or "") .. " "
local peek = ARGV[7] == "1"

local function canRead(value, kind)
  if readable == "  " or kind == "V" then
    return true
  end
  if kind == "K" then
    local id = match(value, "^1|%d+|%d+|K|(%x+)|")
    return id ~= nil and find(readable, " K" .. id .. " ", 1, true) ~= nil
  end
  return find(readable, " " .. kind .. " ", 1, true) ~= nil
end

local value = rcall("GET", entryKey)
if value then
  local ttl, storedAt, kind = match(value, "^1|(%d+)|(%d+)|(%a)|")
  ttl = tonumber(ttl)
  storedAt = tonumber(storedAt)
  if not ttl then
    return { 1, value, 0 }
  end
  if canRead(value, kind) then
    local refresh = 0
    if ttl > 0 then
      if sliding then
        rcall("PEXPIRE", entryKey, ttl)
      end
      if not peek and refreshFraction > 0 and kind ~= "V" and nowMs - storedAt >= ttl * (1 - refreshFraction) then
        if rcall("SET", refreshKey, token, "NX", "PX", lockMs) then
          refresh = 1
        end
      end
    end
    return { 1, value, refresh }
  end
  if nowMs < storedAt + ttl then
    if peek then
      return { 1, value, 0 }
    end
    if rcall("SET", fillKey, token, "NX", "PX", lockMs) then
      return { 4, value }
    end
    return { 3, rcall("GET", fillKey) or "", 1 }
  end
  rcall("DEL", entryKey)
end

if peek then
  return { 3, rcall("GET", fillKey) or "" }
end
if rcall("SET", fillKey, token, "NX", "PX", lockMs) then
  return { 2 }
end
return { 3, rcall("GET", fillKey) or "" }

--[[
rate-limit-lease: reserves a lease of up to `want` admissions of one counter set (one
plugin instance, one identifier) for one gateway worker, in every configured window at
once, and counts the whole lease in all of them. The worker then admits that many
requests without calling Redis; what it does not use it gives back with
rate-limit-return-1.lua. So the counts here always include every admission leased out:
counts + outstanding leases never exceed a limit, whatever the number of workers.

The arithmetic is rate-limit-1.lua's (same clock rules, same sliding weight, same
Retry-After search), with `want` in place of 1:
  room   = the requests every window would admit now (min over the windows)
  grant  = min(want, max(1, floor(room / SHARE)))  when room >= 1, else 0 (rejected)
A lease never takes more than 1/SHARE of what is left, so the leases shrink as the room
shrinks and the last SHARE admissions of a window are leased one at a time (exact).

KEYS[1]  the counter hash (rate-limit-1.lua's fields, plus `lease:until`: the latest
         moment, epoch ms, until which a lease of more than one admission may be out)

ARGV[1]  now, epoch milliseconds (integer)
ARGV[2]  "sliding" or "fixed"
ARGV[3]  TTL in milliseconds set on the hash when a lease is granted
ARGV[4]  n, the number of windows (1..6)
ARGV[5]  want, the admissions asked for (>= 1)
ARGV[6]  the moment (epoch ms) the worker gives back what it has not used of this lease
then six values per window as rate-limit-1.lua (from ARGV[7]): name, limit, start,
length, previous start, next length

Reply: a flat array of 2 + 4n integers, rate-limit-1.lua's with [1] the grant:
  [1]      admissions granted and counted (0: rejected, nothing written)
  [2]      milliseconds until the next request can be admitted if nothing else is: >= 1
           when rejected or when this grant left a window with no room; 0 otherwise.
           While leases of others may be out (`lease:until` after now), it is at most the
           time until they are given back, so a worker's memory of a rejection does not
           outlive admissions that come back.
  [2 + i]  remaining in window i after the grant (as it stands when rejected)
  [2 + n + 3i - 2 .. 2 + n + 3i]  window i's counters as decided (after the grant)
]]

local rcall = redis.call
local floor = math.floor
local ceil = math.ceil
local tonumber = tonumber

local STEPS = 262144 -- 2^18, as rate-limit-1.lua
local SHARE = 8      -- a lease takes at most 1/SHARE of the room left

local key = KEYS[1]
local now = tonumber(ARGV[1])
local sliding = ARGV[2] == "sliding"
local ttl = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local want = tonumber(ARGV[5])
local lease_until = tonumber(ARGV[6])
local FIRST = 7

local function room_in(limit, length, elapsed, curr, prev)
  if not sliding then return limit - curr end
  local weight = ceil((length - elapsed) * STEPS / length)
  return floor((limit * STEPS - prev * weight) / STEPS) - curr
end

local function wait_in(limit, bucket, length, next_length, curr, prev)
  if not sliding then return bucket + length - now end
  local scaled_limit = limit * STEPS
  if (curr + 1) * STEPS <= scaled_limit then
    local max_weight = floor((scaled_limit - (curr + 1) * STEPS) / prev)
    return bucket + ceil(length - max_weight * length / STEPS) - now
  end
  local max_weight = floor((scaled_limit - STEPS) / curr)
  return bucket + length + ceil(next_length - max_weight * next_length / STEPS) - now
end

local fields = {}
for i = 1, n do
  local name = ARGV[FIRST + 6 * (i - 1)]
  fields[3 * i - 2] = name .. ":start"
  fields[3 * i - 1] = name .. ":count"
  fields[3 * i] = name .. ":prev"
end
fields[3 * n + 1] = "lease:until"
local stored = rcall("HMGET", key, unpack(fields))
local out_until = tonumber(stored[3 * n + 1]) or 0

local windows = {}
local room = nil
for i = 1, n do
  local base = FIRST + 6 * (i - 1)
  local w = {
    limit = tonumber(ARGV[base + 1]),
    length = tonumber(ARGV[base + 3]),
    next_length = tonumber(ARGV[base + 5]),
  }
  local start = tonumber(ARGV[base + 2])
  local s = tonumber(stored[3 * i - 2])
  w.bucket, w.curr, w.prev = start, 0, 0
  if s == start or (s ~= nil and s > start) then
    w.bucket = s
    w.curr = tonumber(stored[3 * i - 1]) or 0
    w.prev = tonumber(stored[3 * i]) or 0
  elseif s == tonumber(ARGV[base + 4]) then
    w.prev = tonumber(stored[3 * i - 1]) or 0
  end
  local elapsed = now - w.bucket
  if elapsed < 0 then elapsed = 0 end
  w.room = room_in(w.limit, w.length, elapsed, w.curr, w.prev)
  if room == nil or w.room < room then room = w.room end
  windows[i] = w
end

local grant = 0
if room >= 1 then
  grant = floor(room / SHARE)
  if grant < 1 then grant = 1 end
  if grant > want then grant = want end
end

local reply = { grant, 0 }
local retry = 0
local writes = {}
for i = 1, n do
  local w = windows[i]
  local curr, left = w.curr + grant, w.room - grant
  if grant > 0 then
    writes[6 * i - 5] = fields[3 * i - 2]
    writes[6 * i - 4] = w.bucket
    writes[6 * i - 3] = fields[3 * i - 1]
    writes[6 * i - 2] = curr
    writes[6 * i - 1] = fields[3 * i]
    writes[6 * i] = w.prev
  end
  if left < 1 then
    left = 0
    local wait = wait_in(w.limit, w.bucket, w.length, w.next_length, curr, w.prev)
    if wait < 1 then wait = 1 end
    if wait > retry then retry = wait end
  end
  reply[2 + i] = left
  reply[2 + n + 3 * i - 2] = w.bucket
  reply[2 + n + 3 * i - 1] = curr
  reply[2 + n + 3 * i] = w.prev
end
if grant > 1 and lease_until > out_until then
  out_until = lease_until
  writes[#writes + 1] = "lease:until"
  writes[#writes + 1] = out_until
end
-- admissions leased out may come back before the windows would free any
if retry > 0 and out_until > now and out_until - now < retry then retry = out_until - now end
reply[2] = retry

if grant > 0 then
  rcall("HSET", key, unpack(writes))
  rcall("PEXPIRE", key, ttl)
end
return reply

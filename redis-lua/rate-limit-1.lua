--[[
rate-limit: decides one request against every configured window of one counter set
(one plugin instance, one identifier) and counts it in all of them when, and only
when, every window admits it. Rejected requests change nothing.

Clock: the gateway's. ARGV carries `now` and each window's bounds, computed by the
gateway (calendar months and years in UTC included); this script never reads a clock. When the
hash already holds a window newer than the caller's (a node whose clock is behind),
the newer window is used, so nodes with skewed clocks cannot reset each other's counts.

Algorithms, per window of length W, `prev` counted in the window before and `curr` in
this one, `e` milliseconds into this one:
  fixed    count = curr
  sliding  count = prev * (1 - e/W) + curr, with (1 - e/W) rounded up to a multiple of
           1/STEPS, so the whole comparison is done on integers below 2^53 (exact for
           limits up to 10^10 and windows up to a leap year, 31622400000 ms < 2^35)
A request is admitted iff count + 1 <= limit in every window. The remaining count
reported is the number of further requests the same formula would admit now.

KEYS[1]  the counter hash; fields per window: <name>:start (window start, epoch ms),
         <name>:count (admitted in that window), <name>:prev (admitted in the one before)

ARGV[1]  now, epoch milliseconds (integer)
ARGV[2]  "sliding" or "fixed"
ARGV[3]  TTL in milliseconds set on the hash when the request is admitted
ARGV[4]  n, the number of windows (1..6)
then six values per window i = 1..n, starting at ARGV[5 + 6 * (i - 1)]:
  +0 name (field prefix: "second", "minute", "hour", "day", "month", "year")
  +1 limit (integer >= 1)
  +2 start of the window containing now (epoch ms)
  +3 its length (ms)
  +4 start of the window before it (epoch ms)
  +5 length of the window after it (ms)

Reply: a flat array of 2 + 4n integers
  [1]      1 when admitted (and counted), 0 when rejected
  [2]      milliseconds until the next request can be admitted, if nothing else is
           admitted meanwhile: >= 1 when rejected, and when this admitted request left a
           window with no room; 0 when the next request would be admitted now
  [2 + i]  remaining in window i: after this request when admitted; as it stands when
           rejected (0 for a window that rejects)
  [2 + n + 3i - 2 .. 2 + n + 3i]  window i as this script decided it (after this request
           when admitted): the start it counted in, its count and the previous window's.
           While no request is admitted (until [2] has passed), these are the counters
           every later call would read, so the gateway can answer as this script would.
]]

local rcall = redis.call
local floor = math.floor
local ceil = math.ceil
local tonumber = tonumber

local STEPS = 262144 -- 2^18: the resolution of the sliding weight; a power of two, so /STEPS is exact

local key = KEYS[1]
local now = tonumber(ARGV[1])
local sliding = ARGV[2] == "sliding"
local ttl = tonumber(ARGV[3])
local n = tonumber(ARGV[4])

-- Requests one window admits now, given `curr` and `prev` counts, `elapsed` ms into it.
local function room_in(limit, length, elapsed, curr, prev)
  if not sliding then return limit - curr end
  local weight = ceil((length - elapsed) * STEPS / length)
  return floor((limit * STEPS - prev * weight) / STEPS) - curr
end

-- Milliseconds from now until a window with no room admits again, if nothing else is
-- admitted meanwhile (counts only decay, so the first such moment is exact).
local function wait_in(limit, bucket, length, next_length, curr, prev)
  if not sliding then return bucket + length - now end
  local scaled_limit = limit * STEPS
  if (curr + 1) * STEPS <= scaled_limit then
    -- the previous window's share blocks; it decays enough before this window ends
    local max_weight = floor((scaled_limit - (curr + 1) * STEPS) / prev)
    return bucket + ceil(length - max_weight * length / STEPS) - now
  end
  -- this window's own count blocks until it has become the previous one and decayed
  local max_weight = floor((scaled_limit - STEPS) / curr)
  return bucket + length + ceil(next_length - max_weight * next_length / STEPS) - now
end

local fields = {}
for i = 1, n do
  local name = ARGV[5 + 6 * (i - 1)]
  fields[3 * i - 2] = name .. ":start"
  fields[3 * i - 1] = name .. ":count"
  fields[3 * i] = name .. ":prev"
end
local stored = rcall("HMGET", key, unpack(fields))

local windows = {}
local admitted = true
for i = 1, n do
  local base = 5 + 6 * (i - 1)
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
  if w.room < 1 then admitted = false end
  windows[i] = w
end

-- Rejected: nothing is written. Admitted: counted in every window, and the wait is
-- reported when this request used up a window (the next one would be rejected).
local reply = { admitted and 1 or 0, 0 }
local retry = 0
local writes = {}
for i = 1, n do
  local w = windows[i]
  local curr, room = w.curr, w.room
  if admitted then
    curr, room = curr + 1, room - 1
    writes[6 * i - 5] = fields[3 * i - 2]
    writes[6 * i - 4] = w.bucket
    writes[6 * i - 3] = fields[3 * i - 1]
    writes[6 * i - 2] = curr
    writes[6 * i - 1] = fields[3 * i]
    writes[6 * i] = w.prev
  end
  if room < 1 then
    room = 0
    local wait = wait_in(w.limit, w.bucket, w.length, w.next_length, curr, w.prev)
    if wait < 1 then wait = 1 end
    if wait > retry then retry = wait end
  end
  reply[2 + i] = room
  reply[2 + n + 3 * i - 2] = w.bucket
  reply[2 + n + 3 * i - 1] = curr
  reply[2 + n + 3 * i] = w.prev
end
reply[2] = retry

if admitted then
  rcall("HSET", key, unpack(writes))
  rcall("PEXPIRE", key, ttl)
end
return reply

--[[
rate-limit-return: gives back the admissions a worker leased (rate-limit-lease-1.lua) and
did not use, in every window they were counted in. A window that has moved on since
keeps them in its previous-window count, where the sliding algorithm still weighs them:
they come off there. A window older than that counts nothing any more: nothing to do.
Counts never go below zero. The hash keeps its TTL (HSET does not touch it); a hash that
expired meanwhile is not created again.

KEYS[1]  the counter hash
ARGV[1]  n, the number of windows (1..6)
ARGV[2]  unused, the admissions given back (>= 1)
then three values per window i = 1..n, from ARGV[3 + 3 * (i - 1)]:
  +0 name (field prefix)
  +1 the window start the lease was counted in (epoch ms, as rate-limit-lease replied)
  +2 the start of the window after that one (epoch ms)

Reply: the number of windows the admissions were taken off.
]]

local rcall = redis.call
local tonumber = tonumber

local key = KEYS[1]
local n = tonumber(ARGV[1])
local unused = tonumber(ARGV[2])

local fields = {}
for i = 1, n do
  local name = ARGV[3 + 3 * (i - 1)]
  fields[3 * i - 2] = name .. ":start"
  fields[3 * i - 1] = name .. ":count"
  fields[3 * i] = name .. ":prev"
end
local stored = rcall("HMGET", key, unpack(fields))

local writes = {}
local changed = 0
for i = 1, n do
  local base = 3 + 3 * (i - 1)
  local bucket = tonumber(ARGV[base + 1])
  local after = tonumber(ARGV[base + 2])
  local s = tonumber(stored[3 * i - 2])
  local field, count = nil, nil
  if s ~= nil and s == bucket then
    field, count = fields[3 * i - 1], tonumber(stored[3 * i - 1]) or 0
  elseif s ~= nil and s == after then
    field, count = fields[3 * i], tonumber(stored[3 * i]) or 0
  end
  if field ~= nil and count > 0 then
    count = count - unused
    if count < 0 then count = 0 end
    writes[#writes + 1] = field
    writes[#writes + 1] = count
    changed = changed + 1
  end
end
if changed > 0 then rcall("HSET", key, unpack(writes)) end
return changed

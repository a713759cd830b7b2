--[[
usage-quota: decides one request against a subject's day and month quotas and, when both
admit it, counts it against them, atomically (quota_mode exact: never over quota, however
many nodes). A rejected request changes nothing. Metering (requests, bytes, status) is
not done here: the worker's buffered flush (usage-flush-2.lua) does it for every request.

Clock: none. The gateway names the buckets (in KEYS) and when their hashes expire.

KEYS[1]  the subject's quota override hash (fields day, month; may not exist): read only
KEYS[2]  the subject's counter hash of the current UTC day
KEYS[3]  the subject's counter hash of the current UTC month

ARGV[1]  "requests" or "cost": the field the quotas count (quota_requests, quota_cost)
ARGV[2]  what this request needs left of the quota (1 for requests; its cost, at least 1)
ARGV[3]  cost counted now into quota_cost (the cost known before the response; the rest
         is added by the flush)
ARGV[4]  the configured day quota, -1 for none (an override wins)
ARGV[5]  the configured month quota, -1 for none (an override wins)
ARGV[6]  epoch ms at which the day hash expires
ARGV[7]  epoch ms at which the month hash expires

Reply: an array of 5 integers
  [1]  1 when admitted (and counted), 0 when rejected
  [2]  the day quota in force, -1 for none
  [3]  remaining of it (after this request when admitted), -1 for none
  [4]  the month quota in force, -1 for none
  [5]  remaining of it, -1 for none
]]

local rcall = redis.call
local tonumber = tonumber

local overrides = KEYS[1]
local day_key = KEYS[2]
local month_key = KEYS[3]
local field = ARGV[1] == "cost" and "quota_cost" or "quota_requests"
local need = tonumber(ARGV[2])
local cost_now = tonumber(ARGV[3])
local day_limit = tonumber(ARGV[4])
local month_limit = tonumber(ARGV[5])

local limits = rcall("HMGET", overrides, "day", "month")
day_limit = tonumber(limits[1]) or day_limit
month_limit = tonumber(limits[2]) or month_limit

local day_used = tonumber(rcall("HGET", day_key, field)) or 0
local month_used = tonumber(rcall("HGET", month_key, field)) or 0

local function left(limit, used)
  if limit < 0 then return -1 end
  local room = limit - used
  if room < 0 then return 0 end
  return room
end

local admitted = (day_limit < 0 or day_used + need <= day_limit) and (month_limit < 0 or month_used + need <= month_limit)
if not admitted then
  return { 0, day_limit, left(day_limit, day_used), month_limit, left(month_limit, month_used) }
end

local spent = field == "quota_cost" and cost_now or 1
for _, k in ipairs({ day_key, month_key }) do
  rcall("HINCRBY", k, "quota_requests", 1)
  if cost_now > 0 then rcall("HINCRBY", k, "quota_cost", cost_now) end
end
rcall("PEXPIREAT", day_key, tonumber(ARGV[6]))
rcall("PEXPIREAT", month_key, tonumber(ARGV[7]))
return { 1, day_limit, left(day_limit, day_used + spent), month_limit, left(month_limit, month_used + spent) }

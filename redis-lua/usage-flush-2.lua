--[[
usage-flush: adds one worker's pending increments to one counter set (one subject's one
UTC day or month bucket), once. A worker numbers its flushes; a flush it retries (its
reply was lost, Redis restarted mid-pipeline) carries the same number, and a number at or
below the last one this worker applied here changes nothing. So a retried flush is never
counted twice, and a worker's flushes of one counter set are applied in order.

Clock: none. The gateway names the bucket (in KEYS[1]) and when its hash expires.

KEYS[1]  the counter hash: requests, bytes_in, bytes_out, cost, 2xx, 3xx, 4xx, 5xx,
         quota_requests, quota_cost (admitted requests only), subject (its name as
         sent), and w:<writer> (the last flush number applied from that worker)
KEYS[2]  the subject's quota override hash (fields day, month; may not exist): read only

ARGV[1]  writer: node id, worker pid and start time (unique per worker lifetime)
ARGV[2]  the flush number (integer, increasing per writer)
ARGV[3]  epoch ms at which the counter hash expires (PEXPIREAT)
ARGV[4]  the subject's name ("" to leave it as is)
ARGV[5]  n, the number of increments
then n pairs from ARGV[6]: field, increment (integer)

Reply: an array of 5 integers
  [1]  1 when applied, 0 when this flush number was applied before (nothing changed)
  [2]  quota_requests after the flush
  [3]  quota_cost after the flush
  [4]  the override for a day, -1 when none
  [5]  the override for a month, -1 when none
]]

local rcall = redis.call
local tonumber = tonumber

local counters = KEYS[1]
local overrides = KEYS[2]
local writer_field = "w:" .. ARGV[1]
local seq = tonumber(ARGV[2])
local expire_at = tonumber(ARGV[3])
local subject = ARGV[4]
local n = tonumber(ARGV[5])

local applied = 0
local last = tonumber(rcall("HGET", counters, writer_field))
if last == nil or last < seq then
  for i = 0, n - 1 do
    rcall("HINCRBY", counters, ARGV[6 + 2 * i], ARGV[7 + 2 * i])
  end
  rcall("HSET", counters, writer_field, seq)
  if subject ~= "" then rcall("HSET", counters, "subject", subject) end
  rcall("PEXPIREAT", counters, expire_at)
  applied = 1
end

local used = rcall("HMGET", counters, "quota_requests", "quota_cost")
local limits = rcall("HMGET", overrides, "day", "month")
return {
  applied,
  tonumber(used[1]) or 0,
  tonumber(used[2]) or 0,
  tonumber(limits[1]) or -1,
  tonumber(limits[2]) or -1,
}

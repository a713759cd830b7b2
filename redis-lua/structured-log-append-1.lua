--[[
structured-log-append: one worker's batch of log lines into the request stream, then the
stream's lifetime renewed: a batch is one EVALSHA instead of one XADD per line.

Clock: none (entry ids are `*`, Redis time; the TTL is relative).

KEYS[1]  the stream (krs:structured-log:v1:{<stream_key>}:stream)

ARGV[1]  MAXLEN ~ bound (entries)
ARGV[2]  TTL, seconds, set after the batch
ARGV[3..n]  the lines, one entry each (field `log`)

Reply: { lines written, lines refused, the last refusal's message or "" }.
A refused XADD (e.g. the key holds another type) does not stop the others.
]]
local pcall_redis = redis.pcall

local streamKey = KEYS[1]
local maxLen = ARGV[1]
local ttl = ARGV[2]

local written, refused, reason = 0, 0, ""
for i = 3, #ARGV do
  local reply = pcall_redis("XADD", streamKey, "MAXLEN", "~", maxLen, "*", "log", ARGV[i])
  if type(reply) == "table" and reply.err then
    refused = refused + 1
    reason = reply.err
  else
    written = written + 1
  end
end
if written > 0 then redis.call("EXPIRE", streamKey, ttl) end
return { written, refused, reason }

-- redis-usage: its schema (through the local gateway's Kong validator), the UTC day and
-- month buckets at their boundaries (midnight, month ends, leap days, year ends) with
-- injected timestamps, their expiry times, the read API's bucket parser, and the cost
-- header parser on bad input.
local buckets = require("kong.plugins.redis-usage.buckets")
local cost = require("kong.plugins.redis-usage.cost")

local plugin_schema = require("plugin_schema")("redis-usage")
local ok, errors_of = plugin_schema.ok, plugin_schema.errors_of

local DAY = 86400000

-- epoch ms of a UTC date and time, computed independently of the module (os.time on UTC fields)
local function utc(y, m, d, hh, mm, ss, ms)
  local t = os.time({ year = y, month = m, day = d, hour = hh or 0, min = mm or 0, sec = ss or 0, isdst = false })
  local offset = os.time(os.date("*t", 0)) - os.time(os.date("!*t", 0))
  return (t + offset) * 1000 + (ms or 0)
end

describe("redis-usage schema", function()
  it("fills the defaults", function()
    local c = ok({})
    assert.equal("ip", c.fallback)
    assert.equal(1, c.cost)
    assert.equal(true, c.hide_cost_header)
    assert.equal(35, c.daily_retention_days)
    assert.equal(13, c.monthly_retention_months)
    assert.equal(1000, c.flush_interval)
    assert.equal("batched", c.quota_mode)
    assert.equal("requests", c.quota_unit)
    assert.equal(429, c.quota_status)
  end)

  it("refuses an unknown fallback, quota mode and a negative quota", function()
    assert.is_table(errors_of({ fallback = "header" }))
    assert.is_table(errors_of({ quota_mode = "eventual" }))
    assert.is_table(errors_of({ quota_day = -1 }))
    assert.is_table(errors_of({ quota_status = 200 }))
  end)
end)

describe("redis-usage buckets", function()
  it("a day runs from 00:00:00.000 to 23:59:59.999 UTC", function()
    local b = buckets.dayOf(utc(2026, 11, 30, 12))
    assert.same({ id = "20261130", start = utc(2026, 11, 30), finish = utc(2026, 12, 1) }, b)
    assert.equal("20261130", buckets.dayOf(utc(2026, 11, 30, 23, 59, 59, 999)).id)
    assert.equal("20261201", buckets.dayOf(utc(2026, 12, 1)).id)
    assert.equal("20261130", buckets.dayOf(utc(2026, 11, 30)).id)
  end)

  it("month ends: the last millisecond of a month is in it, the next one is not", function()
    for _, case in ipairs({ { 2026, 1, 31 }, { 2026, 4, 30 }, { 2026, 2, 28 }, { 2024, 2, 29 }, { 2026, 12, 31 } }) do
      local y, m, last = case[1], case[2], case[3]
      local lastMs = utc(y, m, last, 23, 59, 59, 999)
      local month = buckets.monthOf(lastMs)
      assert.equal(string.format("%04d%02d", y, m), month.id)
      assert.equal(utc(y, m, 1), month.start)
      assert.equal(lastMs + 1, month.finish)
      local next = buckets.monthOf(lastMs + 1)
      assert.equal(m == 12 and string.format("%04d01", y + 1) or string.format("%04d%02d", y, m + 1), next.id)
    end
  end)

  it("leap days: 2024-02-29 and 2000-02-29 exist, 2100 and 2026 have none", function()
    assert.equal("20240229", buckets.dayOf(utc(2024, 2, 29, 6)).id)
    assert.equal("20000229", buckets.dayOf(utc(2000, 2, 29)).id)
    assert.equal("21000301", buckets.dayOf(utc(2100, 2, 28) + DAY).id)
    assert.equal("20260301", buckets.dayOf(utc(2026, 2, 28) + DAY).id)
    assert.equal(29 * DAY, buckets.monthOf(utc(2024, 2, 10)).finish - buckets.monthOf(utc(2024, 2, 10)).start)
  end)

  it("every day of 1999..2101 matches os.date's UTC calendar", function()
    local ms = utc(1999, 1, 1, 13)
    for _ = 1, 103 * 366 do
      local expected = os.date("!%Y%m%d", math.floor(ms / 1000))
      assert.equal(expected, buckets.dayOf(ms).id)
      assert.equal(string.sub(expected, 1, 6), buckets.monthOf(ms).id)
      ms = ms + DAY
    end
  end)

  it("expiry: whole days after the day, calendar months after the month", function()
    local day = buckets.dayOf(utc(2026, 11, 30, 10))
    -- the day ends 2026-12-01 00:00; 35 days later
    assert.equal(utc(2027, 1, 5), buckets.dayExpiry(day, 35))
    local month = buckets.monthOf(utc(2026, 11, 15))
    assert.equal(utc(2027, 12, 1), buckets.monthExpiry(month, 12 + 0))
    assert.equal(utc(2028, 1, 1), buckets.monthExpiry(month, 13))
    assert.equal(utc(2027, 3, 1), buckets.monthExpiry(buckets.monthOf(utc(2027, 1, 31)), 1))
  end)

  it("parses the read API's dates, and refuses what is not a date", function()
    assert.equal("20261130", buckets.parseBucket("day", "2026-11-30").id)
    assert.equal("20240229", buckets.parseBucket("day", "20240229").id)
    assert.equal("202611", buckets.parseBucket("month", "2026-11").id)
    for _, bad in ipairs({ "2026-02-30", "2026-13-01", "2026-00-10", "2025-02-29", "yesterday", "2026-11-30T00", "", "2026-1-1" }) do
      assert.is_nil(buckets.parseBucket("day", bad), bad)
    end
    for _, bad in ipairs({ "2026-13", "2026-00", "2026-11-30", "26-11" }) do
      assert.is_nil(buckets.parseBucket("month", bad), bad)
    end
    assert.equal("20261201", buckets.nextBucket("day", buckets.parseBucket("day", "2026-11-30")).id)
    assert.equal("202701", buckets.nextBucket("month", buckets.parseBucket("month", "2026-12")).id)
  end)
end)

describe("redis-usage cost header", function()
  it("takes whole numbers from 0 to 10^9", function()
    assert.equal(0, cost.parseCost("0"))
    assert.equal(42, cost.parseCost(" 42 "))
    assert.equal(1000000000, cost.parseCost("1000000000"))
  end)

  it("refuses NaN, negatives, fractions, hex, exponents, huge and empty values", function()
    for _, bad in ipairs({ "NaN", "nan", "-1", "1.5", "0x10", "1e3", "1000000001", "99999999999999999999", "", "inf", "12abc" }) do
      assert.is_nil(cost.parseCost(bad), bad)
    end
    assert.is_nil(cost.parseCost(nil))
    assert.is_nil(cost.parseCost({ "1", "2" }))
  end)

  it("per KiB: every started KiB of body counts", function()
    assert.equal(0, cost.costPerKb(3, 0))
    assert.equal(3, cost.costPerKb(3, 1))
    assert.equal(3, cost.costPerKb(3, 1024))
    assert.equal(6, cost.costPerKb(3, 1025))
  end)
end)

describe("redis-usage worker buffer", function()
  -- The buffer alone (meter.lua), on stand-ins for the Redis client, the log and the timers:
  -- a burst of new counter sets past flush_batch starts one zero-delay flush, not one each.
  local STUBBED = { "krs.redis.client", "krs.redis.fault", "kong.plugins.redis-usage.quota", "kong.plugins.redis-usage.meter" }
  local saved, saved_ngx, saved_kong
  local meter, timers, calls, logs
  local conf = { redis = {}, flush_batch = 10, max_pending = 100000, flush_interval = 1000 }

  before_each(function()
    saved = {}
    for _, name in ipairs(STUBBED) do saved[name] = package.loaded[name] end
    saved_ngx, saved_kong = rawget(_G, "ngx"), rawget(_G, "kong")
    timers, calls, logs = {}, {}, {}
    package.loaded["krs.redis.client"] = {
      poolName = function() return "pool" end,
      pipeline = function(_, batch)
        local replies = {}
        for i, call in ipairs(batch) do
          calls[#calls + 1] = call
          replies[i] = { 1, 0, 0, -1, -1 }
        end
        return replies
      end,
    }
    package.loaded["krs.redis.fault"] = { logThrottled = function(_, message) logs[#logs + 1] = message end }
    package.loaded["kong.plugins.redis-usage.quota"] = { acknowledge = function() end }
    package.loaded["kong.plugins.redis-usage.meter"] = nil
    _G.kong = { node = { get_id = function() return "node-1" end } }
    _G.ngx = setmetatable({
      timer = {
        at = function(delay, fn) timers[#timers + 1] = { delay = delay, fn = fn } return true end,
        every = function() return true end,
      },
      now = function() return 1000 end,
      update_time = function() end,
      worker = { pid = function() return 42 end, exiting = function() return false end },
      sleep = function() end,
    }, { __index = saved_ngx })
    meter = require("kong.plugins.redis-usage.meter")
  end)

  after_each(function()
    for _, name in ipairs(STUBBED) do package.loaded[name] = saved[name] end
    _G.ngx, _G.kong = saved_ngx, saved_kong
  end)

  -- n new subjects, each one request: two new counter sets each (its day and month)
  local function burst(state, from, n)
    for i = from, from + n - 1 do
      local tag = "ip:10.0.0." .. i
      local subject = { tag = tag, label = "", quotaKey = "q", dayKey = "krs:redis-usage:1:{" .. tag .. "}:d:20261202", monthKey = "krs:redis-usage:1:{" .. tag .. "}:m:202612" }
      local t = meter.tally(state, conf, subject, meter.NOBODY, meter.NOBODY, "20261202", "202612", 1, 2)
      t.requests = t.requests + 1
    end
  end

  it("a burst of new counter sets schedules at most one zero-delay flush per worker", function()
    local state = meter.stateFor(conf)
    burst(state, 1, conf.flush_batch / 2 - 1)
    assert.equal(0, #timers)
    assert.is_false(meter.flushPending())
    burst(state, conf.flush_batch / 2, 500)
    assert.equal(1, #timers)
    assert.equal(0, timers[1].delay)
    assert.is_true(meter.flushPending())
    -- the one flush takes every counter set of the burst
    table.remove(timers).fn(false)
    assert.is_false(meter.flushPending())
    assert.equal(2 * (conf.flush_batch / 2 - 1 + 500), #calls)
    assert.same({}, logs)
    -- once it has run, the next full batch schedules the next one
    burst(state, 1000, conf.flush_batch / 2)
    assert.equal(1, #timers)
    assert.is_true(meter.flushPending())
  end)

  it("a timer that could not be created is tried again by the next counter set", function()
    local state = meter.stateFor(conf)
    local refused = true
    ngx.timer.at = function(delay, fn)
      if refused then return nil, "too many pending timers" end
      timers[#timers + 1] = { delay = delay, fn = fn }
      return true
    end
    burst(state, 1, conf.flush_batch / 2)
    assert.equal(0, #timers)
    assert.is_false(meter.flushPending())
    refused = false
    burst(state, 100, 3)
    assert.equal(1, #timers)
    assert.is_true(meter.flushPending())
  end)

  local function target(tag, day, month)
    return { tag = tag, label = "", quotaKey = "q:" .. tag, dayKey = tag .. ":d:" .. day, monthKey = tag .. ":m:" .. month }
  end

  -- one request's counts into its tally, as the log phase adds them
  local function request(t, status, quota_requests)
    t.requests = t.requests + 1
    t.bytes_in = t.bytes_in + 10
    t.bytes_out = t.bytes_out + 100
    t.cost = t.cost + 2
    t[status] = t[status] + 1
    t.quota_requests = t.quota_requests + quota_requests
  end

  -- what the flush sent, per counter set key: its fields (and expiry)
  local function sent()
    local by_key = {}
    for _, call in ipairs(calls) do
      local fields = { expire_at = call.args[3] }
      for i = 6, #call.args, 2 do fields[call.args[i]] = call.args[i + 1] end
      assert.is_nil(by_key[call.keys[1]], "one call per counter set")
      by_key[call.keys[1]] = fields
    end
    return by_key
  end

  it("tallies: each request counts in its subject's, route's and service's day and month; tallies sharing a counter set are summed", function()
    local c = { redis = {}, flush_batch = 1, max_pending = 100000, flush_interval = 1000 }
    local state = meter.stateFor(c)
    local a, b = target("consumer:a", "20261202", "202612"), target("consumer:b", "20261202", "202612")
    local route, service = target("route:r", "20261202", "202612"), target("service:s", "20261202", "202612")
    for _ = 1, 3 do request(meter.tally(state, c, a, route, service, "20261202", "202612", 11, 22), "2xx", 1) end
    request(meter.tally(state, c, b, route, service, "20261202", "202612", 11, 22), "5xx", 1)
    request(meter.tally(state, c, b, route, meter.NOBODY, "20261202", "202612", 11, 22), "2xx", 0)
    assert.equal(1, #timers)
    table.remove(timers).fn(false)
    local got = sent()
    assert.same({ expire_at = 11, requests = 3, bytes_in = 30, bytes_out = 300, cost = 6, ["2xx"] = 3, quota_requests = 3 }, got["consumer:a:d:20261202"])
    assert.same({ expire_at = 22, requests = 3, bytes_in = 30, bytes_out = 300, cost = 6, ["2xx"] = 3, quota_requests = 3 }, got["consumer:a:m:202612"])
    assert.same({ expire_at = 11, requests = 2, bytes_in = 20, bytes_out = 200, cost = 4, ["2xx"] = 1, ["5xx"] = 1, quota_requests = 1 }, got["consumer:b:d:20261202"])
    -- route and service: every request through them, no quota amounts
    assert.same({ expire_at = 22, requests = 5, bytes_in = 50, bytes_out = 500, cost = 10, ["2xx"] = 4, ["5xx"] = 1 }, got["route:r:m:202612"])
    assert.same({ expire_at = 11, requests = 4, bytes_in = 40, bytes_out = 400, cost = 8, ["2xx"] = 3, ["5xx"] = 1 }, got["service:s:d:20261202"])
    local keys = 0
    for _ in pairs(got) do keys = keys + 1 end
    assert.equal(8, keys)
    assert.equal(0, (meter.health()))
  end)

  it("a new day starts a new tally; the old one is flushed under the old day's keys", function()
    local c = { redis = {}, flush_batch = 100, max_pending = 100000, flush_interval = 1000 }
    local state = meter.stateFor(c)
    local a = target("ip:a", "20261231", "202612")
    request(meter.tally(state, c, a, meter.NOBODY, meter.NOBODY, "20261231", "202612", 1, 2), "2xx", 1)
    a.dayKey, a.monthKey = "ip:a:d:20270101", "ip:a:m:202701"
    request(meter.tally(state, c, a, meter.NOBODY, meter.NOBODY, "20270101", "202701", 3, 4), "4xx", 1)
    request(meter.tally(state, c, a, meter.NOBODY, meter.NOBODY, "20270101", "202701", 3, 4), "4xx", 1)
    assert.equal(4, (meter.health()))
    meter.flushSoon()
    table.remove(timers).fn(false)
    local got = sent()
    assert.equal(1, got["ip:a:d:20261231"].requests)
    assert.equal(1, got["ip:a:m:202612"]["2xx"])
    assert.same({ expire_at = 3, requests = 2, bytes_in = 20, bytes_out = 200, cost = 4, ["4xx"] = 2, quota_requests = 2 }, got["ip:a:d:20270101"])
    assert.equal(2, got["ip:a:m:202701"].requests)
  end)

  it("past max_pending a new tally leaves out the counter sets with no room, counted dropped per request, until there is room again", function()
    local c = { redis = {}, flush_batch = 100, max_pending = 2, flush_interval = 1000 }
    local state = meter.stateFor(c)
    local a, b = target("ip:a", "20261202", "202612"), target("ip:b", "20261202", "202612")
    request(meter.tally(state, c, a, meter.NOBODY, meter.NOBODY, "20261202", "202612", 1, 2), "2xx", 1)
    request(meter.tally(state, c, b, meter.NOBODY, meter.NOBODY, "20261202", "202612", 1, 2), "2xx", 1)
    request(meter.tally(state, c, b, meter.NOBODY, meter.NOBODY, "20261202", "202612", 1, 2), "2xx", 1)
    local pending, dropped = meter.health()
    assert.equal(2, pending)
    assert.equal(4, dropped)
    meter.flushSoon()
    table.remove(timers).fn(false)
    local got = sent()
    assert.equal(1, got["ip:a:d:20261202"].requests)
    assert.is_nil(got["ip:b:d:20261202"])
    -- the flush made room: b's next request is counted
    request(meter.tally(state, c, b, meter.NOBODY, meter.NOBODY, "20261202", "202612", 1, 2), "2xx", 1)
    calls = {}
    meter.flushSoon()
    table.remove(timers).fn(false)
    got = sent()
    assert.equal(1, got["ip:b:d:20261202"].requests)
    assert.equal(1, got["ip:b:m:202612"].requests)
    assert.equal(4, select(2, meter.health()))
  end)

  it("past max_pending, new subjects' requests are counted dropped and their tallies not kept", function()
    local c = { redis = {}, flush_batch = 100, max_pending = 2, flush_interval = 1000 }
    local state = meter.stateFor(c)
    local _, droppedBefore = meter.health()
    request(meter.tally(state, c, target("ip:kept", "20261202", "202612"), meter.NOBODY, meter.NOBODY, "20261202", "202612", 1, 2), "2xx", 1)
    for i = 1, 1000 do
      local t = target("ip:new" .. i, "20261202", "202612")
      request(meter.tally(state, c, t, meter.NOBODY, meter.NOBODY, "20261202", "202612", 1, 2), "2xx", 1)
    end
    local subjects = 0
    for _ in pairs(state.tallies) do subjects = subjects + 1 end
    assert.equal(1, subjects)
    assert.equal(droppedBefore + 2000, select(2, meter.health()))
  end)
end)

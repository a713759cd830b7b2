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

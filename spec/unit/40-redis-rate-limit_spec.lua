-- redis-rate-limit: its schema (through the local gateway's Kong validator), its window
-- arithmetic (UTC calendar months and years), the instance fields the gateway hands handlers,
-- and counts (the script's decision arithmetic the deny cache repeats) at exact boundaries.
local config_loader = require("krs.gateway.config")
local windows = require("kong.plugins.redis-rate-limit.windows")
local cjson = require("cjson.safe")

local plugin_schema = require("plugin_schema")("redis-rate-limit")
local schema, validate, ok = plugin_schema.schema, plugin_schema.validate, plugin_schema.ok
local errors_of, error_text = plugin_schema.errors_of, plugin_schema.error_text

describe("redis-rate-limit schema", function()
  it("fills Kong's defaults", function()
    local c = ok({ minute = 10 })
    assert.same({
      minute = 10,
      algorithm = "sliding-window",
      sync = "lease",
      lease_ttl = 1,
      lease_max = 100,
      limit_by = "consumer",
      hide_client_headers = false,
      error_code = 429,
      error_message = "API rate limit exceeded",
      fault_tolerant = true,
      redis = {
        host = "127.0.0.1", port = 6379, timeout = 2000, database = 0, ssl = false, ssl_verify = false,
        keepalive_pool_size = 256, keepalive_timeout = 60000, cluster_max_redirections = 5,
      },
    }, c)
  end)

  it("takes an empty redis.password as Kong does (len_min 0: no AUTH)", function()
    assert.equal("", ok({ minute = 10, redis = { password = "" } }).redis.password)
  end)

  it("needs at least one limit", function()
    assert.same({
      ["@entity"] = "at least one of these fields must be non-empty: 'config.second', 'config.minute', 'config.hour', 'config.day', 'config.month', 'config.year'",
    }, errors_of({}))
  end)

  it("takes Kong's year window (a migrated config with year: validates), alone or with the others", function()
    assert.equal(1000, ok({ year = 1000 }).year)
    local c = ok({ second = 1, minute = 10, hour = 100, day = 1000, month = 10000, year = 100000 })
    assert.equal(100000, c.year)
    assert.same({ ["config.year"] = "value should be between 1 and 10000000000" }, errors_of({ year = 0 }))
    assert.same({ ["config.year"] = "expected an integer" }, errors_of({ year = 0.5 }))
  end)

  it("refuses a longer window with a lower limit, in Kong's words", function()
    assert.same({ config = "The limit for minute(5.0) cannot be lower than the limit for second(10.0)" },
      errors_of({ second = 10, minute = 5 }))
    assert.same({ config = "The limit for month(99.0) cannot be lower than the limit for hour(100.0)" },
      errors_of({ hour = 100, month = 99 }))
    ok({ second = 10, minute = 10, hour = 600, day = 600, month = 1000000 })
    assert.same({ config = "The limit for year(999.0) cannot be lower than the limit for month(1000.0)" },
      errors_of({ month = 1000, year = 999 }))
    assert.same({ config = "The limit for year(5.0) cannot be lower than the limit for minute(10.0)" },
      errors_of({ minute = 10, year = 5 }))
    ok({ month = 1000, year = 1000 })
  end)

  it("takes whole limits from 1 to 10^10", function()
    assert.same({ ["config.minute"] = "value should be between 1 and 10000000000" }, errors_of({ minute = 0 }))
    assert.same({ ["config.hour"] = "value should be between 1 and 10000000000" }, errors_of({ hour = 1e10 + 1 }))
    assert.same({ ["config.second"] = "expected an integer" }, errors_of({ second = 1.5 }))
    assert.same({ ["config.day"] = "expected an integer" }, errors_of({ day = "10" }))
    ok({ month = 1e10 })
  end)

  it("knows its algorithms and identifiers", function()
    assert.same({ ["config.algorithm"] = "expected one of: sliding-window, fixed-window" },
      errors_of({ minute = 1, algorithm = "leaky-bucket" }))
    assert.same({ ["config.limit_by"] = "expected one of: consumer, credential, ip, service, route, header, path" },
      errors_of({ minute = 1, limit_by = "consumer-group" }))
    for _, by in ipairs({ "consumer", "credential", "ip", "service", "route" }) do
      assert.equal(by, ok({ minute = 1, limit_by = by }).limit_by)
    end
    assert.equal("fixed-window", ok({ minute = 1, algorithm = "fixed-window" }).algorithm)
  end)

  it("takes sync lease (the default) or exact, with lease_ttl and lease_max in bounds", function()
    assert.equal("exact", ok({ minute = 1, sync = "exact" }).sync)
    assert.same({ ["config.sync"] = "expected one of: lease, exact" }, errors_of({ minute = 1, sync = "batched" }))
    assert.equal(0.25, ok({ minute = 1, lease_ttl = 0.25 }).lease_ttl)
    assert.same({ ["config.lease_ttl"] = "value should be between 0.05 and 60" }, errors_of({ minute = 1, lease_ttl = 0 }))
    assert.same({ ["config.lease_ttl"] = "value should be between 0.05 and 60" }, errors_of({ minute = 1, lease_ttl = 61 }))
    assert.same({ ["config.lease_max"] = "value should be between 1 and 1000000" }, errors_of({ minute = 1, lease_max = 0 }))
    assert.same({ ["config.lease_max"] = "expected an integer" }, errors_of({ minute = 1, lease_max = 2.5 }))
    assert.equal(1, ok({ minute = 1, lease_max = 1 }).lease_max)
  end)

  it("requires header_name with limit_by header and path with limit_by path", function()
    assert.same({
      ["@entity"] = "failed conditional validation given value of field 'config.limit_by'",
      ["config.header_name"] = "required field missing",
    }, errors_of({ minute = 1, limit_by = "header" }))
    assert.same({
      ["@entity"] = "failed conditional validation given value of field 'config.limit_by'",
      ["config.path"] = "required field missing",
    }, errors_of({ minute = 1, limit_by = "path" }))
    assert.equal("X-Api-Client", ok({ minute = 1, limit_by = "header", header_name = "X-Api-Client" }).header_name)
    assert.equal("/v1/orders", ok({ minute = 1, limit_by = "path", path = "/v1/orders" }).path)
  end)

  it("checks header_name and path as Kong's typedefs do", function()
    assert.is_string(errors_of({ minute = 1, limit_by = "header", header_name = "bad header" })["config.header_name"])
    assert.same({
      ["@entity"] = "failed conditional validation given value of field 'config.limit_by'",
      ["config.path"] = "should start with: /",
    }, errors_of({ minute = 1, limit_by = "path", path = "v1" }))
  end)

  it("takes error codes 400..599 only", function()
    assert.same({ ["config.error_code"] = "value should be between 400 and 599" }, errors_of({ minute = 1, error_code = 200 }))
    assert.equal(503, ok({ minute = 1, error_code = 503, error_message = "slow down" }).error_code)
  end)

  it("refuses unknown fields (Kong's policy and sync_rate are not ours)", function()
    assert.same({ ["config.policy"] = "unknown field" }, errors_of({ minute = 1, policy = "redis" }))
  end)

  it("describes every config field", function()
    local function check(fields, prefix)
      for _, entry in ipairs(fields) do
        for name, field in pairs(entry) do
          assert.is_string(field.description, prefix .. name .. " has no description")
          if field.type == "record" and field.fields then check(field.fields, prefix .. name .. ".") end
        end
      end
    end
    for _, entry in ipairs(schema().fields) do
      if entry.config then check(entry.config.fields, "config.") end
    end
  end)

  it("says in its description that rejected requests do not consume quota", function()
    for _, entry in ipairs(schema().fields) do
      if entry.config then assert.matches("Rejected requests do not consume quota", entry.config.description, 1, true) end
    end
  end)
end)

describe("redis-rate-limit windows", function()
  local DAY = 86400000

  it("converts day counts to civil dates and back, as os.date does in UTC", function()
    local seed = 12345
    for _ = 1, 2000 do
      seed = (seed * 1103515245 + 12345) % 2147483648
      local seconds = seed * 3 -- up to ~2174
      local t = os.date("!*t", seconds)
      local days = math.floor(seconds / 86400)
      assert.equal(days, windows.daysFromCivil(t.year, t.month, t.day))
      local y, m = windows.civilFromDays(days)
      assert.same({ t.year, t.month }, { y, m })
    end
  end)

  it("aligns seconds, minutes, hours and days on the epoch (days at 00:00 UTC)", function()
    local now = 1718454321987 -- 2024-06-15T12:25:21.987Z
    assert.same({ 1718454321000, 1000, 1718454320000, 1000 }, { windows.bounds(now, 1000) })
    assert.same({ 1718454300000, 60000, 1718454240000, 60000 }, { windows.bounds(now, 60000) })
    assert.same({ 1718452800000, 3600000, 1718449200000, 3600000 }, { windows.bounds(now, 3600000) })
    assert.same({ 1718409600000, DAY, 1718409600000 - DAY, DAY }, { windows.bounds(now, DAY) })
  end)

  it("takes calendar months in UTC, with the lengths of the months around them", function()
    local function ms(y, m, d) return windows.daysFromCivil(y, m, d) * DAY end
    -- February of a leap year: 29 days; January before it, March (31 days) after it
    assert.same({ ms(2024, 2, 1), 29 * DAY, ms(2024, 1, 1), 31 * DAY },
      { windows.bounds(ms(2024, 2, 15) + 5, 0) })
    -- December: January of the next year comes after it
    assert.same({ ms(2023, 12, 1), 31 * DAY, ms(2023, 11, 1), 31 * DAY },
      { windows.bounds(ms(2023, 12, 31) + DAY - 1, 0) })
    -- January: December of the year before comes before it; a 28-day February after it
    assert.same({ ms(2023, 1, 1), 31 * DAY, ms(2022, 12, 1), 28 * DAY },
      { windows.bounds(ms(2023, 1, 1), 0) })
    -- the first and last millisecond of a month, then back to an earlier one
    assert.equal(ms(2024, 3, 1), (windows.bounds(ms(2024, 3, 1), 0)))
    assert.equal(ms(2024, 3, 1), (windows.bounds(ms(2024, 4, 1) - 1, 0)))
    assert.equal(ms(2024, 4, 1), (windows.bounds(ms(2024, 4, 1), 0)))
    assert.equal(ms(2020, 2, 1), (windows.bounds(ms(2020, 2, 29), 0)))
  end)

  it("takes calendar years in UTC, with the lengths of the years around them", function()
    local function ms(y, m, d) return windows.daysFromCivil(y, m, d) * DAY end
    assert.equal(windows.YEAR, windows.WINDOWS[6].length)
    assert.same({ "year", "Year" }, { windows.WINDOWS[6].name, windows.WINDOWS[6].title })
    -- 2023: 365 days, after 2022 (365), before the leap year 2024 (366)
    assert.same({ ms(2023, 1, 1), 365 * DAY, ms(2022, 1, 1), 366 * DAY },
      { windows.bounds(ms(2023, 6, 15) + 123, windows.YEAR) })
    -- the leap year itself, at its first and last millisecond
    assert.same({ ms(2024, 1, 1), 366 * DAY, ms(2023, 1, 1), 365 * DAY },
      { windows.bounds(ms(2024, 1, 1), windows.YEAR) })
    assert.same({ ms(2024, 1, 1), 366 * DAY, ms(2023, 1, 1), 365 * DAY },
      { windows.bounds(ms(2025, 1, 1) - 1, windows.YEAR) })
    -- 1999: 2000 after it is a leap year (divisible by 400); then back to an earlier year
    assert.same({ ms(1999, 1, 1), 365 * DAY, ms(1998, 1, 1), 366 * DAY },
      { windows.bounds(ms(1999, 12, 31), windows.YEAR) })
    -- 2099: 2100 after it is not a leap year
    assert.same({ ms(2099, 1, 1), 365 * DAY, ms(2098, 1, 1), 365 * DAY },
      { windows.bounds(ms(2099, 3, 1), windows.YEAR) })
    -- the month and year caches do not disturb each other
    assert.same({ ms(2024, 2, 1), 29 * DAY, ms(2024, 1, 1), 31 * DAY }, { windows.bounds(ms(2024, 2, 10), windows.MONTH) })
    assert.equal(ms(2024, 1, 1), (windows.bounds(ms(2024, 2, 10), windows.YEAR)))
    assert.equal(ms(2024, 2, 1), (windows.bounds(ms(2024, 2, 11), windows.MONTH)))
  end)
end)

describe("the gateway's instance fields on a plugin config", function()
  local env = config_loader.loaderEnv({ "redis-rate-limit" })

  local function load()
    local cfg, err = config_loader.loadDeclarative({
      _format_version = "3.0",
      services = { {
        name = "svc", url = "http://127.0.0.1:1",
        routes = { { name = "r", paths = { "/" }, plugins = { { name = "redis-rate-limit", config = { minute = 5 } } } } },
        plugins = { { name = "redis-rate-limit", instance_name = "svc-limit", config = { hour = 50 } } },
      } },
      plugins = { { name = "redis-rate-limit", config = { second = 1 } } },
    }, env)
    assert.is_nil(err)
    return cfg
  end

  it("are set as Kong sets them, with deterministic plugin ids", function()
    local cfg = load()
    local by_scope = {}
    for _, p in ipairs(cfg.plugins) do
      by_scope[(p.route and "route") or (p.service and "service") or "global"] = p
      assert.equal(p.id, p.config.__plugin_id)
      assert.equal(p.route and p.route.id, p.config.route_id)
      assert.equal(p.service and p.service.id, p.config.service_id)
      assert.is_nil(p.config.consumer_id)
      assert.equal(p.instance_name, p.config.plugin_instance_name)
    end
    assert.equal("svc-limit", by_scope.service.config.plugin_instance_name)
    -- Kong's cache key layout: plugins:<name>:<route>:<service>:<consumer>:<consumer group>:<workspace>
    assert.equal("plugins:redis-rate-limit:" .. by_scope.route.route.id .. "::::", by_scope.route.config.__key__)
    -- every node that loads the same file agrees on the ids
    local again = load()
    for i, p in ipairs(cfg.plugins) do assert.equal(p.config.__plugin_id, again.plugins[i].config.__plugin_id) end
    assert.are_not.equal(by_scope.route.id, by_scope.service.id)
  end)

  it("stay out of the config's JSON (the Admin API output)", function()
    local cfg = load()
    for _, p in ipairs(cfg.plugins) do
      local decoded = cjson.decode(cjson.encode(p.config))
      assert.is_nil(decoded.__plugin_id)
      assert.is_nil(decoded.__key__)
      assert.is_nil(decoded.route_id)
      assert.is_nil(decoded.service_id)
    end
  end)
end)

describe("redis-rate-limit counts (the script's arithmetic, on the gateway for the deny cache)", function()
  local counts = require("kong.plugins.redis-rate-limit.counts")
  local STEPS = 262144
  local DAY = 86400000
  local floor = math.floor
  local function ms(y, m, d) return windows.daysFromCivil(y, m, d) * DAY end

  -- largest integer q with q * b <= a, exact for the integers here (all below 2^53)
  local function idiv(a, b)
    local q = floor(a / b)
    while q * b > a do q = q - 1 end
    while (q + 1) * b <= a do q = q + 1 end
    return q
  end

  -- The documented rule, solved for time: with the previous window's weight rounded up to
  -- a multiple of 1/STEPS and a request fitting iff count + 1 <= limit, the room is at
  -- least k from the first millisecond e with ceil((L - e) * STEPS / L) <= W, where
  -- W = floor((limit - curr - k) * STEPS / prev): e = L - floor(W * L / STEPS).
  local function first_ms_with_room(k, limit, length, curr, prev)
    local w = idiv((limit - curr - k) * STEPS, prev)
    if w < 0 then return nil end
    if w >= STEPS then return 0 end -- the weight never exceeds 1: room from the start
    return length - idiv(w * length, STEPS)
  end

  it("gives the room back at exactly the millisecond the rule says, for every window length", function()
    local lengths = { 1000, 60000, 3600000, DAY, 28 * DAY, 31 * DAY, 366 * DAY }
    local checked = 0
    for _, length in ipairs(lengths) do
      for _, limit in ipairs({ 1, 2, 10, 37, 1e10 }) do
        for _, prev in ipairs({ 1, math.ceil(limit / 3), limit - 1, limit }) do
          for _, curr in ipairs({ 0, floor(limit / 2), limit - 1 }) do
            for k = 1, 3 do
              local e = prev > 0 and first_ms_with_room(k, limit, length, curr, prev)
              if e and e > 0 and e < length then
                local before = counts.roomIn(true, limit, length, e - 1, curr, prev)
                local at = counts.roomIn(true, limit, length, e, curr, prev)
                local what = string.format("length %d limit %d prev %d curr %d k %d at %d ms", length, limit, prev, curr, k, e)
                assert.is_true(before < k, what .. ": room " .. before .. " one ms early")
                assert.is_true(at >= k, what .. ": room " .. at)
                checked = checked + 1
              end
            end
          end
        end
      end
    end
    assert.is_true(checked > 200, "only " .. checked .. " boundaries")
  end)

  it("at the limit and one over: fixed counts, and sliding with no previous window", function()
    for _, sliding in ipairs({ false, true }) do
      assert.equal(1, counts.roomIn(sliding, 10, 60000, 59999, 9, 0))
      assert.equal(0, counts.roomIn(sliding, 10, 60000, 0, 10, 0))
      assert.equal(-1, counts.roomIn(sliding, 10, 60000, 0, 11, 0))
    end
    -- a previous window at the limit weighs all of it at the start, nothing of it at the end
    assert.equal(0, counts.roomIn(true, 10, 60000, 0, 0, 10))
    assert.equal(9, counts.roomIn(true, 10, 60000, 59999, 0, 10))
    assert.equal(10, counts.roomIn(true, 10, 60000, 60000, 0, 10))
  end)

  it("picks the counters the script would: same window, the one before, a newer one, an older one", function()
    local start = 1700000040000 -- a minute boundary
    -- fixed: full until the window ends, then empty again
    assert.equal(0, counts.remainingAt(false, 5, 60000, start + 59999, start, 5, 0))
    assert.equal(5, counts.remainingAt(false, 5, 60000, start + 60000, start, 5, 0))
    assert.equal(2, counts.remainingAt(false, 5, 60000, start + 10, start, 3, 0))
    -- sliding: the counted window becomes the previous one, then is forgotten
    assert.equal(0, counts.remainingAt(true, 5, 60000, start + 60000, start, 5, 4))
    assert.equal(2, counts.remainingAt(true, 5, 60000, start + 60000 + 30000, start, 5, 4)) -- 5 - 2.5
    assert.equal(5, counts.remainingAt(true, 5, 60000, start + 120000, start, 5, 4))
    -- half-way through the counted window, its previous one weighs half
    assert.equal(1, counts.remainingAt(true, 10, 60000, start + 30000, start, 4, 10)) -- 10 - 5 - 4
    -- a window a node ahead of this one already counted in: used as it is, from its start
    assert.equal(0, counts.remainingAt(false, 5, 60000, start - 50, start, 5, 0))
    assert.equal(0, counts.remainingAt(true, 5, 60000, start - 50, start, 5, 0))
    -- never negative
    assert.equal(0, counts.remainingAt(false, 5, 60000, start + 1, start, 7, 0))
  end)

  it("uses calendar months: December counted, January weighs it over 31 days of its own", function()
    local dec, jan = ms(2026, 12, 1), ms(2027, 1, 1)
    assert.equal(0, counts.remainingAt(false, 3, windows.MONTH, jan - 1, dec, 3, 0))
    assert.equal(3, counts.remainingAt(false, 3, windows.MONTH, jan, dec, 3, 0))
    -- sliding: December's 31 weigh over January's 31 days (about one day in, one fits)
    local e = first_ms_with_room(1, 31, 31 * DAY, 0, 31)
    assert.is_true(e > DAY - 60000 and e < DAY + 60000)
    assert.equal(0, counts.remainingAt(true, 31, windows.MONTH, jan + e - 1, dec, 31, 0))
    assert.equal(1, counts.remainingAt(true, 31, windows.MONTH, jan + e, dec, 31, 0))
    -- over a 28-day February, January's 31 decay at another pace
    local feb = ms(2027, 2, 1)
    local f = first_ms_with_room(1, 31, 28 * DAY, 0, 31)
    assert.equal(0, counts.remainingAt(true, 31, windows.MONTH, feb + f - 1, jan, 31, 0))
    assert.equal(1, counts.remainingAt(true, 31, windows.MONTH, feb + f, jan, 31, 0))
  end)
end)

describe("redis-rate-limit lease sizes (lease.wantFor)", function()
  local lease = require("kong.plugins.redis-rate-limit.lease")
  local want = lease.wantFor
  local TTL, MAX = 1000, 100

  it("starts at one admission: a new identifier is decided exactly", function()
    assert.equal(1, want(0, 0, 0, TTL, MAX, 0))
  end)

  it("at most doubles what the last lease used, while the rate would use more within lease_ttl", function()
    assert.equal(2, want(1, 1, 1, TTL, MAX, 0))
    assert.equal(4, want(2, 2, 3, TTL, MAX, 0))
    assert.equal(64, want(32, 32, 5, TTL, MAX, 0))
    assert.equal(MAX, want(64, 64, 5, TTL, MAX, 0))
    assert.equal(MAX, want(MAX, MAX, 10, TTL, MAX, 0))
    -- a lease taken the same millisecond (elapsed 0) counts as 1 ms
    assert.equal(2, want(1, 1, 0, TTL, MAX, 0))
  end)

  it("follows the observed rate: used over the time since the last lease, times lease_ttl", function()
    -- 100 used in 1 s: 100 per lease_ttl
    assert.equal(100, want(100, 100, 1000, TTL, 1000, 0))
    -- 100 used in 4 s: 25 per second
    assert.equal(25, want(100, 100, 4000, TTL, MAX, 0))
    -- 10 in 3 s with lease_ttl 0.5 s: ceil(10 * 500 / 3000) = 2
    assert.equal(2, want(10, 10, 3000, 500, MAX, 0))
  end)

  it("a worker that sees one request a minute asks for one, not for lease_max", function()
    assert.equal(1, want(1, 1, 60000, TTL, MAX, 0))
    assert.equal(1, want(100, 1, 60000, TTL, MAX, 0))
  end)

  it("a lease mostly given back shrinks the next: it follows what was used, not what was granted", function()
    -- 100 granted, 3 used before lease_ttl ran out
    assert.equal(3, want(100, 3, 1000, TTL, MAX, 0))
    -- nothing used (the window moved on): start again from one
    assert.equal(1, want(100, 0, 1000, TTL, MAX, 0))
  end)

  it("covers the requests already waiting for it, up to lease_max", function()
    assert.equal(8, want(0, 0, 0, TTL, MAX, 7))
    assert.equal(8, want(1, 1, 60000, TTL, MAX, 7))
    assert.equal(MAX, want(1, 1, 60000, TTL, MAX, 500))
    assert.equal(1, want(1, 1, 1, TTL, 1, 5)) -- lease_max 1: every admission is its own call
  end)
end)

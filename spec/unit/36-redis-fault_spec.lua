-- krs.redis.fault: the throttled failure log, per plugin instance and Redis endpoint, on a
-- stub clock and a captured ngx.log.
describe("krs.redis.fault", function()
  local fault, saved_ngx, saved_kong
  local clock, lines, exits

  local function redis(port, db, password)
    return { host = "127.0.0.1", port = port, database = db or 0, password = password, timeout = 2000 }
  end

  before_each(function()
    saved_ngx, saved_kong = rawget(_G, "ngx"), rawget(_G, "kong")
    clock, lines, exits = 1000, {}, {}
    _G.ngx = setmetatable({
      ERR = 4,
      now = function() return clock end,
      get_phase = function() return "timer" end,
      log = function(_, msg) lines[#lines + 1] = msg end,
    }, { __index = saved_ngx })
    _G.kong = { response = { exit = function(status, body) exits[#exits + 1] = { status, body } end } }
    package.loaded["krs.redis.fault"] = nil
    fault = require "krs.redis.fault"
  end)

  after_each(function()
    _G.ngx, _G.kong = saved_ngx, saved_kong
    package.loaded["krs.redis.fault"] = nil
  end)

  it("one line per instance and endpoint per interval, each naming both, never the password", function()
    local a = { fault_tolerant = true, __plugin_id = "id-a", plugin_instance_name = "alpha", redis = redis(6379, 0, "pw-a-secret") }
    local b = { fault_tolerant = true, __plugin_id = "id-b", redis = redis(6380, 3, "pw-b-secret") }
    for _ = 1, 5 do
      fault.onRedisFailure("p", a, "redis AUTH refused: WRONGPASS")
      fault.onRedisFailure("p", b, "TLS handshake failed")
    end
    assert.are.equal(2, #lines)
    assert.matches("[kong] [p] redis unavailable: redis AUTH refused: WRONGPASS (fault_tolerant: request let through) (instance alpha (id id-a), redis 127.0.0.1:6379/0)", lines[1], 1, true)
    assert.matches("(instance id-b, redis 127.0.0.1:6380/3)", lines[2], 1, true)
    for _, l in ipairs(lines) do assert.is_nil(l:find("secret", 1, true)) end
    assert.are.equal(0, #exits)
  end)

  it("the same instance on two endpoints, or two instances on one endpoint, are apart", function()
    fault.onRedisFailure("p", { fault_tolerant = true, __plugin_id = "x", redis = redis(1) }, "e")
    fault.onRedisFailure("p", { fault_tolerant = true, __plugin_id = "x", redis = redis(2) }, "e")
    fault.onRedisFailure("p", { fault_tolerant = true, __plugin_id = "y", redis = redis(1) }, "e")
    fault.onRedisFailure("p", { fault_tolerant = true, __plugin_id = "y", redis = redis(1, 1) }, "e")
    assert.are.equal(4, #lines)
  end)

  it("after the interval, logs again with how many it kept back", function()
    local conf = { fault_tolerant = false, __plugin_id = "x", redis = redis(1) }
    for _ = 1, 4 do fault.onRedisFailure("p", conf, "e") end
    clock = clock + 9.9
    fault.onRedisFailure("p", conf, "e")
    assert.are.equal(1, #lines)
    clock = clock + 0.2
    fault.onRedisFailure("p", conf, "e")
    assert.are.equal(2, #lines)
    assert.matches("(4 more since the last report)", lines[2], 1, true)
    -- fault_tolerant false: every one of them ended the request with Kong's 500
    assert.are.equal(6, #exits)
    assert.are.same({ 500, { message = "An unexpected error occurred" } }, exits[1])
  end)

  it("without a source, throttles per plugin name as before", function()
    fault.logThrottled("p", "one")
    fault.logThrottled("p", "two")
    fault.logThrottled("q", "three")
    assert.are.same({ "[kong] [p] one", "[kong] [q] three" }, lines)
  end)
end)

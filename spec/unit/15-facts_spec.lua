-- krs.facts: the request-facts record the observability plugins read, on a stub PDK.
describe("krs.facts", function()
  local facts, saved_ngx, saved_kong, phase

  before_each(function()
    saved_ngx, saved_kong = rawget(_G, "ngx"), rawget(_G, "kong")
    phase = "access"
    _G.ngx = setmetatable({ get_phase = function() return phase end }, { __index = saved_ngx })
    _G.kong = { ctx = { shared = {} } }
    package.loaded["krs.facts"] = nil
    facts = require "krs.facts"
    facts.setReader("structured-log", true)
  end)

  after_each(function()
    _G.ngx, _G.kong = saved_ngx, saved_kong
    package.loaded["krs.facts"] = nil
  end)

  it("records nothing, and creates nothing, until a plugin writes", function()
    assert.is_nil(facts.get())
    assert.is_nil(kong.ctx.shared.krs)
  end)

  it("adds Redis calls to the total and to the plugin that entered last", function()
    facts.redisCall(1, 2.5, false) -- before any enter(): the total only
    facts.enter("redis-key-auth")
    facts.redisCall(2, 1, true)
    facts.enter("redis-rate-limit")
    facts.redisCall(1, 0.5, false)
    local f = facts.get()
    assert.same({ round_trips = 4, time_ms = 4, errors = 1 }, f.redis)
    assert.same({ round_trips = 2, time_ms = 1, errors = 1 }, f.redis_by_plugin["redis-key-auth"])
    assert.same({ round_trips = 1, time_ms = 0.5, errors = 0 }, f.redis_by_plugin["redis-rate-limit"])
  end)

  it("keeps every limit decision, the last auth, cache and access results", function()
    facts.limit("redis-rate-limit", "rate", true, "redis", 10, 9)
    facts.limit("redis-usage", "quota", false, "worker")
    facts.auth("redis-key-auth", "unknown", nil, "Unauthorized")
    facts.auth("redis-jwt", "ok", "c-1")
    facts.cache("redis-cache", "Hit")
    facts.access("redis-ip-access", false, "deny")
    local f = facts.get()
    assert.are.equal(2, #f.limits)
    assert.same({ plugin = "redis-rate-limit", kind = "rate", admitted = true, source = "redis", limit = 10, remaining = 9 }, f.limits[1])
    assert.same({ plugin = "redis-usage", kind = "quota", admitted = false, source = "worker" }, f.limits[2])
    assert.same({ plugin = "redis-jwt", result = "ok", consumer_id = "c-1" }, f.auth)
    assert.same({ plugin = "redis-cache", status = "Hit" }, f.cache)
    assert.same({ plugin = "redis-ip-access", allowed = false, reason = "deny" }, f.access)
  end)

  it("bounds the errors of one request", function()
    for i = 1, facts.MAX_ERRORS + 10 do facts.error("p", "failure " .. i) end
    assert.are.equal(facts.MAX_ERRORS, #facts.get().errors)
  end)

  it("outside a request (a timer) writes and reads nothing", function()
    phase = "timer"
    facts.enter("p")
    facts.redisCall(1, 1, false)
    facts.error("p", "x")
    assert.is_nil(kong.ctx.shared.krs)
    assert.is_nil(facts.get())
  end)

  it("records nothing while no reader is configured, and again once one is", function()
    facts.setReader("structured-log", false)
    assert.is_false(facts.recording())
    facts.enter("redis-usage")
    facts.redisCall(1, 1, false)
    facts.limit("redis-usage", "quota", true, "worker", 10, 9)
    facts.auth("redis-key-auth", "ok", "c-1")
    facts.credentialNames({ plugin = "redis-key-auth", headers = { "apikey" }, query = {}, cookies = false })
    facts.cache("redis-cache", "Hit")
    facts.access("redis-ip-access", false, "deny")
    facts.error("p", "x")
    assert.is_nil(kong.ctx.shared.krs)
    assert.is_nil(facts.get())
    -- two readers: one leaving keeps the facts on for the other
    facts.setReader("redis-metrics", true)
    facts.setReader("structured-log", true)
    facts.setReader("structured-log", false)
    assert.is_true(facts.recording())
    facts.auth("redis-key-auth", "ok", "c-1")
    assert.same({ plugin = "redis-key-auth", result = "ok", consumer_id = "c-1" }, facts.get().auth)
  end)

  it("a record without Redis calls shares empty Redis facts that a later record's calls never change", function()
    facts.enter("redis-usage")
    local first = facts.get()
    assert.same({ round_trips = 0, time_ms = 0, errors = 0 }, first.redis)
    assert.same({}, first.redis_by_plugin)
    kong.ctx.shared = {} -- the next request
    facts.enter("redis-rate-limit")
    facts.redisCall(2, 1.5, true)
    local second = facts.get()
    assert.same({ round_trips = 2, time_ms = 1.5, errors = 1 }, second.redis)
    assert.same({ ["redis-rate-limit"] = { round_trips = 2, time_ms = 1.5, errors = 1 } }, second.redis_by_plugin)
    assert.same({ round_trips = 0, time_ms = 0, errors = 0 }, first.redis)
    assert.same({}, first.redis_by_plugin)
    assert.are_not.equal(first.redis, second.redis)
  end)
end)

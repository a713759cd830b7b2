-- krs.redis.breaker: the circuit breaker's state machine, on a stub clock (no sockets, no
-- sleeps: every transition is driven by setting the time).
describe("krs.redis.breaker", function()
  local breaker, saved_ngx
  local clock = 0
  local TIMEOUT_MS = 2000

  before_each(function()
    saved_ngx = rawget(_G, "ngx")
    _G.ngx = setmetatable({ now = function() return clock end }, { __index = saved_ngx })
    -- A fresh module each time: the circuits live in the module.
    package.loaded["krs.redis.breaker"] = nil
    breaker = require "krs.redis.breaker"
    clock = 1000
  end)

  after_each(function()
    _G.ngx = saved_ngx
    package.loaded["krs.redis.breaker"] = nil
  end)

  local function allowed(pool)
    local err, probe = breaker.check(pool or "p", TIMEOUT_MS)
    return err == nil, probe, err
  end

  local function open_circuit(pool)
    for _ = 1, 3 do breaker.report(pool or "p", "slow", false) end
  end

  describe("classify", function()
    it("a timeout is slow, whatever it took", function()
      assert.are.equal("slow", breaker.classify("timeout", 0.001, TIMEOUT_MS))
    end)

    it("a failure that took half the timeout or more is slow", function()
      assert.are.equal("slow", breaker.classify("connection reset by peer", 1.0, TIMEOUT_MS))
      assert.are.equal("slow", breaker.classify(nil, 1.9, TIMEOUT_MS))
    end)

    it("a quick refusal or reset is fast", function()
      assert.are.equal("fast", breaker.classify("connection refused", 0.002, TIMEOUT_MS))
      assert.are.equal("fast", breaker.classify("closed", 0.999, TIMEOUT_MS))
    end)
  end)

  it("fast failures never open the circuit, however many", function()
    for _ = 1, 1000 do breaker.report("p", "fast", false) end
    assert.is_true((allowed()))
    local _, probe = allowed()
    assert.is_false(probe)
  end)

  it("opens after three slow failures in a row, not two", function()
    breaker.report("p", "slow", false)
    breaker.report("p", "slow", false)
    assert.is_true((allowed()))
    breaker.report("p", "slow", false)
    local ok, _, err = allowed()
    assert.is_false(ok)
    assert.matches("redis circuit open after 3 slow failures", err, 1, true)
  end)

  it("an answer between slow failures starts the count again; a fast failure does not", function()
    breaker.report("p", "slow", false)
    breaker.report("p", "slow", false)
    breaker.report("p", "answered", false)
    breaker.report("p", "slow", false)
    breaker.report("p", "slow", false)
    assert.is_true((allowed()))
    breaker.report("p", "fast", false)
    breaker.report("p", "slow", false)
    assert.is_false((allowed()))
  end)

  it("open: refuses until the probe interval has passed, then lets exactly one call through", function()
    open_circuit()
    clock = clock + 0.099
    assert.is_false((allowed()))
    clock = clock + 0.002
    local ok, probe = allowed()
    assert.is_true(ok)
    assert.is_true(probe)
    -- While that probe is in flight, every other call is refused, however long it takes
    -- (up to its lease).
    for i = 1, 100 do
      clock = clock + 0.05
      assert.is_false((allowed()), "call " .. i)
    end
  end)

  it("a probe that Redis answers closes the circuit", function()
    open_circuit()
    clock = clock + 0.1
    local _, probe = allowed()
    assert.is_true(probe)
    breaker.report("p", "answered", true)
    for _ = 1, 10 do
      local ok, again = allowed()
      assert.is_true(ok)
      assert.is_false(again)
    end
  end)

  it("a probe that fails fast closes the circuit: nothing left to protect", function()
    open_circuit()
    clock = clock + 0.1
    local _, probe = allowed()
    breaker.report("p", "fast", probe)
    assert.is_true((allowed()))
  end)

  it("a probe that fails slowly keeps it open for one more interval, then probes again", function()
    open_circuit()
    clock = clock + 0.1
    assert.is_true(select(2, allowed()))
    clock = clock + 2 -- the probe waited for the timeout
    breaker.report("p", "slow", true)
    assert.is_false((allowed()))
    clock = clock + 0.05
    assert.is_false((allowed()))
    clock = clock + 0.06
    local ok, probe = allowed()
    assert.is_true(ok)
    assert.is_true(probe)
  end)

  it("calls already in flight when it opened do not end the probe's turn or start another", function()
    open_circuit()
    clock = clock + 0.1
    assert.is_true(select(2, allowed()))
    -- stragglers: a slow and a fast failure of ordinary calls
    breaker.report("p", "slow", false)
    breaker.report("p", "fast", false)
    clock = clock + 1
    assert.is_false((allowed()))
  end)

  it("an ordinary call that gets an answer while the circuit is open closes it", function()
    open_circuit()
    breaker.report("p", "answered", false)
    assert.is_true((allowed()))
  end)

  it("a probe that never reports gives its turn up after its lease", function()
    open_circuit()
    clock = clock + 0.1
    assert.is_true(select(2, allowed()))
    clock = clock + 6 * TIMEOUT_MS / 1000 - 0.01
    assert.is_false((allowed()))
    clock = clock + 0.02
    local ok, probe = allowed()
    assert.is_true(ok)
    assert.is_true(probe)
  end)

  it("keeps one circuit per pool", function()
    open_circuit("a")
    assert.is_false((allowed("a")))
    assert.is_true((allowed("b")))
  end)
end)

-- krs.redis.subscriber, the one pub/sub loop of redis-key-auth, redis-jwt and
-- redis-ip-access, on a stand-in of what nginx provides: a settable clock (ngx.sleep
-- advances it), timers that run when the test says, and connections scripted per test.
-- Real: krs.redis.subscriptions (the health record redis-metrics reads).

describe("krs.redis.subscriber", function()
  local STUBBED = { "krs.redis.subscriber", "krs.redis.client", "krs.redis.fault", "krs.redis.subscriptions" }
  local saved_loaded, saved_ngx = {}, nil
  local subscriber, subscriptions
  local clock, sleeps, timers, logs, lost_calls, exiting, connect

  setup(function()
    for _, m in ipairs(STUBBED) do saved_loaded[m] = package.loaded[m]; package.loaded[m] = nil end
    saved_ngx = _G.ngx
    _G.ngx = {
      null = saved_ngx and saved_ngx.null or {},
      ERR = 4, WARN = 5,
      now = function() return clock end,
      log = function() end,
      sleep = function(s) sleeps[#sleeps + 1] = s; clock = clock + s end,
      get_phase = function() return "access" end,
      worker = { exiting = function() return exiting end },
      timer = { at = function(delay, fn, arg) timers[#timers + 1] = { delay = delay, fn = fn, arg = arg }; return true end },
    }
    package.loaded["krs.redis.fault"] = { logThrottled = function(topic, message) logs[#logs + 1] = topic .. " " .. message end }
    package.loaded["krs.redis.client"] = {
      poolName = function(conf) return "krs:" .. conf.host .. ":" .. conf.port .. ":0:plain:-" end,
      connect = function(conf) return connect(conf) end,
      connectionLost = function(conf) lost_calls[#lost_calls + 1] = conf end,
    }
    subscriber = require("krs.redis.subscriber")
    subscriptions = require("krs.redis.subscriptions")
  end)

  teardown(function()
    for _, m in ipairs(STUBBED) do package.loaded[m] = saved_loaded[m] end
    _G.ngx = saved_ngx
  end)

  before_each(function()
    clock, sleeps, timers, logs, lost_calls, exiting = 1000, {}, {}, {}, {}, false
  end)

  local port = 20000
  local function new(events, channels)
    port = port + 1
    return subscriber.create({ host = "127.0.0.1", port = port }, {
      plugin = "test-plugin",
      logTopic = "test:subscriber",
      what = "test subscriber",
      channels = channels or { "chan" },
      onConnected = function() events[#events + 1] = "connected" end,
      onMessage = function(channel, payload)
        if payload == "raise" then error("handler bug") end
        events[#events + 1] = channel .. "=" .. payload
      end,
      onLost = function() events[#events + 1] = "lost" end,
    })
  end

  -- A connection that replies `script` (one reply per read: a table, or "closed" / "timeout"),
  -- then keeps timing out; each read of a timeout advances the clock by one read timeout.
  local function connection(script, opts)
    opts = opts or {}
    local i = 0
    local conn = { closed = false, sent = {}, subscribed_to = nil }
    conn.subscribe = function(_, ...)
      if opts.refuse then return nil, opts.refuse end
      conn.subscribed_to = { ... }
      return { "subscribe", (...), 1 }
    end
    conn.set_timeout = function() end
    conn.close = function() conn.closed = true end
    conn._sock = { send = function(_, data) conn.sent[#conn.sent + 1] = data; return #data end }
    conn.read_reply = function()
      i = i + 1
      local r = script[i]
      if r == nil or r == "timeout" then clock = clock + 1; return nil, "timeout" end
      if r == "closed" then return nil, "closed" end
      return r
    end
    return conn
  end

  -- Runs the subscriber's timer (and the timers it arms) until it stops.
  local function run(s)
    subscriber.start(s)
    while #timers > 0 do
      local t = table.remove(timers, 1)
      t.fn(false, t.arg)
    end
  end

  local function rounded(list)
    local r = {}
    for i, v in ipairs(list) do r[i] = math.floor(v * 10 + 0.5) / 10 end
    return r
  end

  -- Drops after drops[n] seconds up for the nth connection; stops after the last one.
  -- Returns the pause before each reconnect.
  local function pauses_for(drops)
    local s = new({})
    local n, pauses, slept = 0, {}, 0
    connect = function()
      n = n + 1
      if n > 1 then
        local total = 0
        for i = slept + 1, #sleeps do total = total + sleeps[i] end
        slept = #sleeps
        pauses[#pauses + 1] = total
      end
      if n > #drops then
        subscriber.stop(s)
        return nil, "stopped"
      end
      local script = {}
      for _ = 1, drops[n] do script[#script + 1] = "timeout" end
      script[#script + 1] = "closed"
      return connection(script)
    end
    run(s)
    return pauses
  end

  it("a subscription dropped at once backs off (0.2 s doubling up to 5 s), not every 0.2 s", function()
    assert.same({ 0.2, 0.4, 0.8, 1.6, 3.2, 5, 5, 5 }, rounded(pauses_for({ 0, 0, 0, 0, 0, 0, 0, 0 })))
  end)

  it("after a subscription that stayed up 5 s, the next reconnect starts again at 0.2 s", function()
    assert.same({ 0.2, 0.4, 0.8, 0.2, 0.4, 0.8 }, rounded(pauses_for({ 0, 0, 0, 6, 0, 0 })))
  end)

  it("drops what the plugin trusts on every subscription, hands it its channels' messages only, and says when it is lost", function()
    local events = {}
    local s = new(events, { "a", "b" })
    local conns = {}
    connect = function()
      if #conns == 2 then
        subscriber.stop(s)
        return nil, "stopped"
      end
      local c = connection({ { "message", "a", "1" }, { "message", "other", "2" }, { "pong", "" }, { "message", "b", "3" }, "closed" })
      conns[#conns + 1] = c
      return c
    end
    run(s)
    assert.same({ "connected", "a=1", "b=3", "lost", "connected", "a=1", "b=3", "lost" }, events)
    assert.same({ "a", "b" }, conns[1].subscribed_to)
    assert.is_true(conns[1].closed and conns[2].closed)
    -- every lost subscription lets the client re-resolve (Sentinel: ask the sentinels again)
    assert.equal(2, #lost_calls)
    assert.is_false(s.running)
    assert.is_false(s.up)
  end)

  it("a refused SUBSCRIBE or a failed connect is logged under the plugin's topic and retried by the loop itself", function()
    local events = {}
    local s = new(events)
    local n = 0
    connect = function()
      n = n + 1
      if n == 1 then return nil, "connection refused" end
      if n == 2 then return connection({}, { refuse = "NOPERM this user has no permissions to run the 'subscribe' command" }) end
      if n == 3 then return connection({ "closed" }) end
      subscriber.stop(s)
      return nil, "stopped"
    end
    run(s)
    assert.equal(4, n)
    assert.same({ "connected", "lost" }, events)
    assert.matches("^test:subscriber test subscriber could not connect: connection refused", logs[1])
    assert.matches("^test:subscriber test subscriber could not SUBSCRIBE: NOPERM", logs[2])
    assert.matches("^test:subscriber test subscriber lost the subscription: closed; reconnecting", logs[3])
  end)

  it("PINGs after 5 s of silence and reconnects when no answer comes within 5 s more", function()
    local events = {}
    local s = new(events)
    local conns = {}
    connect = function()
      if #conns == 1 then
        subscriber.stop(s)
        return nil, "stopped"
      end
      conns[1] = connection({})
      return conns[1]
    end
    local started = clock
    run(s)
    assert.same({ "*1\r\n$4\r\nPING\r\n" }, conns[1].sent)
    assert.matches("no answer to PING", logs[1])
    assert.is_true(clock - started >= 10 and clock - started <= 12)
  end)

  it("a handler that raises is logged and the subscription goes on", function()
    local events = {}
    local s = new(events)
    local n = 0
    connect = function()
      n = n + 1
      if n > 1 then
        subscriber.stop(s)
        return nil, "stopped"
      end
      return connection({ { "message", "chan", "raise" }, { "message", "chan", "after" }, "closed" })
    end
    run(s)
    assert.same({ "connected", "chan=after", "lost" }, events)
    assert.matches("test subscriber handler failed: .*handler bug", logs[1])
  end)

  it("a loop that raised starts again by itself after 5 s (no request needed), and its health says it is down meanwhile", function()
    local events = {}
    local s = new(events)
    local n = 0
    connect = function()
      n = n + 1
      if n == 1 then
        local c = connection({ { "message", "chan", "x" } })
        -- a bug below the plugin (here: the socket) while subscribed
        c.read_reply = function() error("boom") end
        return c
      end
      subscriber.stop(s)
      return nil, "stopped"
    end
    subscriber.start(s)
    assert.equal(1, #timers)
    local first = table.remove(timers, 1)
    first.fn(false, first.arg)
    assert.same({ "connected", "lost" }, events)
    assert.matches("test subscriber failed: .*boom", logs[1])
    assert.is_true(s.running)
    assert.equal(1, #timers)
    assert.equal(5, timers[1].delay)
    local health
    for _, h in ipairs(subscriptions.all()) do if h.redis == "127.0.0.1:" .. port .. "/0" then health = h end end
    assert.equal(0, health.up)
    assert.equal(1, health.subscribes)
    run(s)
    assert.equal(2, n)
    assert.is_false(s.running)
  end)

  it("stops within a second of stop() or of the worker exiting, and is not started again once stopped", function()
    local events = {}
    local s = new(events)
    local reads = 0
    connect = function()
      local c = connection({})
      c.read_reply = function()
        reads = reads + 1
        clock = clock + 1
        if reads == 3 then exiting = true end
        return nil, "timeout"
      end
      return c
    end
    run(s)
    assert.equal(3, reads)
    assert.same({ "connected", "lost" }, events)
    assert.same({}, logs)
    exiting = false
    subscriber.stop(s)
    subscriber.start(s)
    assert.equal(0, #timers)
  end)

  it("starts only where timers can be created, once", function()
    local s = new({})
    local phase = "log"
    ngx.get_phase = function() return phase end
    subscriber.start(s)
    assert.equal(0, #timers)
    phase = "init_worker"
    subscriber.start(s)
    subscriber.start(s)
    assert.equal(1, #timers)
    ngx.get_phase = function() return "access" end
  end)
end)

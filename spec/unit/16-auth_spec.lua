-- krs.auth: what both auth plugins do once they know the consumer (Kong's set_consumer,
-- the anonymous consumer, the request facts), on a stub PDK that records every call.
describe("krs.auth", function()
  local auth, saved_ngx, saved_kong, calls, headers, consumers, now, exited, logged

  before_each(function()
    saved_ngx, saved_kong = rawget(_G, "ngx"), rawget(_G, "kong")
    calls, headers, consumers, now, exited, logged = {}, {}, {}, 1000, nil, {}
    _G.ngx = setmetatable({
      get_phase = function() return "access" end,
      now = function() return now end,
    }, { __index = saved_ngx })
    _G.kong = {
      ctx = { shared = {} },
      client = {
        authenticate = function(consumer, credential)
          calls[#calls + 1] = { "authenticate", consumer, credential }
        end,
        load_consumer = function(id, by_username)
          calls[#calls + 1] = { "load_consumer", id, by_username }
          return consumers[id], nil
        end,
      },
      service = {
        request = {
          set_header = function(name, value) headers[name] = value end,
          clear_header = function(name) headers[name] = false end,
        },
      },
      response = {
        exit = function(status, body) exited = { status, body } end,
      },
      log = { err = function(...) logged[#logged + 1] = table.concat({ ... }) end },
    }
    package.loaded["krs.facts"] = nil
    package.loaded["krs.auth"] = nil
    auth = require "krs.auth"
    -- Facts are recorded only while a reader (structured-log, redis-metrics) is configured.
    require("krs.facts").setReader("structured-log", true)
  end)

  after_each(function()
    _G.ngx, _G.kong = saved_ngx, saved_kong
    package.loaded["krs.facts"] = nil
    package.loaded["krs.auth"] = nil
  end)

  local alice = { id = "c-1", username = "alice" }

  it("a credential: authenticates, sets Kong's consumer headers, clears the rest, records ok", function()
    local credential = { id = "k-1", consumer = { id = "c-1" } }
    auth.authenticated("redis-key-auth", alice, credential, "k-1")
    assert.same({ "authenticate", alice, credential }, calls[1])
    assert.same({
      ["X-Consumer-ID"] = "c-1",
      ["X-Consumer-Custom-ID"] = false, -- the consumer has none: a client's own is removed
      ["X-Consumer-Username"] = "alice",
      ["X-Credential-Identifier"] = "k-1",
      ["X-Anonymous-Consumer"] = false,
    }, headers)
    assert.same({ plugin = "redis-key-auth", result = "ok", consumer_id = "c-1" }, kong.ctx.shared.krs.auth)
  end)

  it("the identifier is the plugin's choice (jwt sends the credential's key, not its id)", function()
    auth.setConsumer({ id = "c-2", custom_id = "cust" }, { id = "j-1", key = "iss-1" }, "iss-1")
    assert.equal("iss-1", headers["X-Credential-Identifier"])
    assert.equal("cust", headers["X-Consumer-Custom-ID"])
    assert.is_false(headers["X-Consumer-Username"])
  end)

  it("no credential: X-Anonymous-Consumer true, no X-Credential-Identifier", function()
    auth.setConsumer(alice, nil, nil)
    assert.same({ "authenticate", alice, nil }, calls[1])
    assert.is_true(headers["X-Anonymous-Consumer"])
    assert.is_false(headers["X-Credential-Identifier"])
  end)

  it("clearConsumerHeaders removes every identity header a client could send", function()
    auth.clearConsumerHeaders()
    assert.same({
      ["X-Consumer-ID"] = false,
      ["X-Consumer-Custom-ID"] = false,
      ["X-Consumer-Username"] = false,
      ["X-Credential-Identifier"] = false,
      ["X-Anonymous-Consumer"] = false,
    }, headers)
    assert.equal(0, #calls)
  end)

  it("the anonymous consumer is looked up once per ttl and config version", function()
    consumers["anon"] = { id = "c-9", username = "anon" }
    local slot = auth.newAnonymousSlot()
    local function lookups()
      local n = 0
      for _, c in ipairs(calls) do if c[1] == "load_consumer" then n = n + 1 end end
      return n
    end
    assert.is_true(auth.setAnonymous(slot, "anon", 10, 1))
    assert.same({ "load_consumer", "anon", true }, calls[1])
    assert.is_true(headers["X-Anonymous-Consumer"])
    assert.equal("c-9", headers["X-Consumer-ID"])
    auth.setAnonymous(slot, "anon", 10, 1)
    assert.equal(1, lookups())
    now = now + 10 -- the ttl is over
    auth.setAnonymous(slot, "anon", 10, 1)
    assert.equal(2, lookups())
    auth.setAnonymous(slot, "anon", 10, 2) -- a new config
    assert.equal(3, lookups())
    assert.is_nil(exited)
  end)

  it("an anonymous consumer the config does not have is Kong's 500, logged, and sets nothing", function()
    local slot = auth.newAnonymousSlot()
    assert.is_false(auth.setAnonymous(slot, "ghost", 10, 1))
    assert.same({ 500, { message = "An unexpected error occurred" } }, exited)
    assert.matches("anonymous consumer 'ghost' is configured but not found", logged[1], 1, true)
    assert.is_nil(next(headers))
    assert.is_nil(slot.consumer)
  end)
end)

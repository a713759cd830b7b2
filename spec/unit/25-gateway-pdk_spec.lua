-- The local gateway's path normalization: what Kong's router and kong.request.get_path
-- see (kong.tools.uri.normalize with merge_slashes), checked without nginx.
local saved_ngx = _G.ngx

describe("krs.gateway.pdk normalizePath", function()
  local normalize

  setup(function()
    -- Loading the PDK needs only nginx's log level constants.
    _G.ngx = saved_ngx or { ERR = 4, WARN = 5, NOTICE = 6, INFO = 7, DEBUG = 8 }
    package.loaded["krs.gateway.pdk"] = nil
    normalize = require("krs.gateway.pdk").normalizePath
  end)

  teardown(function()
    package.loaded["krs.gateway.pdk"] = nil
    _G.ngx = saved_ngx
  end)

  it("keeps escapes of reserved characters, upper-cased", function()
    assert.equal("/a%2Fb", normalize("/a%2Fb"))
    assert.equal("/a%2Fb", normalize("/a%2fb"))
    assert.equal("/100%25", normalize("/100%25"))
    assert.equal("/%3A%40%21%24%26%27%28%29%2A%2B%2C%3B%3D%3F%23%5B%5D",
      normalize("/%3a%40%21%24%26%27%28%29%2a%2b%2c%3b%3d%3f%23%5b%5d"))
  end)

  it("decodes escapes of unreserved and other characters", function()
    assert.equal("/ABc~", normalize("/%41%42c%7E"))
    assert.equal("/A-_.~", normalize("/%41%2D%5F%2E%7E"))
    assert.equal("/a b", normalize("/a%20b"))
    assert.equal("/caf\195\169", normalize("/caf%C3%A9"))
  end)

  it("resolves dot segments, also escaped ones, never above the root", function()
    assert.equal("/b", normalize("/a/../b"))
    assert.equal("/a/b", normalize("/a/./b"))
    assert.equal("/x", normalize("/strip/%2e%2e/x"))
    assert.equal("/a", normalize("/../a"))
    assert.equal("/", normalize("/a/.."))
    assert.equal("/a/", normalize("/a/."))
    assert.equal("/a/", normalize("/a/b/.."))
  end)

  it("merges repeated slashes and keeps a trailing one", function()
    assert.equal("/x/y", normalize("//x//y"))
    assert.equal("/a/", normalize("/a//"))
    assert.equal("/a/", normalize("/a/"))
  end)

  it("leaves plain paths as they are", function()
    assert.equal("/", normalize("/"))
    assert.equal("", normalize(""))
    assert.equal("/strip/a;b=c", normalize("/strip/a;b=c"))
    assert.equal("/a#frag", normalize("/a#frag"))
  end)
end)

-- kong.db.consumers and kong.client.load_consumer of the local gateway, with Kong's
-- contracts (kong/db/dao/init.lua, kong/db/errors.lua, kong/pdk/client.lua), over a
-- consumer index as the runtime gives it.
describe("krs.gateway.pdk kong.db.consumers and load_consumer", function()
  local pdk, phase
  local ALICE = { id = "9f1c2d3e-4b5a-4c6d-8e7f-a1b2c3d4e5f6", username = "alice" }
  -- a username that looks like another consumer's id
  local TRICKY = { id = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", username = ALICE.id }

  setup(function()
    _G.ngx = {
      ERR = 4, WARN = 5, NOTICE = 6, INFO = 7, DEBUG = 8,
      get_phase = function() return phase end,
    }
    package.loaded["krs.gateway.pdk"] = nil
    local m = require("krs.gateway.pdk")
    pdk = m.pdk
    m.setConsumerIndex({
      byId = function(id)
        for _, c in ipairs({ ALICE, TRICKY }) do if c.id == id then return c end end
      end,
      byUsername = function(name)
        for _, c in ipairs({ ALICE, TRICKY }) do if c.username == name then return c end end
      end,
    })
  end)

  teardown(function()
    package.loaded["krs.gateway.pdk"] = nil
    _G.ngx = saved_ngx
  end)

  before_each(function() phase = "content" end)

  it("select takes a primary key table: found, not found (nil and no error)", function()
    local consumers = pdk.db.consumers
    local found, err, err_t = consumers:select({ id = ALICE.id })
    assert.equal(ALICE, found)
    assert.is_nil(err)
    assert.is_nil(err_t)
    found, err, err_t = consumers:select({ id = "00000000-0000-4000-8000-000000000000" })
    assert.is_nil(found)
    assert.is_nil(err)
    assert.is_nil(err_t)
  end)

  it("select: an invalid primary key is Kong's error triple, a key that is not a table raises", function()
    local consumers = pdk.db.consumers
    local found, err, err_t = consumers:select({ id = "alice" })
    assert.is_nil(found)
    assert.equal([[[off] invalid primary key: '{id="expected a valid UUID"}']], err)
    assert.equal(1, err_t.code)
    assert.equal("invalid primary key", err_t.name)
    assert.equal("off", err_t.strategy)
    assert.same({ id = "expected a valid UUID" }, err_t.fields)
    assert.equal(err, tostring(err_t))
    _, _, err_t = consumers:select({ username = "alice" })
    assert.same({ id = "missing primary key", username = "not a primary key" }, err_t.fields)
    assert.has_error(function() consumers:select(ALICE.id) end, "primary_key must be a table")
  end)

  it("select_by_username matches usernames only, never ids", function()
    local consumers = pdk.db.consumers
    assert.equal(ALICE, (consumers:select_by_username("alice")))
    assert.equal(TRICKY, (consumers:select_by_username(ALICE.id)))
    local found, err, err_t = consumers:select_by_username("bob")
    assert.is_nil(found)
    assert.is_nil(err)
    assert.is_nil(err_t)
    found, err, err_t = consumers:select_by_username("")
    assert.is_nil(found)
    assert.equal("[off] length must be at least 1", err)
    assert.equal(10, err_t.code)
    assert.equal("invalid unique username", err_t.name)
    assert.has_error(function() consumers:select_by_username(42) end, "username must be a string")
  end)

  it("works in every phase, the Admin API's (content) included", function()
    for _, p in ipairs({ "content", "timer", "init_worker", "access", "log" }) do
      phase = p
      assert.equal(ALICE, (pdk.db.consumers:select({ id = ALICE.id })))
    end
  end)

  it("load_consumer raises outside access..log, as Kong's (so an Admin API endpoint must not use it)", function()
    for _, p in ipairs({ "content", "timer", "init_worker", "rewrite" }) do
      phase = p
      assert.has_error(function() pdk.client.load_consumer(ALICE.id) end, "function cannot be called in " .. p .. " phase")
    end
  end)

  it("load_consumer in request phases: by id, then by username when asked; a non-uuid id raises unless by username", function()
    for _, p in ipairs({ "access", "header_filter", "body_filter", "log" }) do
      phase = p
      assert.equal(ALICE, (pdk.client.load_consumer(ALICE.id)))
    end
    phase = "access"
    assert.equal(ALICE, (pdk.client.load_consumer("alice", true)))
    assert.is_nil((pdk.client.load_consumer("00000000-0000-4000-8000-000000000000")))
    assert.is_nil((pdk.client.load_consumer("bob", true)))
    -- an id first: the consumer whose id it is wins over the one it is the username of
    assert.equal(ALICE, (pdk.client.load_consumer(ALICE.id, true)))
    assert.has_error(function() pdk.client.load_consumer("alice") end, "cannot load a consumer with an id that is not a uuid")
    assert.has_error(function() pdk.client.load_consumer(nil, true) end, "consumer_id must be a string")
  end)
end)

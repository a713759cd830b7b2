-- redis-key-auth: its schema (through the local gateway's Kong validator) and its pure
-- helpers (key and id formats, the WWW-Authenticate value, removing a query argument).
local util = require("kong.plugins.redis-key-auth.util")

local plugin_schema = require("plugin_schema")("redis-key-auth")
local schema, validate, ok = plugin_schema.schema, plugin_schema.validate, plugin_schema.ok
local errors_of, error_text = plugin_schema.errors_of, plugin_schema.error_text

-- ngx.unescape_uri's job, for plain LuaJIT: %XX decoding.
local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

describe("redis-key-auth schema", function()
  it("fills Kong key-auth's defaults, fail-closed fault tolerance and the cache TTLs", function()
    local c = ok({})
    assert.same({ "apikey", "x-api-key" }, c.key_names)
    assert.is_true(c.key_in_header)
    assert.is_true(c.key_in_query)
    assert.is_false(c.key_in_body)
    assert.is_false(c.hide_credentials)
    assert.is_true(c.run_on_preflight)
    assert.is_nil(c.anonymous)
    assert.equal("kong", c.realm)
    assert.equal(10, c.cache_ttl)
    assert.equal(1, c.negative_cache_ttl)
    assert.is_false(c.fault_tolerant)
    assert.equal("127.0.0.1", c.redis.host)
    assert.equal(6379, c.redis.port)
  end)

  it("every config field has a description", function()
    local config
    for _, f in ipairs(schema().fields) do
      if f.config then config = f.config end
    end
    for _, f in ipairs(config.fields) do
      local name, def = next(f)
      assert.is_string(def.description, name)
    end
  end)

  it("refuses bad key names, an empty list, negative or huge TTLs", function()
    assert.matches("config.key_names: length must be at least 1", error_text({ key_names = {} }), 1, true)
    assert.matches("bad header name", error_text({ key_names = { "api key" } }), 1, true)
    assert.matches("config.cache_ttl", error_text({ cache_ttl = -1 }), 1, true)
    assert.matches("config.negative_cache_ttl", error_text({ negative_cache_ttl = 86401 }), 1, true)
    assert.matches("config.anonymous", error_text({ anonymous = "" }), 1, true)
  end)

  it("needs at least one place to look for the key", function()
    assert.matches("at least one of key_in_header, key_in_query and key_in_body must be true",
      error_text({ key_in_header = false, key_in_query = false }), 1, true)
    assert.is_true(ok({ key_in_header = false, key_in_query = false, key_in_body = true }).key_in_body)
  end)

  it("cannot be scoped to a consumer (it is what identifies consumers)", function()
    assert.is_string(error_text({}, { consumer = { id = "8a6a4f9e-1d1b-4a53-9d07-0a1f2b3c4d01" } }))
  end)
end)

describe("redis-key-auth helpers", function()
  it("wellFormed: exactly 43 base64url characters", function()
    assert.is_true(util.wellFormed(("A"):rep(43)))
    assert.is_true(util.wellFormed("-exjxdTQzfUwzAPI-I88UdbUN2vybPf3zt0hgNfjk4g"))
    assert.is_false(util.wellFormed(("A"):rep(42)))
    assert.is_false(util.wellFormed(("A"):rep(44)))
    assert.is_false(util.wellFormed(("A"):rep(42) .. "\n"))
    assert.is_false(util.wellFormed(("A"):rep(42) .. "="))
    assert.is_false(util.wellFormed(("{"):rep(43)))
    assert.is_false(util.wellFormed(("é"):rep(21) .. "A"))
    assert.is_false(util.wellFormed(""))
  end)

  it("isId: uuids only, any case", function()
    assert.is_true(util.isId("8a6a4f9e-1d1b-4a53-9d07-0a1f2b3c4d01"))
    assert.is_true(util.isId("8A6A4F9E-1D1B-4A53-9D07-0A1F2B3C4D01"))
    assert.is_false(util.isId("8a6a4f9e-1d1b-4a53-9d07-0a1f2b3c4d0"))
    assert.is_false(util.isId("8a6a4f9e1d1b4a539d070a1f2b3c4d01xxxx"))
    assert.is_false(util.isId(("A"):rep(43)))
    assert.is_false(util.isId("8a6a4f9e-1d1b-4a53-9d07-0a1f2b3c4d01\n"))
  end)

  it("wwwAuthenticate quotes the realm", function()
    assert.equal('Key realm="kong"', util.wwwAuthenticate("kong"))
    assert.equal('Key realm="a \\"b\\" \\\\ c"', util.wwwAuthenticate('a "b" \\ c'))
  end)

  it("removeQueryArg drops every occurrence of the decoded name, keeps the rest as sent", function()
    local rm = function(q, n) return util.removeQueryArg(q, n, unescape) end
    assert.equal("a=1&b=2", rm("a=1&apikey=K&b=2", "apikey"))
    assert.equal("a=1", rm("apikey=K&a=1&apikey=L", "apikey"))
    assert.equal("", rm("apikey=K", "apikey"))
    assert.equal("a=1", rm("apikey&a=1", "apikey"))
    assert.equal("a=%20x&b=y+z", rm("a=%20x&%61pikey=K&b=y+z", "apikey"))
    assert.equal("a=1&b=2", rm("a=1&&apikey=&b=2", "apikey"))
    assert.equal("x-api-key=K", rm("x-api-key=K", "apikey"))
    assert.equal("", rm("my+key=1&my%20key=2", "my key"))
    assert.equal("my+key=1", rm("my+key=1&my%2Bkey=2", "my+key"))
  end)
end)

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
    assert.same({ "apikey" }, c.key_names)
    assert.is_true(c.key_in_header)
    assert.is_true(c.key_in_query)
    assert.is_false(c.key_in_body)
    assert.is_false(c.hide_credentials)
    assert.is_true(c.run_on_preflight)
    assert.is_nil(c.anonymous)
    -- Kong's realm is optional, without a default
    assert.is_nil(c.realm)
    assert.equal("my realm", ok({ realm = "my realm" }).realm)
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

  it("wwwAuthenticate: bare Key without a realm, the realm quoted with one", function()
    assert.equal("Key", util.wwwAuthenticate(nil))
    assert.equal('Key realm="kong"', util.wwwAuthenticate("kong"))
    assert.equal('Key realm=""', util.wwwAuthenticate(""))
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

-- ---------------------------------------------------------------- the handler, on a stubbed PDK

-- The handler and its worker cache, loaded on a stand-in of what Kong provides: a
-- settable clock (ngx.now), Redis as a table (or down), Kong's load_consumer with its
-- own argument checks. Real: resty.lrucache, cjson, the plugin's modules.
describe("redis-key-auth handler (stubbed PDK)", function()
  local UUID_ALICE = "8a6a4f9e-1d1b-4a53-9d07-0a1f2b3c4d01"
  local KEY = ("k"):rep(43)
  local STUBBED = {
    "kong.plugins.redis-key-auth.handler", "kong.plugins.redis-key-auth.cache", "kong.plugins.redis-key-auth.store",
    "krs.redis.client", "krs.redis.fault", "krs.redis.subscriber", "krs.redis.pools", "resty.lrucache", "ngx.semaphore", "resty.sha256", "resty.random", "resty.string",
  }
  local saved_loaded, saved_ngx, saved_kong = {}, nil, nil
  local handler, cache
  local clock, records, redis_down, req, out, sleeps
  local consumers = { { id = UUID_ALICE, username = "alice" } }

  local function is_uuid(s)
    return s:find("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$") ~= nil
  end

  setup(function()
    for _, m in ipairs(STUBBED) do saved_loaded[m] = package.loaded[m]; package.loaded[m] = nil end
    saved_ngx, saved_kong = _G.ngx, _G.kong
    _G.ngx = {
      null = setmetatable({}, { __tostring = function() return "null" end }),
      ERR = 4, WARN = 5, INFO = 7,
      now = function() return clock end,
      time = function() return math.floor(clock) end,
      log = function() end,
      sleep = function(s) sleeps[#sleeps + 1] = s; clock = clock + s end,
      get_phase = function() return "access" end,
      worker = { exiting = function() return false end },
      -- the subscriber is only run where a test asks for it
      timer = { at = function(_, fn, state) out.timer = { fn = fn, state = state }; return true end },
      unescape_uri = function(s) return s end,
      encode_args = function(t)
        local parts = {}
        for k, v in pairs(t) do parts[#parts + 1] = k .. "=" .. v end
        table.sort(parts)
        return table.concat(parts, "&")
      end,
    }
    _G.kong = {
      ctx = { shared = {}, plugin = {} },
      request = {
        get_method = function() return "GET" end,
        -- as Kong's: "truncated" when the request has more headers than it returns
        get_headers = function() return req.headers or {}, req.truncated end,
        get_query = function() return req.query or {} end,
        get_raw_query = function() return "" end,
        get_body = function()
          if req.body == nil then return nil, "no body" end
          return req.body, nil, req.mime
        end,
      },
      service = { request = {
        set_header = function(name, value) out.upstream[name:lower()] = tostring(value) end,
        clear_header = function(name) out.upstream[name:lower()] = nil; out.cleared[#out.cleared + 1] = name end,
        set_raw_query = function(q) out.raw_query = q end,
        set_raw_body = function(b) out.raw_body = b end,
      } },
      client = {
        authenticate = function(consumer, credential) out.consumer, out.credential = consumer, credential end,
        get_credential = function() return nil end,
        -- Kong's checks (kong/pdk/client.lua), then a lookup in `consumers`
        load_consumer = function(id, by_username)
          if type(id) ~= "string" then error("consumer_id must be a string", 2) end
          if not is_uuid(id) and not by_username then error("cannot load a consumer with an id that is not a uuid", 2) end
          for _, c in ipairs(consumers) do
            if c.id == id or (by_username and c.username == id) then return c end
          end
          return nil
        end,
      },
      response = {
        -- Kong's PDK (kong/pdk/response.lua) writes the negotiated Content-Type into the
        -- headers table it is given
        error = function(status, message, headers)
          headers = headers or {}
          if headers["Content-Type"] == nil then
            local accept = (req.headers or {}).accept or ""
            headers["Content-Type"] = accept:find("text/plain", 1, true) and "text/plain; charset=utf-8" or "application/json; charset=utf-8"
          end
          out.status, out.message, out.headers = status, message, {}
          for k, v in pairs(headers) do out.headers[k] = v end
        end,
        exit = function(status, body) out.status, out.body = status, body end,
      },
      log = { info = function() end, err = function() end, warn = function() end, debug = function() end },
    }
    package.loaded["ngx.semaphore"] = {
      new = function() return { post = function() end, wait = function() return true end } end,
    }
    -- a key "hashes" to itself: the record of KEY is records[KEY]
    package.loaded["resty.sha256"] = {
      new = function()
        return { reset = function(self) self.s = "" end, update = function(self, s) self.s = self.s .. s end, final = function(self) return self.s end }
      end,
    }
    package.loaded["resty.string"] = { to_hex = function(s) return s end }
    package.loaded["resty.random"] = { bytes = function(n) return ("x"):rep(n) end }
    package.loaded["krs.redis.client"] = {
      poolName = function(conf) return conf.host .. ":" .. conf.port end,
      command = function(_, cmd, key)
        assert.equal("hgetall", cmd)
        if redis_down then return nil, "connection refused" end
        return records[key:match(":key:(.*)$")] or {}
      end,
    }
    handler = require("kong.plugins.redis-key-auth.handler")
    cache = require("kong.plugins.redis-key-auth.cache")
  end)

  teardown(function()
    for _, m in ipairs(STUBBED) do package.loaded[m] = saved_loaded[m] end
    _G.ngx, _G.kong = saved_ngx, saved_kong
  end)

  local port = 10000
  -- A config of its own (its own Redis pool name, so its own worker cache).
  local function conf(fields)
    port = port + 1
    fields.redis = { port = port }
    return require("plugin_schema")("redis-key-auth").ok(fields)
  end

  local function record(consumer_id)
    return { "id", "0b6f0c1e-5a8e-4f57-9a53-2f7c1b0d9e41", "consumer_id", consumer_id, "consumer_username", "alice", "created_at", "1", "expires_at", "0" }
  end

  -- One request through access(); what it did is in `out`.
  local function access(c, request)
    req = request or { headers = { apikey = KEY } }
    out.status, out.message, out.body, out.consumer, out.raw_body, out.headers = nil, nil, nil, nil, nil, nil
    out.upstream, out.cleared = {}, {}
    handler.access(handler, c)
    return out
  end

  before_each(function()
    clock, records, redis_down, sleeps, out = 1000, {}, false, {}, { upstream = {} }
  end)

  it("authenticates a key pinned to a consumer uuid (the stubs work)", function()
    records[KEY] = record(UUID_ALICE)
    local o = access(conf({}))
    assert.is_nil(o.status)
    assert.equal("alice", o.consumer.username)
    assert.equal(UUID_ALICE, o.upstream["x-consumer-id"])
  end)

  it("identity headers the client did not send are not cleared; those it sent are; all are when its headers were truncated", function()
    records[KEY] = record(UUID_ALICE)
    local c = conf({})
    assert.same({}, access(c).cleared)
    local o = access(c, { headers = { apikey = KEY, ["x-consumer-custom-id"] = "spoofed", ["x-anonymous-consumer"] = "true" } })
    assert.same({ "X-Consumer-Custom-ID", "X-Anonymous-Consumer" }, o.cleared)
    assert.is_nil(o.upstream["x-consumer-custom-id"])
    -- a truncated table cannot tell that a header is absent: it may be past the limit
    o = access(c, { headers = { apikey = KEY }, truncated = "truncated" })
    assert.same({ "X-Consumer-Custom-ID", "X-Anonymous-Consumer" }, o.cleared)
    assert.equal(UUID_ALICE, o.upstream["x-consumer-id"])
  end)

  it("a key stored with a consumer_id that is not a uuid matches no consumer: 401, load_consumer never sees it", function()
    records[KEY] = record("alice")
    local ok, err = pcall(access, conf({}))
    assert.is_true(ok, tostring(err))
    assert.equal(401, out.status)
    assert.equal("Unauthorized", out.message)
    assert.is_nil(out.consumer)
  end)

  it("a new headers table for every 401: one text/plain answer does not make the next ones text/plain", function()
    local c = conf({ realm = "r" })
    local o = access(c, { headers = { accept = "text/plain" } })
    assert.equal(401, o.status)
    assert.equal("text/plain; charset=utf-8", o.headers["Content-Type"])
    o = access(c, { headers = { accept = "application/json" } })
    assert.equal(401, o.status)
    assert.same({ ["Content-Type"] = "application/json; charset=utf-8", ["WWW-Authenticate"] = 'Key realm="r"' }, o.headers)
    o = access(conf({}), { headers = {} })
    assert.same({ ["Content-Type"] = "application/json; charset=utf-8", ["WWW-Authenticate"] = "Key" }, o.headers)
  end)

  it("negative answers have a cache of their own: 12,000 unknown keys do not evict a valid one", function()
    records[KEY] = record(UUID_ALICE)
    local c = conf({ cache_ttl = 60, negative_cache_ttl = 60 })
    assert.equal("alice", access(c).consumer.username)
    for i = 1, 12000 do
      local junk = string.format("%043d", i)
      assert.equal(401, access(c, { headers = { apikey = junk } }).status)
    end
    redis_down = true
    local o = access(c)
    assert.is_nil(o.status)
    assert.equal("alice", o.consumer.username)
  end)

  describe("hide_credentials with key_in_body", function()
    local function body_conf()
      return conf({ key_in_body = true, key_in_header = false, key_in_query = false, hide_credentials = true })
    end

    it("re-encodes a form or JSON body without the key", function()
      records[KEY] = record(UUID_ALICE)
      local c = body_conf()
      local o = access(c, { body = { apikey = KEY, note = "hi" }, mime = "application/x-www-form-urlencoded" })
      assert.equal("alice", o.consumer.username)
      assert.equal("note=hi", o.raw_body)
      o = access(c, { body = { apikey = KEY, note = "hi" }, mime = "application/json" })
      assert.same({ note = "hi" }, require("cjson.safe").decode(o.raw_body))
    end)

    it("leaves a multipart body (Kong parses those) as it was sent", function()
      records[KEY] = record(UUID_ALICE)
      local o = access(body_conf(), { body = { apikey = KEY, note = "hi" }, mime = "multipart/form-data" })
      assert.equal("alice", o.consumer.username)
      assert.is_nil(o.raw_body)
    end)
  end)

  describe("Redis down: a key cached as valid keeps working for a bounded time", function()
    it("fault_tolerant false: up to cache_ttl + STALE_GRACE after Redis last confirmed it, then 500", function()
      records[KEY] = record(UUID_ALICE)
      local c = conf({ cache_ttl = 1 })
      assert.equal("alice", access(c).consumer.username)
      -- revoked, the invalidation missed; then Redis goes away
      records[KEY] = nil
      redis_down = true
      clock = 1000 + 1 + util.STALE_GRACE - 0.1
      local o = access(c)
      assert.is_nil(o.status)
      assert.equal("alice", o.consumer.username)
      clock = 1000 + 1 + util.STALE_GRACE + 0.1
      o = access(c)
      assert.equal(500, o.status)
      assert.is_nil(o.consumer)
      clock = 1000 + 3600
      assert.equal(500, access(c).status)
    end)

    it("fault_tolerant true: up to cache_ttl + STALE_GRACE_FAULT_TOLERANT, then unauthenticated", function()
      records[KEY] = record(UUID_ALICE)
      local c = conf({ cache_ttl = 1, fault_tolerant = true })
      assert.equal("alice", access(c).consumer.username)
      redis_down = true
      clock = 1000 + 1 + util.STALE_GRACE_FAULT_TOLERANT - 0.1
      assert.equal("alice", access(c).consumer.username)
      clock = 1000 + 1 + util.STALE_GRACE_FAULT_TOLERANT + 0.1
      local o = access(c)
      assert.is_nil(o.status)
      assert.is_nil(o.consumer)
      assert.is_nil(o.upstream["x-consumer-id"])
    end)

    it("staleUsable: the bound is cache_ttl plus the grace of the fault tolerance mode", function()
      assert.is_true(util.staleUsable(10 + util.STALE_GRACE, 10, false))
      assert.is_false(util.staleUsable(10 + util.STALE_GRACE + 0.001, 10, false))
      assert.is_true(util.staleUsable(10 + util.STALE_GRACE_FAULT_TOLERANT, 10, true))
      assert.is_false(util.staleUsable(10 + util.STALE_GRACE_FAULT_TOLERANT + 0.001, 10, true))
      assert.is_true(util.STALE_GRACE < util.STALE_GRACE_FAULT_TOLERANT)
    end)
  end)

  -- The subscriber's reconnects and backoff: spec/unit/38-redis-subscriber_spec.lua.

  -- Last: once configure has run, it decides which pools get a subscriber (the tests above
  -- count on a subscriber starting with the first request).
  describe("a config change during a Redis outage", function()
    after_each(function() consumers[1] = { id = UUID_ALICE, username = "alice" } end)

    it("keeps the cached keys of a Redis still in use: they keep authenticating", function()
      records[KEY] = record(UUID_ALICE)
      local c = conf({ cache_ttl = 30 })
      assert.equal("alice", access(c).consumer.username)
      redis_down = true
      handler.configure(handler, { c, conf({}) })
      for _ = 1, 30 do
        local o = access(c)
        assert.is_nil(o.status)
        assert.equal("alice", o.consumer.username)
      end
      -- the same Redis under a new config table (Kong builds new ones on every change)
      local same_redis = require("plugin_schema")("redis-key-auth").ok({ cache_ttl = 30, redis = { port = c.redis.port } })
      handler.configure(handler, { same_redis })
      assert.equal("alice", access(same_redis).consumer.username)
    end)

    it("looks the consumer up again: a consumer the new config removed loses its cached keys, Redis or not", function()
      records[KEY] = record(UUID_ALICE)
      local c = conf({ cache_ttl = 30 })
      assert.equal("alice", access(c).consumer.username)
      redis_down = true
      consumers[1] = { id = UUID_ALICE, username = "alice", custom_id = "renamed" }
      handler.configure(handler, { c })
      local o = access(c)
      assert.equal("renamed", o.upstream["x-consumer-custom-id"])
      consumers[1] = nil
      handler.configure(handler, { c })
      o = access(c)
      assert.equal(401, o.status)
      assert.is_nil(o.consumer)
      -- back in the config, Redis back: the key works again
      consumers[1] = { id = UUID_ALICE, username = "alice" }
      handler.configure(handler, { c })
      redis_down = false
      assert.equal("alice", access(c).consumer.username)
    end)

    it("drops the entries of a Redis no config uses any more (an instance removed or moved to another Redis)", function()
      records[KEY] = record(UUID_ALICE)
      local c = conf({ cache_ttl = 30 })
      assert.equal("alice", access(c).consumer.username)
      redis_down = true
      handler.configure(handler, { conf({}) })
      -- a request still running with the previous config finds an empty cache
      assert.equal(500, access(c).status)
    end)
  end)
end)

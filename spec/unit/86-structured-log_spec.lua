-- structured-log: its schema (through the local gateway's Kong validator), redaction,
-- UTF-8 repair of encoded lines, the krs object and custom fields, on plain LuaJIT.
local saved_ngx = rawget(_G, "ngx")

local function unescape_uri(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

describe("structured-log", function()
  local redact, line, credentials, plugin_schema

  setup(function()
    _G.ngx = setmetatable({ unescape_uri = unescape_uri, ctx = {}, get_phase = function() return "timer" end }, { __index = saved_ngx })
    for _, m in ipairs({ "redact", "line", "credentials" }) do package.loaded["kong.plugins.structured-log." .. m] = nil end
    redact = require("kong.plugins.structured-log.redact")
    line = require("kong.plugins.structured-log.line")
    credentials = require("kong.plugins.structured-log.credentials")
    plugin_schema = require("plugin_schema")("structured-log")
  end)

  teardown(function()
    _G.ngx = saved_ngx
  end)

  describe("schema", function()
    it("defaults: a file sink needs a path; Kong's secret headers and common token arguments are redacted", function()
      local c = plugin_schema.ok({ path = "/tmp/x.log" })
      assert.equal("file", c.sink)
      assert.same({ "authorization", "proxy-authorization", "cookie", "set-cookie", "apikey", "x-api-key" }, c.redact_headers)
      assert.same({ "apikey", "api_key", "access_token", "jwt", "token" }, c.redact_query)
      assert.equal(1, c.sample_rate)
      assert.equal(10000, c.max_queue)
      assert.equal("requests", c.stream_key)
      assert.matches("path", plugin_schema.error_text({ sink = "file" }))
      plugin_schema.ok({ sink = "redis-stream" })
      plugin_schema.ok({ sink = "stdout" })
    end)

    it("refuses an unknown sink, a sample rate past 1, a path with shell characters, a stream name with a brace", function()
      assert.matches("sink", plugin_schema.error_text({ sink = "syslog" }))
      assert.matches("sample_rate", plugin_schema.error_text({ path = "/tmp/x", sample_rate = 1.5 }))
      assert.matches("path", plugin_schema.error_text({ path = "/tmp/$(id).log" }))
      assert.matches("stream_key", plugin_schema.error_text({ sink = "redis-stream", stream_key = "a}b" }))
    end)

    it("a custom field takes exactly one source", function()
      plugin_schema.ok({ path = "/tmp/x", custom_fields = { { name = "env", value = "prod" }, { name = "ua", request_header = "user-agent" } } })
      assert.matches("exactly one of", plugin_schema.error_text({ path = "/tmp/x", custom_fields = { { name = "env" } } }))
      assert.matches("exactly one of", plugin_schema.error_text({ path = "/tmp/x", custom_fields = { { name = "env", value = "a", request_header = "b" } } }))
    end)
  end)

  describe("redaction", function()
    it("replaces header values by name, case-insensitively, arrays included; never a hash", function()
      local names = redact.nameSet({ "Authorization", "x-api-key" })
      local headers = { authorization = "Bearer secret", ["X-Api-Key"] = { "k1", "k2" }, accept = "*/*" }
      redact.redactTable(headers, names)
      assert.same({ authorization = "[REDACTED]", ["X-Api-Key"] = "[REDACTED]", accept = "*/*" }, headers)
    end)

    it("redacts named query arguments in a URI, decoded names too, the rest as it was", function()
      local names = redact.nameSet({ "apikey", "access_token" })
      assert.equal("/p?apikey=[REDACTED]&x=1", redact.redactUri("/p?apikey=s3cret&x=1", names))
      assert.equal("/p?x=1&api%6Bey=[REDACTED]", redact.redactUri("/p?x=1&api%6Bey=s3cret", names))
      assert.equal("/p?APIKEY=[REDACTED]", redact.redactUri("/p?APIKEY=s3cret", names))
      assert.equal("/p?access_token=[REDACTED]", redact.redactUri("/p?access_token", names))
      assert.equal("/p?x=1", redact.redactUri("/p?x=1", names))
      assert.equal("/p", redact.redactUri("/p", names))
    end)

    it("keeps no lowercased copy of a client's overlong header name, and still redacts by it", function()
      local long = string.rep("X", 5000)
      local names = redact.nameSet({ long })
      local kept = redact.loweredKept()
      local headers = { [long] = "secret" }
      assert.equal(1, redact.redactTable(headers, names))
      assert.same({ [long] = "[REDACTED]" }, headers)
      assert.equal(kept, redact.loweredKept())
      redact.redactTable({ ["X-Short-" .. kept] = "v" }, names)
      assert.equal(kept + 1, redact.loweredKept())
    end)

    it("redacts a whole entry: request headers and query, URIs, response headers", function()
      local names = { headers = redact.nameSet({ "cookie", "set-cookie" }), query = redact.nameSet({ "token" }) }
      local entry = {
        request = { headers = { cookie = "s=1" }, querystring = { token = "t", a = "b" }, uri = "/x?token=t&a=b", url = "http://h:80/x?token=t&a=b" },
        response = { headers = { ["set-cookie"] = "s=2" } },
        upstream_uri = "/y?token=t",
      }
      line.redactEntry(entry, names)
      assert.equal("[REDACTED]", entry.request.headers.cookie)
      assert.same({ token = "[REDACTED]", a = "b" }, entry.request.querystring)
      assert.equal("/x?token=[REDACTED]&a=b", entry.request.uri)
      assert.equal("http://h:80/x?token=[REDACTED]&a=b", entry.request.url)
      assert.equal("[REDACTED]", entry.response.headers["set-cookie"])
      assert.equal("/y?token=[REDACTED]", entry.upstream_uri)
    end)

    it("redacts the URIs even when the querystring table lacks the argument (past get_uri_args' 100)", function()
      local names = { headers = redact.nameSet({}), query = redact.nameSet({ "apikey" }) }
      local entry = {
        request = { headers = {}, querystring = { a = "1" }, uri = "/x?a=1&apikey=s3cret", url = "http://h:80/x?a=1&apikey=s3cret" },
        upstream_uri = "/x?a=1&apikey=s3cret",
      }
      line.redactEntry(entry, names)
      assert.equal("/x?a=1&apikey=[REDACTED]", entry.request.uri)
      assert.equal("http://h:80/x?a=1&apikey=[REDACTED]", entry.request.url)
    end)

    it("adds the names the route's auth plugins read (key-auth, jwt), Kong's and the suite's", function()
      local base = { headers = redact.nameSet({ "authorization" }), query = redact.nameSet({}) }
      ngx.ctx.KRS_SELECTED = nil
      assert.equal(base, credentials.forRequest(base, { "authorization" }, {}))
      ngx.ctx.KRS_SELECTED = {
        { plugin = { name = "redis-key-auth" }, entity = { config = { key_names = { "X-Tenant-Key" } } } },
        { plugin = { name = "jwt" }, entity = { config = { header_names = { "x-jwt" }, uri_param_names = { "jwt" }, cookie_names = { "sess" } } } },
        { plugin = { name = "redis-rate-limit" }, entity = { config = { minute = 1 } } },
      }
      local r = credentials.forRequest(base, { "authorization" }, {})
      ngx.ctx.KRS_SELECTED = nil
      for _, h in ipairs({ "authorization", "x-tenant-key", "x-jwt", "cookie" }) do assert.is_true(r.headers[h], h) end
      assert.is_true(r.query["x-tenant-key"])
      assert.is_true(r.query["jwt"])
    end)

    it("adds the names the suite's auth plugins said they read in the request facts, without the local gateway's KRS_SELECTED (as in Kong)", function()
      local base = { headers = redact.nameSet({ "authorization" }), query = redact.nameSet({}) }
      local saved_kong, saved_phase = rawget(_G, "kong"), ngx.get_phase
      ngx.ctx.KRS_SELECTED = nil
      _G.kong = setmetatable({ ctx = { shared = { krs = { credential_names = {
        { plugin = "redis-key-auth", headers = { "X-Tenant-Key" }, query = { "x-tenant-key" }, cookies = false },
        { plugin = "redis-jwt", headers = { "x-jwt" }, query = {}, cookies = true },
      } } } } }, { __index = saved_kong })
      ngx.get_phase = function() return "log" end
      local ok, r = pcall(credentials.forRequest, base, { "authorization" }, {})
      _G.kong, ngx.get_phase = saved_kong, saved_phase
      assert.is_true(ok, tostring(r))
      for _, h in ipairs({ "authorization", "x-tenant-key", "x-jwt", "cookie" }) do assert.is_true(r.headers[h], h) end
      assert.is_true(r.query["x-tenant-key"])
    end)
  end)

  describe("UTF-8", function()
    it("leaves valid text alone and replaces each invalid byte by an escaped U+FFFD", function()
      assert.equal('{"a":"caf\195\169"}', redact.toUtf8('{"a":"caf\195\169"}'))
      assert.equal('{"a":"x\\ufffd\\ufffdy"}', redact.toUtf8('{"a":"x\255\254y"}'))
      -- A truncated sequence, an overlong "/" and a surrogate.
      assert.equal('"\\ufffd\\ufffd"', redact.toUtf8('"\226\130"'))
      assert.equal('"\\ufffd\\ufffd"', redact.toUtf8('"\192\175"'))
      assert.equal('"\\ufffd\\ufffd\\ufffd"', redact.toUtf8('"\237\160\128"'))
      assert.equal('"\240\159\152\128"', redact.toUtf8('"\240\159\152\128"'))
    end)
  end)

  describe("the line's encoder", function()
    local json, cjson
    setup(function()
      package.loaded["kong.plugins.structured-log.json"] = nil
      json = require("kong.plugins.structured-log.json")
      cjson = require("cjson.safe")
    end)

    it("writes what cjson reads back: objects, arrays, empty tables, integers in full, fractions, booleans", function()
      local value = { a = 1, b = { 1, 2, 3 }, c = {}, d = 1.5, e = 1796186182225, f = true, g = { h = { i = "x" } }, j = -3, k = "caf\195\169" }
      local text = assert(json.encode(value))
      assert.same(value, cjson.decode(text))
      assert.matches('"e":1796186182225', text, 1, true)
    end)

    it("escapes quotes, backslashes and control bytes, replaces invalid UTF-8: always one line of valid JSON", function()
      local nasty = 'a"b\\c\nd\re\0f\31g\255h\192\175i\237\160\128j\240\159\152\128'
      local text = assert(json.encode({ v = nasty, [nasty] = 1 }))
      assert.is_nil(text:find("\n", 1, true))
      local back = assert(cjson.decode(text))
      assert.equal('a"b\\c\nd\re\0f\31g\239\191\189h\239\191\189\239\191\189i\239\191\189\239\191\189\239\191\189j\240\159\152\128', back.v)
      -- The same string again (now known): the same text.
      assert.equal(text, (json.encode({ v = nasty, [nasty] = 1 })))
    end)

    it("NaN and infinities as null; keys that are numbers or booleans as strings; a sparse array as an object", function()
      local back = cjson.decode((assert(json.encode({ n = 0 / 0, i = math.huge, [2.5] = "x", [true] = "y", s = { [1] = "a", [3] = "c" } }))))
      assert.same({ n = cjson.null, i = cjson.null, ["2.5"] = "x", ["true"] = "y", s = { ["1"] = "a", ["3"] = "c" } }, back)
    end)

    it("keeps no encoded key for a client's overlong name (a header of nginx's buffer size), and still writes it", function()
      local long = string.rep("x", 5000) .. "\1"
      local kept = json.keysKept()
      local text = assert(json.encode({ [long] = 1 }))
      assert.same({ [long] = 1 }, cjson.decode(text))
      assert.equal(kept, json.keysKept())
      assert(json.encode({ ["short-" .. kept] = 1 }))
      assert.equal(kept + 1, json.keysKept())
    end)

    it("a function or a cycle: no text, and why", function()
      local text, err = json.encode({ f = function() end })
      assert.is_nil(text)
      assert.matches("function", err)
      local t = {}
      t.self = t
      text, err = json.encode(t)
      assert.is_nil(text)
      assert.matches("deeper", err)
    end)

    it("encodeObject: the head keys first, in order, then the rest, the last key at the end; the text stays in a buffer", function()
      local head = { "timestamp", "level", "event" }
      local is_head = { timestamp = true, level = true, event = true }
      local buf = assert(json.encodeObject({ z = 1, level = "info", timestamp = "t", request_id = "r" }, head, is_head, "request_id"))
      assert.equal('{"timestamp":"t","level":"info","z":1,"request_id":"r"}', buf:tostring())
      buf = assert(json.encodeObject({ request_id = "r" }, head, is_head, "request_id"))
      assert.equal('{"request_id":"r"}', buf:tostring())
      buf = assert(json.encodeObject({}, head, is_head, "request_id"))
      assert.equal("{}", buf:tostring())
    end)
  end)

  describe("open breakers for krs.breaker_open", function()
    it("names host:port/database of each open circuit, never the pool's credential hash", function()
      local saved = _G.ngx
      _G.ngx = setmetatable({ now = function() return 1000 end }, { __index = saved })
      package.loaded["krs.redis.breaker"] = nil
      local breaker = require("krs.redis.breaker")
      local secret_pool = "krs:10.0.0.5:6380:2:plain:0123456789abcdef"
      local closed_pool = "krs:127.0.0.1:6379:0:tlsv:redis.internal:-"
      for _ = 1, 3 do breaker.report(secret_pool, "slow", false) end
      breaker.report(closed_pool, "slow", false)
      local open = breaker.openEndpoints()
      package.loaded["krs.redis.breaker"] = nil
      _G.ngx = saved
      assert.same({ "10.0.0.5:6380/2" }, open)
    end)
  end)

  describe("the line", function()
    it("krs: the facts as recorded, times rounded, breakers and drops only when there are some", function()
      local facts = {
        redis = { round_trips = 2, time_ms = 1.23456, errors = 1 },
        redis_by_plugin = { ["redis-rate-limit"] = { round_trips = 2, time_ms = 1.23456, errors = 1 } },
        cache = { plugin = "redis-cache", status = "Hit" },
        auth = { plugin = "redis-key-auth", result = "unknown", reason = "Unauthorized" },
        errors = { { plugin = "redis-rate-limit", message = "redis unavailable" } },
      }
      local k = line.krsOf(facts, {}, 0)
      assert.same({ round_trips = 2, time_ms = 1.235, errors = 1 }, k.redis)
      assert.same({ ["redis-rate-limit"] = { round_trips = 2, time_ms = 1.235, errors = 1 } }, k.redis_by_plugin)
      assert.same(facts.cache, k.cache)
      assert.same(facts.auth, k.auth)
      assert.same(facts.errors, k.errors)
      assert.is_nil(k.breaker_open)
      assert.is_nil(k.log_dropped)
      local none = line.krsOf(nil, { "127.0.0.1:6379/0" }, 3)
      assert.same({ round_trips = 0, time_ms = 0, errors = 0 }, none.redis)
      assert.same({ "127.0.0.1:6379/0" }, none.breaker_open)
      assert.equal(3, none.log_dropped)
    end)

    it("level: error for a 5xx or a plugin error, warn for a 4xx", function()
      assert.equal("info", line.levelOf(200, nil))
      assert.equal("warn", line.levelOf(429, nil))
      assert.equal("error", line.levelOf(502, nil))
      assert.equal("error", line.levelOf(200, { errors = { { plugin = "p", message = "m" } } }))
    end)

    it("custom fields: static values and header values, redacted headers stay redacted", function()
      local names = { headers = redact.nameSet({ "authorization" }), query = redact.nameSet({}) }
      local entry = {}
      local req = { ["user-agent"] = "ua", authorization = "Bearer s", ["x-multi"] = { "a", "b" } }
      line.applyCustomFields(entry, {
        { name = "env", value = "prod" },
        { name = "ua", request_header = "User-Agent" },
        { name = "auth", request_header = "Authorization" },
        { name = "multi", request_header = "x-multi" },
        { name = "ct", response_header = "content-type" },
        { name = "absent", request_header = "x-none" },
      }, names, function(n) return req[n:lower()] end, function(n) return n == "content-type" and "text/plain" or nil end)
      assert.same({ env = "prod", ua = "ua", auth = "[REDACTED]", multi = "a", ct = "text/plain" }, entry)
    end)

    it("timestamps in RFC 3339 UTC with milliseconds; UUIDs of version 4 from 32 hex digits", function()
      assert.equal("2026-12-02T01:02:03.456Z", line.timestamp(1796173323.456))
      assert.equal("1970-01-01T00:00:00.000Z", line.timestamp(0))
      local id = line.uuidFromHex("0123456789abcdef0123456789abcdef")
      assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x+$", id)
      assert.equal(36, #id)
    end)
  end)
end)

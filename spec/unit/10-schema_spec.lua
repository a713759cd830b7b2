-- The local gateway's Kong schema validator (krs.gateway.schema) and its
-- kong.db.schema.typedefs, checked against Kong 3.x semantics and messages.
local schema = require("krs.gateway.schema")
local typedefs = require("kong.db.schema.typedefs")
local cjson = require("cjson.safe")
local rate_limit_schema = require("krs_fixtures.rate_limit_schema")

local null = cjson.null
local validate = schema.validatePlugin

-- A plugin schema whose config record has the given fields and checks.
local function plugin(fields, config_checks, top_checks, extra_fields)
  local all = {
    { config = { type = "record", fields = fields, entity_checks = config_checks } },
  }
  for _, f in ipairs(extra_fields or {}) do all[#all + 1] = f end
  return { name = "spec-plugin", fields = all, entity_checks = top_checks }
end

local function entity(config, extra)
  local e = { name = "spec-plugin", config = config }
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function deep_copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = deep_copy(v) end
  return c
end

local function has_null(t)
  for _, v in pairs(t) do
    if v == null then return true end
    if type(v) == "table" and has_null(v) then return true end
  end
  return false
end

-- Validation that must fail: returns the errors table.
local function errors_of(s, e)
  local out, errs = validate(s, e)
  assert.is_nil(out)
  assert.is_table(errs)
  return errs
end

-- Validation that must pass: returns the filled entity.
local function filled(s, e)
  local out, errs = validate(s, e)
  assert.is_nil(errs, errs and schema.formatErrors(errs))
  assert.is_table(out)
  return out
end

describe("schema validator", function()
  describe("plugin entity", function()
    it("fills defaults at every level and leaves the input alone", function()
      local input = entity({ minute = 5 })
      input.name = "fixture-rate-limit"
      local before = deep_copy(input)
      local out = filled(rate_limit_schema(), input)
      assert.same(before, input)
      assert.are_not.equal(input, out)
      assert.same({
        name = "fixture-rate-limit",
        enabled = true,
        protocols = { "grpc", "grpcs", "http", "https" },
        config = {
          minute = 5,
          policy = "redis",
          limit_by = "consumer",
          key_names = { "apikey" },
          fault_tolerant = true,
          redis = { host = "127.0.0.1", port = 6379, timeout = 2000, database = 0 },
        },
      }, out)
      assert.is_false(has_null(out))
    end)

    it("expands a missing config into its defaults", function()
      local out = filled(plugin({ { n = { type = "integer", default = 3 } } }), { name = "spec-plugin" })
      assert.same({ n = 3 }, out.config)
    end)

    it("refuses a null config", function()
      local errs = errors_of(plugin({}), entity(null))
      assert.same({ config = "required field missing" }, errs)
    end)

    it("accepts the standard plugin entity fields the schema does not declare", function()
      local out = filled(plugin({}), entity({}, {
        id = "0b4e5a3c-8f3a-4d7e-9a55-3f1f6e2d9c10",
        instance_name = "limit-1",
        enabled = false,
        tags = { "a", "b", "a" },
        route = { id = "r1" },
        service = { id = "s1" },
        consumer = { id = "c1" },
      }))
      assert.is_false(out.enabled)
      assert.same({ "a", "b" }, out.tags)
      assert.same({ id = "r1" }, out.route)
      assert.same({ id = "c1" }, out.consumer)
      assert.same({ "grpc", "grpcs", "http", "https" }, out.protocols)
    end)

    it("checks the standard fields too", function()
      local errs = errors_of(plugin({}), entity({}, { enabled = "yes", id = "nope", tags = { "a,b" } }))
      assert.same({
        enabled = "expected a boolean",
        id = "expected a valid UUID",
        ["tags.1"] = "invalid tag 'a,b': expected printable ascii (except `,` and `/`) or valid utf-8 sequences",
      }, errs)
    end)

    it("requires a name", function()
      local errs = errors_of(plugin({}), { config = {} })
      assert.same({ name = "required field missing" }, errs)
    end)

    it("uses the schema's own protocols definition", function()
      local errs = errors_of(rate_limit_schema(), entity({ minute = 1 }, { protocols = { "http", "tcp" } }))
      assert.same({ ["protocols.2"] = "expected one of: grpc, grpcs, http, https" }, errs)
      local out = filled(plugin({}), entity({}, { protocols = { "tcp" } }))
      assert.same({ "tcp" }, out.protocols)
    end)

    it("refuses a non-table entity", function()
      local _, errs = validate(plugin({}), "config")
      assert.same({ ["@entity"] = "expected an input table" }, errs)
    end)
  end)

  describe("types", function()
    local types = plugin({
      { s = { type = "string" } },
      { n = { type = "number" } },
      { i = { type = "integer" } },
      { b = { type = "boolean" } },
      { a = { type = "array", elements = { type = "string" } } },
      { st = { type = "set", elements = { type = "string" } } },
      { m = { type = "map", keys = { type = "string" }, values = { type = "integer" } } },
      { r = { type = "record", fields = { { x = { type = "string" } } } } },
    })

    it("reports each type error with Kong's message", function()
      local errs = errors_of(types, entity({
        s = 1, n = "1", i = 1.5, b = "true", a = { x = 1 }, st = "a", m = "m", r = 5,
      }))
      assert.same({
        ["config.s"] = "expected a string",
        ["config.n"] = "expected a number",
        ["config.i"] = "expected an integer",
        ["config.b"] = "expected a boolean",
        ["config.a"] = "expected an array",
        ["config.st"] = "expected a set",
        ["config.m"] = "expected a map",
        ["config.r"] = "expected a record",
      }, errs)
    end)

    it("refuses infinite integers and sparse arrays", function()
      local errs = errors_of(types, entity({ i = math.huge, a = { [1] = "x", [3] = "y" } }))
      assert.same({ ["config.i"] = "expected an integer", ["config.a"] = "expected an array" }, errs)
    end)

    it("refuses NaN and infinities as numbers and integers (JSON bodies decode them; JSON cannot encode them)", function()
      local decoded = cjson.decode('{"n": NaN, "i": NaN}')
      assert.same({ ["config.n"] = "expected a number", ["config.i"] = "expected an integer" }, errors_of(types, entity(decoded)))
      assert.same({ ["config.n"] = "expected a number" }, errors_of(types, entity({ n = math.huge })))
      assert.same({ ["config.n"] = "expected a number" }, errors_of(types, entity({ n = -math.huge })))
      assert.same({ ["config.n"] = "expected a number", ["config.i"] = "expected an integer" },
        errors_of(types, entity(cjson.decode('{"n": 1e309, "i": -1e309}'))))
    end)

    it("accepts integral numbers as integers and floats as numbers", function()
      local out = filled(types, entity({ i = 3, n = 2.5 }))
      assert.equal(3, out.config.i)
      assert.equal(2.5, out.config.n)
    end)

    it("accepts an empty table for array, set, map and record (JSON [] and {} decode alike)", function()
      local decoded = cjson.decode('{"a": {}, "st": {}, "m": [], "r": []}')
      local out = filled(types, entity(decoded))
      assert.same({}, out.config.a)
      assert.same({}, out.config.st)
      assert.same({}, out.config.m)
      assert.same({}, out.config.r)
    end)

    it("removes duplicates from sets", function()
      local out = filled(types, entity({ st = { "a", "b", "a", "c", "b" } }))
      assert.same({ "a", "b", "c" }, out.config.st)
    end)

    it("reports element errors at their position", function()
      local errs = errors_of(types, entity({
        a = { "x", 5, "y", true },
        st = { "a", 1 },
        m = { k = "v", ok = 1 },
        r = { x = 1 },
      }))
      assert.same({
        ["config.a.2"] = "expected a string",
        ["config.a.4"] = "expected a string",
        ["config.st.2"] = "expected a string",
        ["config.m.k"] = "expected an integer",
        ["config.r.x"] = "expected a string",
      }, errs)
    end)

    it("requires array elements (no nulls inside)", function()
      local errs = errors_of(types, entity({ a = { "x", null } }))
      assert.same({ ["config.a.2"] = "required field missing" }, errs)
    end)

    it("checks map keys", function()
      local errs = errors_of(types, entity({ m = { 1, 2 } }))
      assert.same({ ["config.m.1"] = "expected a string", ["config.m.2"] = "expected a string" }, errs)
    end)

    it("fills defaults inside records that are array elements", function()
      local s = plugin({
        { rules = { type = "array", elements = { type = "record", fields = {
          { path = { type = "string", required = true } },
          { limit = { type = "integer", default = 10 } },
        } } } },
      })
      local out = filled(s, entity({ rules = { { path = "/a" }, { path = "/b", limit = 2 } } }))
      assert.same({ { path = "/a", limit = 10 }, { path = "/b", limit = 2 } }, out.config.rules)
      local errs = errors_of(s, entity({ rules = { { path = "/a" }, { limit = 2 } } }))
      assert.same({ ["config.rules.2.path"] = "required field missing" }, errs)
    end)

    it("reports an unknown type in a schema", function()
      local errs = errors_of(plugin({ { x = { type = "text" } } }), entity({ x = "a" }))
      assert.same({ ["config.x"] = "invalid type: text" }, errs)
    end)
  end)

  describe("presence and defaults", function()
    local s = plugin({
      { key = { type = "string", required = true } },
      { policy = { type = "string", default = "redis" } },
      { names = { type = "array", elements = { type = "string" }, default = { "apikey" } } },
      { redis = { type = "record", fields = {
        { host = { type = "string", required = true } },
        { port = { type = "integer", default = 6379 } },
      } } },
      { optional = { type = "string" } },
    })

    it("reports a missing required field", function()
      local errs = errors_of(s, entity({ redis = { host = "h" } }))
      assert.same({ ["config.key"] = "required field missing" }, errs)
    end)

    it("treats null as absent for required", function()
      local errs = errors_of(s, entity({ key = null, redis = { host = "h" } }))
      assert.same({ ["config.key"] = "required field missing" }, errs)
    end)

    it("reports a required field missing inside an expanded nested record", function()
      local errs = errors_of(s, entity({ key = "k" }))
      assert.same({ ["config.redis.host"] = "required field missing" }, errs)
    end)

    it("fills nested record defaults", function()
      local out = filled(s, entity({ key = "k", redis = { host = "h" } }))
      assert.same({ key = "k", policy = "redis", names = { "apikey" }, redis = { host = "h", port = 6379 } }, out.config)
    end)

    it("lets null override a default; the field comes out absent", function()
      local out = filled(s, entity({ key = "k", policy = null, names = null, redis = { host = "h" }, optional = null }))
      assert.is_nil(out.config.policy)
      assert.is_nil(out.config.names)
      assert.is_nil(out.config.optional)
      assert.is_false(has_null(out))
    end)

    it("lets null replace a whole optional record", function()
      local out = filled(s, entity({ key = "k", redis = null }))
      assert.is_nil(out.config.redis)
    end)

    it("does not share table defaults between validations", function()
      local first = filled(s, entity({ key = "k", redis = { host = "h" } }))
      first.config.names[1] = "changed"
      first.config.names[2] = "added"
      local second = filled(s, entity({ key = "k", redis = { host = "h" } }))
      assert.same({ "apikey" }, second.config.names)
      assert.same({ "apikey" }, s.fields[1].config.fields[3].names.default)
    end)

    it("reports unknown fields at any level", function()
      local errs = errors_of(s, entity({ key = "k", colour = "red", redis = { host = "h", db = 1 } }, { extra = 1 }))
      assert.same({
        ["config.colour"] = "unknown field",
        ["config.redis.db"] = "unknown field",
        extra = "unknown field",
      }, errs)
    end)

    it("refuses empty strings by default", function()
      local errs = errors_of(s, entity({ key = "", redis = { host = "h" } }))
      assert.same({ ["config.key"] = "length must be at least 1" }, errs)
    end)
  end)

  describe("constraints", function()
    local function one(field, value)
      local _, errs = validate(plugin({ { f = field } }), entity({ f = value }))
      return errs and errs["config.f"]
    end

    it("one_of", function()
      assert.equal("expected one of: local, redis", one({ type = "string", one_of = { "local", "redis" } }, "x"))
      assert.is_nil(one({ type = "string", one_of = { "local", "redis" } }, "redis"))
      assert.equal("expected one of: 1, 2", one({ type = "integer", one_of = { 1, 2 } }, 3))
    end)

    it("between", function()
      local f = { type = "integer", between = { 1, 10 } }
      assert.equal("value should be between 1 and 10", one(f, 0))
      assert.equal("value should be between 1 and 10", one(f, 11))
      assert.is_nil(one(f, 10))
    end)

    it("gt", function()
      assert.equal("value must be greater than 0", one({ type = "number", gt = 0 }, 0))
      assert.is_nil(one({ type = "number", gt = 0 }, 0.5))
    end)

    it("len_min and len_max, on strings and arrays", function()
      assert.equal("length must be at least 3", one({ type = "string", len_min = 3 }, "ab"))
      assert.equal("length must be at most 5", one({ type = "string", len_max = 5 }, "abcdef"))
      assert.is_nil(one({ type = "string", len_min = 0 }, ""))
      local arr = { type = "array", elements = { type = "string" }, len_min = 1 }
      assert.equal("length must be at least 1", one(arr, {}))
    end)

    it("match (a Lua pattern)", function()
      assert.equal("invalid value: abc", one({ type = "string", match = "^%d+$" }, "abc"))
      assert.is_nil(one({ type = "string", match = "^%d+$" }, "123"))
    end)

    it("eq and ne", function()
      assert.equal("value must be 5", one({ type = "integer", eq = 5 }, 4))
      assert.equal("value must be null", one({ type = "string", eq = null }, "x"))
      assert.is_nil(one({ type = "string", eq = null }, null))
      assert.equal("value must not be x", one({ type = "string", ne = "x" }, "x"))
    end)

    it("starts_with, match_none, match_all, match_any, not_one_of, contains", function()
      assert.equal("should start with: /", one({ type = "string", starts_with = "/" }, "a"))
      assert.equal("no dots", one({ type = "string", match_none = { { pattern = "%.", err = "no dots" } } }, "a.b"))
      assert.equal("digits", one({ type = "string", match_all = { { pattern = "^%d+$", err = "digits" } } }, "a"))
      assert.equal("a or b", one({ type = "string", match_any = { patterns = { "^a", "^b" }, err = "a or b" } }, "c"))
      assert.equal("must not be one of: x, y", one({ type = "string", not_one_of = { "x", "y" } }, "y"))
      assert.equal("expected to contain: GET",
        one({ type = "array", elements = { type = "string" }, contains = "GET" }, { "POST" }))
    end)

    it("custom_validator", function()
      local f = { type = "string", custom_validator = function(v)
        if v == "bad" then return nil, "bad is not allowed" end
        if v == "quiet" then return false end
        if v == "boom" then error("exploded", 0) end
        return true
      end }
      assert.equal("bad is not allowed", one(f, "bad"))
      assert.equal("failed validating: quiet", one(f, "quiet"))
      assert.equal("exploded", one(f, "boom"))
      assert.is_nil(one(f, "good"))
    end)

    it("err replaces a validator's message", function()
      assert.equal("pick a color", one({ type = "string", one_of = { "red" }, err = "pick a color" }, "blue"))
    end)

    it("runs no constraint on a value of the wrong type", function()
      assert.equal("expected a number", one({ type = "number", gt = 0, between = { 1, 2 } }, "x"))
    end)

    it("validates defaults like given values", function()
      assert.equal("expected one of: a", one({ type = "string", one_of = { "a" }, default = "b" }, nil))
    end)
  end)

  describe("entity checks", function()
    local fields = {
      { a = { type = "string" } },
      { b = { type = "string" } },
      { c = { type = "integer" } },
    }

    it("at_least_one_of, at the top level with paths into config", function()
      local errs = errors_of(rate_limit_schema(), entity({}))
      assert.same({
        ["@entity"] = "at least one of these fields must be non-empty: 'config.second', 'config.minute', 'config.hour'",
      }, errs)
      filled(rate_limit_schema(), entity({ hour = 100 }))
    end)

    it("at_least_one_of counts empty strings and tables as empty", function()
      local s = plugin({ { a = { type = "string", len_min = 0 } }, { t = { type = "array", elements = { type = "string" } } } },
        { { at_least_one_of = { "a", "t" } } })
      local errs = errors_of(s, entity({ a = "", t = {} }))
      assert.same({ ["config.@entity"] = "at least one of these fields must be non-empty: 'a', 't'" }, errs)
    end)

    it("only_one_of", function()
      local s = plugin(fields, { { only_one_of = { "a", "b" } } })
      assert.same({ ["config.@entity"] = "exactly one of these fields must be non-empty: 'a', 'b'" },
        errors_of(s, entity({ a = "x", b = "y" })))
      assert.same({ ["config.@entity"] = "exactly one of these fields must be non-empty: 'a', 'b'" },
        errors_of(s, entity({})))
      filled(s, entity({ b = "y" }))
    end)

    it("mutually_exclusive", function()
      local s = plugin(fields, { { mutually_exclusive = { "a", "b" } } })
      assert.same({ ["config.@entity"] = "only one or none of these fields must be set: 'a', 'b'" },
        errors_of(s, entity({ a = "x", b = "y" })))
      filled(s, entity({}))
      filled(s, entity({ a = "x" }))
    end)

    it("mutually_required", function()
      local s = plugin(fields, { { mutually_required = { "a", "c" } } })
      assert.same({ ["config.@entity"] = "all or none of these fields must be set: 'a', 'c'" },
        errors_of(s, entity({ a = "x" })))
      filled(s, entity({}))
      filled(s, entity({ a = "x", c = 1 }))
    end)

    it("distinct", function()
      local s = plugin(fields, { { distinct = { "a", "b" } } })
      assert.same({ ["config.@entity"] = "values of these fields must be distinct: 'a', 'b'" },
        errors_of(s, entity({ a = "x", b = "x" })))
      filled(s, entity({ a = "x", b = "y" }))
    end)

    it("conditional with then_match.required", function()
      local errs = errors_of(rate_limit_schema(), entity({ minute = 1, limit_by = "header" }))
      assert.same({
        ["config.header_name"] = "required field missing",
        ["config.@entity"] = "failed conditional validation given value of field 'limit_by'",
      }, errs)
      local out = filled(rate_limit_schema(), entity({ minute = 1, limit_by = "header", header_name = "X-Key" }))
      assert.equal("X-Key", out.config.header_name)
      filled(rate_limit_schema(), entity({ minute = 1, limit_by = "ip" }))
    end)

    it("conditional with a then_match constraint", function()
      local s = plugin(fields, { { conditional = {
        if_field = "a", if_match = { one_of = { "redis" } },
        then_field = "c", then_match = { between = { 1, 5 } },
      } } })
      local errs = errors_of(s, entity({ a = "redis", c = 9 }))
      assert.same({
        ["config.c"] = "value should be between 1 and 5",
        ["config.@entity"] = "failed conditional validation given value of field 'a'",
      }, errs)
      filled(s, entity({ a = "local", c = 9 }))
      filled(s, entity({ a = "redis", c = 3 }))
    end)

    it("conditional with then_err", function()
      local s = plugin(fields, { { conditional = {
        if_field = "a", if_match = { eq = "x" },
        then_field = "c", then_match = { eq = 1 }, then_err = "c must be 1 when %s is x",
      } } })
      local errs = errors_of(s, entity({ a = "x", c = 2 }))
      assert.same({ ["config.c"] = "value must be 1", ["config.@entity"] = "c must be 1 when a is x" }, errs)
    end)

    it("custom_entity_check reports at @entity", function()
      local seen
      local s = plugin(fields, nil, { { custom_entity_check = {
        field_sources = { "config.a", "config.c" },
        fn = function(e)
          seen = e
          if e.config.c ~= null and e.config.c > 3 then return nil, "c is too big for " .. e.config.a end
          return true
        end,
      } } })
      assert.same({ ["@entity"] = "c is too big for x" }, errors_of(s, entity({ a = "x", c = 4 })))
      assert.same({ config = { a = "x", c = 4 } }, seen)
      filled(s, entity({ a = "x", c = 2 }))
    end)

    it("custom_entity_check on a record reports at <record>.@entity", function()
      local s = plugin(fields, { { custom_entity_check = {
        field_sources = { "a" }, fn = function() return nil, "no" end,
      } } })
      assert.same({ ["config.@entity"] = "no" }, errors_of(s, entity({ a = "x" })))
    end)

    it("runs checks that need valid fields only when those fields validated", function()
      local called = false
      local s = plugin(fields, { { custom_entity_check = {
        field_sources = { "c" }, fn = function() called = true return nil, "never" end,
      } }, { mutually_required = { "a", "c" } } })
      local errs = errors_of(s, entity({ c = "not a number" }))
      assert.same({ ["config.c"] = "expected an integer" }, errs)
      assert.is_false(called)
    end)

    it("collects several entity errors in one entry", function()
      local s = plugin(fields, { { at_least_one_of = { "a" } }, { at_least_one_of = { "b" } } })
      assert.same({
        ["config.@entity"] = "at least one of these fields must be non-empty: 'a'; "
          .. "at least one of these fields must be non-empty: 'b'",
      }, errors_of(s, entity({})))
    end)
  end)

  describe("typedefs", function()
    it("no_consumer refuses a consumer and accepts none or null", function()
      local errs = errors_of(rate_limit_schema(), entity({ minute = 1 }, { consumer = { id = "c1" } }))
      assert.same({ consumer = "value must be null" }, errs)
      filled(rate_limit_schema(), entity({ minute = 1 }, { consumer = null }))
      local out = filled(rate_limit_schema(), entity({ minute = 1 }))
      assert.is_nil(out.consumer)
    end)

    it("no_route and no_service", function()
      local s = plugin({}, nil, nil, { { route = typedefs.no_route }, { service = typedefs.no_service } })
      local errs = errors_of(s, entity({}, { route = { id = "r" }, service = { id = "s" } }))
      assert.same({ route = "value must be null", service = "value must be null" }, errs)
    end)

    local function check(typedef, value)
      local _, errs = validate(plugin({ { f = typedef } }), entity({ f = value }))
      return errs and errs["config.f"]
    end

    it("port", function()
      assert.is_nil(check(typedefs.port, 0))
      assert.is_nil(check(typedefs.port, 65535))
      assert.equal("value should be between 0 and 65535", check(typedefs.port, 65536))
      assert.equal("value should be between 0 and 65535", check(typedefs.port, -1))
      assert.equal("expected an integer", check(typedefs.port, 80.5))
    end)

    it("ip_or_cidr accepts IPv4, IPv6 and their CIDR ranges", function()
      for _, good in ipairs({
        "10.0.0.1", "0.0.0.0/0", "192.168.1.0/24", "255.255.255.255/32",
        "::1", "::", "2001:db8::/32", "fe80::1:2", "1:2:3:4:5:6:7:8", "::ffff:10.0.0.1", "2001:db8::1/128",
      }) do
        assert.is_nil(check(typedefs.ip_or_cidr, good), good)
      end
    end)

    it("ip_or_cidr refuses anything else", function()
      for _, bad in ipairs({
        "256.1.1.1", "10.0.0", "10.0.0.1/33", "10.0.0.1/", "10.0.0.1/x", "1.2.3.4.5", "example.com",
        "1::2::3", "1:2:3:4:5:6:7:8:9", "2001:db8::/129", "12345::1", "::ffff:300.0.0.1", "10.0.0.1:80",
      }) do
        assert.equal("invalid ip or cidr range: '" .. bad .. "'", check(typedefs.ip_or_cidr, bad), bad)
      end
    end)

    it("host", function()
      for _, good in ipairs({ "example.com", "redis", "my-host.internal.", "127.0.0.1", "::1", "[::1]" }) do
        assert.is_nil(check(typedefs.host, good), good)
      end
      assert.equal("must not have a port", check(typedefs.host, "example.com:6379"))
      assert.equal("must not have a port", check(typedefs.host, "10.0.0.1:80"))
      assert.equal("must not have a port", check(typedefs.host, "[::1]:80"))
      assert.equal("invalid value: exa mple", check(typedefs.host, "exa mple"))
      assert.equal("invalid value: bad-.example", check(typedefs.host, "bad-.example"))
      assert.equal("invalid value: a..b", check(typedefs.host, "a..b"))
      assert.equal("invalid value: 300.1.1.1", check(typedefs.host, "300.1.1.1"))
    end)

    it("header_name", function()
      assert.is_nil(check(typedefs.header_name, "X-Api-Key_2"))
      assert.equal("bad header name 'X Api', allowed characters are A-Z, a-z, 0-9, '_', and '-'",
        check(typedefs.header_name, "X Api"))
    end)

    it("path", function()
      assert.is_nil(check(typedefs.path, "/"))
      assert.is_nil(check(typedefs.path, "/a/b%20c"))
      assert.equal("should start with: /", check(typedefs.path, "a"))
      assert.equal("must not have empty segments", check(typedefs.path, "/a//b"))
      assert.equal("invalid path: '/a b' (characters outside of the reserved list of RFC 3986 found)",
        check(typedefs.path, "/a b"))
      assert.equal("invalid url-encoded value: '%zz'", check(typedefs.path, "/a%zz"))
    end)

    it("uuid", function()
      assert.is_nil(check(typedefs.uuid, "0B4E5A3C-8f3a-4d7e-9a55-3f1f6e2d9c10"))
      assert.equal("expected a valid UUID", check(typedefs.uuid, "0b4e5a3c-8f3a-4d7e-9a55-3f1f6e2d9c1"))
      assert.equal("expected a valid UUID", check(typedefs.uuid, "0b4e5a3c_8f3a-4d7e-9a55-3f1f6e2d9c10"))
    end)

    it("protocols_http has Kong's shape", function()
      assert.equal("set", typedefs.protocols_http.type)
      assert.is_true(typedefs.protocols_http.required)
      assert.same({ "grpc", "grpcs", "http", "https" }, typedefs.protocols_http.default)
      assert.equal("foreign", typedefs.no_consumer.type)
      assert.equal(null, typedefs.no_consumer.eq)
    end)

    it("are callable like Kong's Schema.define, without changing the original", function()
      local p = typedefs.port { default = 6379, description = "Redis port" }
      assert.equal(6379, p.default)
      assert.equal("integer", p.type)
      assert.same({ 0, 65535 }, p.between)
      assert.is_nil(typedefs.port.default)
      assert.equal(6380, p { default = 6380 }.default)
    end)

    it("raise on a definition that does not exist", function()
      assert.has_error(function() return typedefs.no_such_thing end,
        "schema typedef error: definition no_such_thing does not exist")
    end)
  end)

  describe("pluginSchemaJson (GET /plugins/schema/{name})", function()
    local function shape(s)
      local json = schema.pluginSchemaJson(s)
      local decoded = cjson.decode(json)
      assert.is_table(decoded, json)
      return decoded, json
    end

    it("gives the config record's fields as one-key objects, in order, functions left out", function()
      local s = plugin({
        { tag = { type = "string", required = true, description = "d" } },
        { names = { type = "array", default = {}, elements = { type = "string", custom_validator = function() return true end } } },
        { limits = { type = "record", fields = { { max = { type = "integer", between = { 1, 10 } } } },
                     entity_checks = { { custom_entity_check = { field_sources = { "max" }, fn = function() return true end } } } } },
      }, nil, nil, { { protocols = typedefs.protocols_http } })
      local decoded, json = shape(s)
      assert.same({
        fields = {
          { tag = { type = "string", required = true, description = "d" } },
          { names = { type = "array", default = {}, elements = { type = "string" } } },
          { limits = { type = "record", fields = { { max = { type = "integer", between = { 1, 10 } } } },
                       entity_checks = { { custom_entity_check = { field_sources = { "max" } } } } } },
        },
      }, decoded)
      -- Lists are JSON arrays even when empty (Debian's cjson would write {}).
      assert.truthy(json:find('"default":[]', 1, true), json)
      assert.falsy(json:find("function", 1, true))
    end)

    it("writes NaN and infinities as Kong does (strings)", function()
      local _, json = shape(plugin({ { x = { type = "number", default = math.huge, between = { -math.huge, 0 / 0 } } } }))
      assert.truthy(json:find('"default":"inf"', 1, true), json)
      assert.truthy(json:find('"between":["-inf","nan"]', 1, true), json)
    end)

    it("serializes every bundled plugin's schema", function()
      for _, name in ipairs({ "redis-rate-limit", "redis-key-auth", "redis-cache" }) do
        local decoded = shape(require("kong.plugins." .. name .. ".schema"))
        assert.is_true(#decoded.fields > 0, name)
      end
    end)
  end)

  describe("formatErrors", function()
    it("gives one line, fields sorted, entity errors without a key", function()
      local line = schema.formatErrors({
        ["config.minute"] = "expected a number",
        ["config.hour"] = "expected a number",
        ["config.names.10"] = "expected a string",
        ["config.names.2"] = "expected a string",
        ["config.@entity"] = "failed conditional validation given value of field 'limit_by'",
        ["@entity"] = "at least one of these fields must be non-empty: 'config.second'",
        name = "required field missing",
      })
      assert.equal("at least one of these fields must be non-empty: 'config.second'; "
        .. "config: failed conditional validation given value of field 'limit_by'; "
        .. "config.hour: expected a number; config.minute: expected a number; "
        .. "config.names.2: expected a string; config.names.10: expected a string; "
        .. "name: required field missing", line)
    end)

    it("formats what validatePlugin returns", function()
      local _, errs = validate(rate_limit_schema(), entity({ minute = "5", redis = { port = 70000 } }))
      assert.equal("config.minute: expected a number; config.redis.port: value should be between 0 and 65535",
        schema.formatErrors(errs))
    end)

    it("is empty for no errors", function()
      assert.equal("", schema.formatErrors({}))
    end)
  end)
end)

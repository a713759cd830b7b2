-- redis-cache: its schema (through the local gateway's Kong validator), the cacheability
-- rules (Cache-Control, Vary, content types), the stored value format with and without
-- AES-256-GCM, and krs.crypto itself.
local policy = require("kong.plugins.redis-cache.policy")
local codec = require("kong.plugins.redis-cache.codec")
local crypto = require("krs.crypto")

local plugin_schema = require("plugin_schema")("redis-cache")
local schema, validate, ok = plugin_schema.schema, plugin_schema.validate, plugin_schema.ok
local errors_of, error_text = plugin_schema.errors_of, plugin_schema.error_text

describe("redis-cache schema", function()
  it("fills Kong proxy-cache's defaults and the suite's own", function()
    assert.same({
      request_method = { "GET", "HEAD" },
      response_code = { 200, 301, 404 },
      content_type = { "text/plain", "application/json" },
      cache_ttl = 300,
      cache_control = false,
      ignore_uri_case = false,
      cache_per_consumer = true,
      max_body_size = 1048576,
      l1_ttl = 5,
      l1_size = 1000,
      lock_timeout = 3000,
      refresh_ahead = 0.2,
      sliding_ttl = false,
      fault_tolerant = true,
      redis = {
        host = "127.0.0.1", port = 6379, timeout = 2000, database = 0, ssl = false, ssl_verify = false,
        keepalive_pool_size = 256, keepalive_timeout = 60000,
      },
    }, ok({}))
  end)

  it("checks methods, codes, content types, fractions and the key length", function()
    assert.same({ ["config.request_method.1"] = "expected one of: GET, HEAD, POST, PATCH, PUT" },
      errors_of({ request_method = { "DELETE" } }))
    assert.same({ ["config.response_code.1"] = "value should be between 100 and 900" }, errors_of({ response_code = { 99 } }))
    local errs = errors_of({ content_type = { "application/json; charset=utf-8" } })
    assert.matches("invalid content type", errs["config.content_type.1"], 1, true)
    ok({ content_type = { "*", "*/*", "text/*", "application/vnd.api+json" } })
    assert.same({ ["config.refresh_ahead"] = "value should be between 0 and 1" }, errors_of({ refresh_ahead = 1.5 }))
    assert.same({ ["config.encryption_key"] = "length must be at least 16" }, errors_of({ encryption_key = "short" }))
    assert.same({ ["config.cache_ttl"] = "value must be greater than 0" }, errors_of({ cache_ttl = 0 }))
    ok({ l1_ttl = 0, refresh_ahead = 0, encryption_key = string.rep("k", 16) })
  end)

  it("marks the encryption key as a secret", function()
    local config
    for _, f in ipairs(schema().fields) do if f.config then config = f.config end end
    for _, f in ipairs(config.fields) do
      if f.encryption_key then
        assert.is_true(f.encryption_key.encrypted)
        assert.is_true(f.encryption_key.referenceable)
      end
      local _, def = next(f)
      assert.is_string(def.description)
    end
  end)
end)

describe("redis-cache policy", function()
  it("parses Cache-Control directives, quoted and repeated", function()
    local cc = policy.parseCacheControl({ 'public, max-age=60', 'no-cache="Set-Cookie", S-MaxAge = 9' })
    assert.equal(true, cc.public)
    assert.equal("60", cc["max-age"])
    assert.equal("Set-Cookie", cc["no-cache"])
    assert.equal("9", cc["s-maxage"])
    assert.is_nil(policy.parseCacheControl(nil))
    assert.equal(60, policy.seconds(cc, "max-age"))
    assert.is_nil(policy.seconds(policy.parseCacheControl("max-age=-1"), "max-age"))
    assert.is_nil(policy.seconds(policy.parseCacheControl("max-age=abc"), "max-age"))
  end)

  it("derives a response TTL: s-maxage, max-age, Expires, else the fallback; 0 for no-store/no-cache/private", function()
    local ttl = function(h, expires) return policy.responseTtl(policy.parseCacheControl(h), expires, 1000, 300) end
    assert.equal(9, ttl("max-age=3, s-maxage=9"))
    assert.equal(3, ttl("max-age=3"))
    assert.equal(0, ttl("max-age=0"))
    assert.equal(300, ttl(nil))
    assert.equal(300, ttl("public"))
    assert.equal(50, ttl(nil, 1050))
    assert.equal(0, ttl(nil, 900))
    assert.equal(3, ttl("max-age=3", 900))
    for _, h in ipairs({ "no-store", "no-cache", "private", "private, max-age=60" }) do assert.equal(0, ttl(h)) end
  end)

  it("matches content types on type/subtype, ignoring parameters and case", function()
    local m = policy.typeMatcher({ "application/json", "Text/*" })
    assert.is_true(policy.matchesType(m, "application/json"))
    assert.is_true(policy.matchesType(m, "Application/JSON; charset=utf-8"))
    assert.is_true(policy.matchesType(m, "text/html"))
    assert.is_false(policy.matchesType(m, "application/jsonx"))
    assert.is_false(policy.matchesType(m, "application/json+x"))
    assert.is_false(policy.matchesType(m, "image/png"))
    assert.is_false(policy.matchesType(m, "garbage"))
    local any = policy.typeMatcher({ "*" })
    assert.is_true(policy.matchesType(any, "image/png"))
    assert.is_false(policy.matchesType(any, ""))
  end)

  it("reads Vary: lower-case, sorted, once each; * on its own", function()
    assert.same({ "accept-encoding", "accept-language" }, policy.parseVary("Accept-Language, accept-encoding,Accept-Language"))
    assert.same({ "a", "b" }, policy.parseVary({ "B", "a" }))
    assert.same({}, policy.parseVary(nil))
    assert.equal("*", policy.parseVary("Accept, *"))
  end)
end)

describe("redis-cache stored values", function()
  local key = crypto.sha256("a secret that is long enough")
  local entry = {
    kind = "E", status = 200, storedAt = 1700000000123, ttl = 300000,
    headers = { ["Content-Type"] = "application/json", ["X-Multi"] = { "a", "b" }, Empty = "" },
    body = "line1\n\nline3:\0binary\255",
  }

  local function roundtrip(k)
    local value = assert(codec.encodeEntry(entry, k))
    local decoded = assert(codec.decode(value, k))
    assert.same(entry, decoded)
    return value
  end

  it("keeps status, headers (repeated too), body and times, plain", function()
    local value = roundtrip(nil)
    local head = "1|300000|1700000000123|E|200\n"
    assert.equal(head, value:sub(1, #head))
  end)

  it("keeps them encrypted: no plaintext, a fresh nonce each time", function()
    local a = roundtrip(key)
    local b = roundtrip(key)
    local head = "1|300000|1700000000123|C|"
    assert.equal(head, a:sub(1, #head))
    assert.is_nil(a:find("line1", 1, true))
    assert.is_nil(a:find("application/json", 1, true))
    assert.not_equal(a, b)
  end)

  it("rejects tampering with the ciphertext, the prefix (AAD), a wrong key and a mixed-up kind", function()
    local value = assert(codec.encodeEntry(entry, key))
    local flipped = value:sub(1, -3) .. string.char((value:byte(-2) + 1) % 256) .. value:sub(-1)
    local out, err = codec.decode(flipped, key)
    assert.is_nil(out)
    assert.matches("failed authentication", err, 1, true)
    out, err = codec.decode(value:gsub("^1|300000|", "1|999999|"), key)
    assert.is_nil(out)
    assert.matches("failed authentication", err, 1, true)
    assert.is_nil(codec.decode(value, crypto.sha256("another key")))
    out, err = codec.decode(value, nil)
    assert.is_nil(out)
    assert.matches("no encryption_key", err, 1, true)
    out, err = codec.decode(assert(codec.encodeEntry(entry, nil)), key)
    assert.is_nil(out)
    assert.matches("unencrypted entry", err, 1, true)
  end)

  it("rejects malformed values without raising", function()
    for _, v in ipairs({ "", "garbage", "1|x|1|E|200\n\n", "1|1|1|E|20\n\n", "1|1|1|E|200\nNoColon\n\n", "1|1|1|E|200\nA:1",
      "1|1|1|Z|x", "1|1|1|V|", "1|1|1|C|short" }) do
      local out, err = codec.decode(v, v:find("|C|", 1, true) and key or nil)
      assert.is_nil(out, v)
      assert.is_string(err)
    end
  end)

  it("encodes Vary markers", function()
    local v = codec.encodeMarker({ "accept-encoding", "accept-language" }, 5, 60000)
    assert.equal("1|60000|5|V|accept-encoding,accept-language", v)
    assert.same({ kind = "V", vary = { "accept-encoding", "accept-language" }, storedAt = 5, ttl = 60000 }, codec.decode(v, key))
  end)
end)

describe("krs.crypto", function()
  it("computes SHA-256 and hex", function()
    assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", crypto.toHex(crypto.sha256("abc")))
    assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", crypto.toHex(crypto.sha256("")))
  end)

  it("seals and opens, with and without AAD, empty and large", function()
    local k = crypto.sha256("k")
    for _, msg in ipairs({ "", "x", string.rep("abc", 100000) }) do
      local sealed = assert(crypto.seal(k, msg, "aad"))
      assert.equal(#msg + 28, #sealed)
      assert.equal(msg, crypto.open(k, sealed, "aad"))
      assert.is_nil(crypto.open(k, sealed, "aae"))
    end
    assert.is_nil(crypto.open(k, "too short", ""))
    assert.has_error(function() crypto.seal("short key", "x", "") end)
  end)
end)

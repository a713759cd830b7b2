-- redis-cache: its schema (through the local gateway's Kong validator), the cacheability
-- rules (Cache-Control, Vary, content types), the stored value format with and without
-- AES-256-GCM and key rotation, the worker cache (L1) and its byte budget, configuration
-- fingerprints, and krs.crypto itself.
local policy = require("kong.plugins.redis-cache.policy")
local codec = require("kong.plugins.redis-cache.codec")
local state = require("kong.plugins.redis-cache.state")
local l1 = require("kong.plugins.redis-cache.l1")
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
      l1_max_bytes = 16777216,
      lock_timeout = 3000,
      refresh_ahead = 0.2,
      sliding_ttl = false,
      fault_tolerant = true,
      redis = {
        host = "127.0.0.1", port = 6379, timeout = 2000, database = 0, ssl = false, ssl_verify = false,
        keepalive_pool_size = 256, keepalive_timeout = 60000, cluster_max_redirections = 5,
      },
    }, ok({}))
  end)

  it("checks methods, codes, content types, fractions and the key length", function()
    assert.same({ ["config.request_method.1"] = "expected one of: GET, HEAD, POST, PATCH, PUT" },
      errors_of({ request_method = { "DELETE" } }))
    assert.same({ ["config.response_code.1"] = "value should be between 100 and 900" }, errors_of({ response_code = { 99 } }))
    for _, bad in ipairs({ "json", "application/", "*/json", "text/x*", "te*t/html", "text/html;", "text/html; charset", "text/html; a=\"open" }) do
      local errs = errors_of({ content_type = { bad } })
      assert.matches("invalid content type", errs["config.content_type.1"], 1, true)
    end
    ok({ content_type = { "*", "*/*", "text/*", "application/vnd.api+json" } })
    assert.same({ ["config.refresh_ahead"] = "value should be between 0 and 1" }, errors_of({ refresh_ahead = 1.5 }))
    assert.same({ ["config.encryption_key"] = "length must be at least 16" }, errors_of({ encryption_key = "short" }))
    assert.same({ ["config.cache_ttl"] = "value must be greater than 0" }, errors_of({ cache_ttl = 0 }))
    ok({ l1_ttl = 0, refresh_ahead = 0, encryption_key = string.rep("k", 16) })
    assert.same({ ["config.decryption_keys.2"] = "length must be at least 16" },
      errors_of({ encryption_key = string.rep("k", 16), decryption_keys = { string.rep("o", 16), "short" } }))
    assert.same({ string.rep("o", 16) }, ok({ decryption_keys = { string.rep("o", 16) } }).decryption_keys)
    assert.same({ ["config.l1_max_bytes"] = "value should be between 0 and 2147483647" }, errors_of({ l1_max_bytes = -1 }))
  end)

  it("accepts content types with parameters, as Kong proxy-cache does", function()
    local types = { "application/json; charset=utf-8", "text/*;charset=\"utf-8\"", "*; q=1", "text/plain; a=1; b=\"x;y\"" }
    assert.same(types, ok({ content_type = types }).content_type)
  end)

  it("marks the encryption key as a secret", function()
    local config
    for _, f in ipairs(schema().fields) do if f.config then config = f.config end end
    for _, f in ipairs(config.fields) do
      if f.encryption_key then
        assert.is_true(f.encryption_key.encrypted)
        assert.is_true(f.encryption_key.referenceable)
      end
      if f.decryption_keys then
        assert.is_true(f.decryption_keys.encrypted)
        assert.is_true(f.decryption_keys.elements.referenceable)
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

  it("parses media types: lower-case type and parameter names, unquoted values, sorted parameters", function()
    assert.same({ "application", "json", "charset=utf-8\nq=1" }, { policy.parseMediaType('Application/JSON ;q=1; Charset="utf-8"') })
    assert.same({ "text", "*", 'x=a"b;c' }, { policy.parseMediaType('text/*; x="a\\"b;c"') })
    assert.same({ "*", "*", "" }, { policy.parseMediaType("*") })
    for _, bad in ipairs({ "", "text", "text/html;", "text/html; a", "text/html; a=", 'text/html; a="x', "a/b c" }) do
      assert.is_nil(policy.parseMediaType(bad), bad)
    end
  end)

  it("matches entries with parameters only on exactly those parameters, as Kong does", function()
    local m = policy.typeMatcher({ "application/json; charset=utf-8", "text/*; charset=utf-8", "image/png" })
    assert.is_true(policy.matchesType(m, "application/json; charset=utf-8"))
    assert.is_true(policy.matchesType(m, 'application/json;Charset="utf-8"'))
    assert.is_true(policy.matchesType(m, "text/html; charset=utf-8"))
    assert.is_false(policy.matchesType(m, "application/json"))
    assert.is_false(policy.matchesType(m, "application/json; charset=UTF-16"))
    assert.is_false(policy.matchesType(m, "application/json; charset=utf-8; q=1"))
    assert.is_false(policy.matchesType(m, "text/html"))
    -- An entry without parameters still matches whatever parameters the response has.
    assert.is_true(policy.matchesType(m, "image/png; x=1"))
    local any = policy.typeMatcher({ "*; charset=utf-8" })
    assert.is_true(policy.matchesType(any, "font/woff; charset=utf-8"))
    assert.is_false(policy.matchesType(any, "font/woff"))
  end)

  it("reads Vary: lower-case, sorted, once each; * on its own", function()
    assert.same({ "accept-encoding", "accept-language" }, policy.parseVary("Accept-Language, accept-encoding,Accept-Language"))
    assert.same({ "a", "b" }, policy.parseVary({ "B", "a" }))
    assert.same({}, policy.parseVary(nil))
    assert.equal("*", policy.parseVary("Accept, *"))
  end)
end)

describe("redis-cache stored values", function()
  -- A keyring as state.prepare builds it: seal with the first secret, open with any.
  local function ring(seal, ...)
    local keys, ring = {}, {}
    if seal then
      ring.sealKey = crypto.sha256(seal)
      ring.sealId = state.keyId(ring.sealKey)
      keys[ring.sealId] = ring.sealKey
    end
    for _, other in ipairs({ ... }) do
      local aes = crypto.sha256(other)
      keys[state.keyId(aes)] = aes
    end
    ring.keys = keys
    return ring
  end
  local key = ring("a secret that is long enough")
  local entry = {
    kind = "E", status = 200, storedAt = 1700000000123, ttl = 300000,
    headers = { ["Content-Type"] = "application/json", ["X-Multi"] = { "a", "b" }, Empty = "" },
    body = "line1\n\nline3:\0binary\255",
  }

  -- The Redis key a value is stored under (generation 3).
  local where = "krs:redis-cache:v1:{3." .. string.rep("a", 64) .. "}:entry"

  local function roundtrip(k)
    local value = assert(codec.encodeEntry(entry, k, where))
    local decoded = assert(codec.decode(value, k, where))
    assert.same(entry, decoded)
    return value
  end

  it("keeps status, headers (repeated too), body and times, plain", function()
    local value = roundtrip(nil)
    local head = "1|300000|1700000000123|E|200\n"
    assert.equal(head, value:sub(1, #head))
  end)

  it("keeps them encrypted, naming the key: no plaintext, a fresh nonce each time", function()
    local a = roundtrip(key)
    local b = roundtrip(key)
    local head = "1|300000|1700000000123|K|" .. key.sealId .. "|"
    assert.matches("^%x%x%x%x%x%x%x%x$", key.sealId)
    assert.equal(head, a:sub(1, #head))
    assert.is_nil(a:find("line1", 1, true))
    assert.is_nil(a:find("application/json", 1, true))
    assert.is_nil(a:find(key.sealKey, 1, true))
    assert.not_equal(a, b)
  end)

  it("rejects tampering with the ciphertext, the prefix (AAD), a wrong key and a mixed-up kind", function()
    local value = assert(codec.encodeEntry(entry, key, where))
    local flipped = value:sub(1, -3) .. string.char((value:byte(-2) + 1) % 256) .. value:sub(-1)
    local out, err, foreign = codec.decode(flipped, key, where)
    assert.is_nil(out)
    assert.matches("failed authentication", err, 1, true)
    assert.is_false(foreign)
    out, err, foreign = codec.decode(value:gsub("^1|300000|", "1|999999|"), key, where)
    assert.is_nil(out)
    assert.matches("failed authentication", err, 1, true)
    assert.is_false(foreign)
    out, err = codec.decode(value, nil, where)
    assert.is_nil(out)
    assert.matches("no encryption_key", err, 1, true)
    out, err = codec.decode(assert(codec.encodeEntry(entry, nil, where)), key, where)
    assert.is_nil(out)
    assert.matches("unencrypted entry", err, 1, true)
  end)

  it("tells foreign entries (another node's key or setting: left alone) from corrupt ones (replaced)", function()
    local old, new = "the old secret, 16+ chars", "the new secret, 16+ chars"
    local sealedOld = assert(codec.encodeEntry(entry, ring(old), where))
    -- Sealed under a key this node does not have: foreign, and the log line names no key.
    local out, err, foreign = codec.decode(sealedOld, ring(new), where)
    assert.is_nil(out)
    assert.is_true(foreign)
    assert.matches("a key this node does not have", err, 1, true)
    assert.is_nil(err:find(crypto.sha256(old), 1, true))
    assert.is_nil(err:find(old, 1, true))
    -- Plain where this node encrypts, encrypted where it does not: foreign too.
    assert.is_true(select(3, codec.decode(assert(codec.encodeEntry(entry, nil, where)), ring(new), where)))
    assert.is_true(select(3, codec.decode(sealedOld, nil, where)))
    -- Malformed: corrupt.
    assert.is_false(select(3, codec.decode("1|1|1|K|zz|x", ring(new), where)))
    assert.is_false(select(3, codec.decode("garbage", ring(new), where)))
  end)

  it("rotates keys: seals with encryption_key, opens with it or any of decryption_keys", function()
    local old, new = "the old secret, 16+ chars", "the new secret, 16+ chars"
    local sealedOld = assert(codec.encodeEntry(entry, ring(old), where))
    local sealedNew = assert(codec.encodeEntry(entry, ring(new, old), where))
    -- Step 1: the new key is only read. Step 2: it seals, the old one is still read.
    assert.same(entry, codec.decode(sealedOld, ring(old, new), where))
    assert.same(entry, codec.decode(sealedNew, ring(old, new), where))
    assert.same(entry, codec.decode(sealedOld, ring(new, old), where))
    assert.same(entry, codec.decode(sealedNew, ring(new), where))
    assert.equal(ring(new).sealId, sealedNew:match("|K|(%x+)|"))
    -- Without a seal key, entries are written plain and encrypted ones still read.
    assert.same(entry, codec.decode(sealedOld, ring(nil, old), where))
    assert.equal("E", assert(codec.encodeEntry(entry, ring(nil, old), where)):match("^1|%d+|%d+|(%a)|"))
  end)

  it("still reads entries written before key ids (kind C) under any of its keys", function()
    local aes = crypto.sha256("the old secret, 16+ chars")
    local head = "1|300000|1700000000123|C|"
    local payload = "200\nContent-Type:text/plain\n\nhello"
    local legacy = head .. assert(crypto.seal(aes, payload, head .. where))
    local out = assert(codec.decode(legacy, ring("the new secret, 16+ chars", "the old secret, 16+ chars"), where))
    assert.equal("hello", out.body)
    local _, _, foreign = codec.decode(legacy, ring("the new secret, 16+ chars"), where)
    assert.is_true(foreign)
  end)

  it("rejects malformed values without raising", function()
    for _, v in ipairs({ "", "garbage", "1|x|1|E|200\n\n", "1|1|1|E|20\n\n", "1|1|1|E|200\nNoColon\n\n", "1|1|1|E|200\nA:1",
      "1|1|1|Z|x", "1|1|1|V|", "1|1|1|C|short", "1|1|1|K|" .. key.sealId .. "|short", "1|1|1|K|short" }) do
      local encrypted = v:find("|C|", 1, true) or v:find("|K|", 1, true)
      local out, err = codec.decode(v, encrypted and key or nil, where)
      assert.is_nil(out, v)
      assert.is_string(err)
    end
  end)

  it("encodes Vary markers", function()
    local v = codec.encodeMarker({ "accept-encoding", "accept-language" }, 5, 60000)
    assert.equal("1|60000|5|V|accept-encoding,accept-language", v)
    assert.same({ kind = "V", vary = { "accept-encoding", "accept-language" }, storedAt = 5, ttl = 60000 }, codec.decode(v, key, where))
  end)

  it("binds an encrypted entry to its Redis key: a copy under another key or generation fails", function()
    local value = assert(codec.encodeEntry(entry, key, where))
    assert.same(entry, codec.decode(value, key, where))
    local out, err = codec.decode(value, key, "krs:redis-cache:v1:{3." .. string.rep("b", 64) .. "}:entry")
    assert.is_nil(out)
    assert.matches("failed authentication", err, 1, true)
    out, err = codec.decode(value, key, "krs:redis-cache:v1:{4." .. string.rep("a", 64) .. "}:entry")
    assert.is_nil(out)
    assert.matches("failed authentication", err, 1, true)
    -- Plain entries carry no authentication: where they are read from does not matter.
    assert.same(entry, codec.decode(assert(codec.encodeEntry(entry, nil, where)), nil, "elsewhere"))
  end)
end)

describe("redis-cache L1", function()
  local saved_ngx, clock
  before_each(function()
    saved_ngx = rawget(_G, "ngx")
    clock = 1000
    _G.ngx = setmetatable({ now = function() return clock end }, { __index = saved_ngx })
  end)
  after_each(function()
    l1.setMaxBytes(l1.DEFAULT_MAX_BYTES)
    _G.ngx = saved_ngx
  end)

  local O = l1.ENTRY_OVERHEAD

  it("bounds entries per cache (least recently used leave first) and expires them", function()
    local c = l1.newL1(2)
    l1.set(c, "a", "A", 10, 1)
    l1.set(c, "b", "B", 10, 1)
    assert.equal("A", l1.get(c, "a"))
    l1.set(c, "c", "C", 10, 1)
    assert.is_nil(l1.get(c, "b"))
    assert.equal("A", l1.get(c, "a"))
    assert.equal("C", l1.get(c, "c"))
    clock = clock + 10
    assert.is_nil(l1.get(c, "a"))
    assert.equal(1, l1.count(c))
  end)

  it("bounds the bytes of every cache of the worker together", function()
    l1.setMaxBytes(3 * (1000 + O))
    local one, two = l1.newL1(100), l1.newL1(100)
    l1.set(one, "a", "A", 60, 1000)
    l1.set(two, "b", "B", 60, 1000)
    l1.set(one, "c", "C", 60, 1000)
    assert.equal(3 * (1000 + O), l1.usedBytes())
    assert.equal("A", l1.get(one, "a"))
    -- "b" is now the least recently used of the worker: it leaves for "d".
    l1.set(two, "d", "D", 60, 1000)
    assert.is_nil(l1.get(two, "b"))
    assert.equal("A", l1.get(one, "a"))
    assert.equal("C", l1.get(one, "c"))
    assert.equal("D", l1.get(two, "d"))
    -- Larger than the whole budget: not kept, and nothing else is pushed out.
    l1.set(one, "huge", "H", 60, 4 * 1000)
    assert.is_nil(l1.get(one, "huge"))
    assert.equal(3, l1.count(one) + l1.count(two))
    -- Replacing an entry charges its new size only; a smaller budget evicts at once.
    l1.set(one, "a", "A2", 60, 10)
    assert.equal(2 * (1000 + O) + 10 + O, l1.usedBytes())
    l1.setMaxBytes(10 + O + 500)
    assert.equal("A2", l1.get(one, "a"))
    assert.equal(1, l1.count(one) + l1.count(two))
    l1.flush(one)
    l1.flush(two)
    assert.equal(0, l1.usedBytes())
  end)

  it("500 entries of 512 KiB stay within a 16 MiB budget", function()
    local c = l1.newL1(1000)
    for i = 1, 500 do l1.set(c, "k" .. i, i, 60, 512 * 1024) end
    assert.is_true(l1.usedBytes() <= l1.DEFAULT_MAX_BYTES)
    assert.equal(math.floor(l1.DEFAULT_MAX_BYTES / (512 * 1024 + O)), l1.count(c))
    assert.equal(500, l1.get(c, "k500"))
    assert.is_nil(l1.get(c, "k1"))
    l1.flush(c)
  end)
end)

describe("redis-cache configuration fingerprint", function()
  local plugin_schema = require("plugin_schema")("redis-cache")
  local saved_ngx
  before_each(function()
    saved_ngx = rawget(_G, "ngx")
    _G.ngx = setmetatable({ now = function() return 1000 end, null = saved_ngx and saved_ngx.null or {} }, { __index = saved_ngx })
  end)
  after_each(function()
    _G.ngx = saved_ngx
  end)

  it("is equal for equal configurations in other tables, whatever Kong adds to them", function()
    local a = plugin_schema.ok({ cache_ttl = 60, vary_headers = { "Accept" } })
    local b = plugin_schema.ok({ cache_ttl = 60, vary_headers = { "Accept" } })
    b.__seq__ = 7
    b.__key__ = "plugins:x"
    assert.equal(state.fingerprint(a), state.fingerprint(b))
    assert.not_equal(state.fingerprint(a), state.fingerprint(plugin_schema.ok({ cache_ttl = 61, vary_headers = { "Accept" } })))
    assert.not_equal(state.fingerprint(a), state.fingerprint(plugin_schema.ok({ cache_ttl = 60, vary_headers = { "Accept", "X" } })))
    assert.not_equal(state.fingerprint(plugin_schema.ok({ encryption_key = string.rep("a", 16) })),
      state.fingerprint(plugin_schema.ok({ encryption_key = string.rep("b", 16) })))
  end)

  it("keeps one state (and L1) per configuration across config tables; configure drops the others and sets the budget", function()
    local a = plugin_schema.ok({ l1_max_bytes = 1000 })
    local copy = plugin_schema.ok({ l1_max_bytes = 1000 })
    local noL1 = plugin_schema.ok({ l1_ttl = 0, l1_max_bytes = 10 })
    state.setConfigs({ a, noL1 })
    assert.equal(1000, l1.maxBytes())
    local s = state.prepare(a)
    assert.equal(s, state.prepare(copy))
    l1.set(s.l1, "k", "v", 60, 1)
    -- Another config list that still has it (say, a route was added): same state, same L1.
    state.setConfigs({ plugin_schema.ok({ l1_max_bytes = 1000 }), plugin_schema.ok({ cache_ttl = 9 }) })
    assert.equal(s, state.prepare(copy))
    assert.equal("v", l1.get(state.prepare(copy).l1, "k"))
    -- Gone from the list: its L1 is emptied and a config table that still points to it gets a new state.
    state.setConfigs({ plugin_schema.ok({ cache_ttl = 9 }) })
    assert.equal(l1.DEFAULT_MAX_BYTES, l1.maxBytes())
    assert.is_nil(l1.get(s.l1, "k"))
    assert.not_equal(s, state.prepare(a))
    state.setConfigs({})
  end)
end)

describe("redis-cache keyring and readable kinds", function()
  local plugin_schema = require("plugin_schema")("redis-cache")
  local K1, K2 = string.rep("1", 16), string.rep("2", 16)
  local function id(secret) return state.keyId(crypto.sha256(secret)) end
  local function kinds(arg)
    local out = {}
    for k in arg:gmatch("%S+") do out[#out + 1] = k end
    table.sort(out)
    return out
  end
  local saved_ngx
  before_each(function()
    saved_ngx = rawget(_G, "ngx")
    _G.ngx = setmetatable({ now = function() return 1000 end, null = saved_ngx and saved_ngx.null or {} }, { __index = saved_ngx })
  end)
  after_each(function()
    state.setConfigs({})
    _G.ngx = saved_ngx
  end)

  it("without keys: plain entries only", function()
    local s = state.prepare(plugin_schema.ok({}))
    assert.is_nil(s.keyring)
    assert.same({ "E" }, kinds(s.readableArg))
  end)

  it("encryption_key and decryption_keys: every key id and legacy C, never plain", function()
    local s = state.prepare(plugin_schema.ok({ encryption_key = K2, decryption_keys = { K1 } }))
    assert.equal(id(K2), s.keyring.sealId)
    assert.same(kinds("C K" .. id(K1) .. " K" .. id(K2)), kinds(s.readableArg))
  end)

  -- The documented first step of turning encryption on: write plain, read sealed entries.
  it("decryption_keys alone: entries stay plain, and entries sealed under those keys are read", function()
    local s = state.prepare(plugin_schema.ok({ decryption_keys = { K1 } }))
    assert.is_table(s.keyring)
    assert.is_nil(s.keyring.sealKey)
    assert.same(kinds("E C K" .. id(K1)), kinds(s.readableArg))
    local entry = { kind = "E", status = 200, storedAt = 1700000000000, ttl = 1000, headers = {}, body = "b" }
    local sealed = codec.encodeEntry(entry, state.prepare(plugin_schema.ok({ encryption_key = K1 })).keyring, "rk")
    local opened = codec.decode(sealed, s.keyring, "rk")
    assert.equal("b", opened.body)
    local plain = codec.encodeEntry(entry, s.keyring, "rk")
    assert.matches("^1|1000|1700000000000|E|", plain)
    assert.equal("b", codec.decode(plain, s.keyring, "rk").body)
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

describe("redis-cache writer queue", function()
  -- The writer alone, on stand-ins for the Redis client, the log and the timer: what it
  -- sends, in which order, and what it drops when Redis cannot keep up.
  local STUBBED = { "krs.redis.client", "krs.redis.fault", "kong.plugins.redis-cache.storage", "kong.plugins.redis-cache.writer" }
  local MIB = 1024 * 1024
  local saved, saved_ngx
  local writer, sent, timers, logs

  before_each(function()
    saved = {}
    for _, name in ipairs(STUBBED) do saved[name] = package.loaded[name] end
    saved_ngx = rawget(_G, "ngx")
    sent, timers, logs = {}, {}, {}
    package.loaded["krs.redis.client"] = {
      poolName = function() return "pool" end,
      pipeline = function(_, calls)
        local replies = {}
        for i, call in ipairs(calls) do
          sent[#sent + 1] = call
          replies[i] = "OK"
        end
        return replies
      end,
    }
    package.loaded["krs.redis.fault"] = { logThrottled = function(_, message) logs[#logs + 1] = message end }
    package.loaded["kong.plugins.redis-cache.storage"] = { replyError = function() return nil end }
    package.loaded["kong.plugins.redis-cache.writer"] = nil
    _G.ngx = setmetatable({ timer = { at = function(_, fn) timers[#timers + 1] = fn return true end } }, { __index = saved_ngx })
    writer = require("kong.plugins.redis-cache.writer")
  end)

  after_each(function()
    for _, name in ipairs(STUBBED) do package.loaded[name] = saved[name] end
    _G.ngx = saved_ngx
  end)

  local redis = {}
  local function job(name) return function() return { name } end end
  local function drain()
    assert.equal(1, #timers)
    local run = table.remove(timers)
    run(false)
  end
  local function count(prefix)
    local n = 0
    for _, call in ipairs(sent) do if call:sub(1, #prefix) == prefix then n = n + 1 end end
    return n
  end

  it("drops stores past 64 MiB of queued bodies but still sends their lock releases", function()
    for i = 1, 64 do writer.enqueueStore(redis, MIB, job("store " .. i), job("release " .. i)) end
    assert.same({}, logs)
    writer.enqueueStore(redis, MIB, job("store 65"), job("release 65"))
    writer.enqueueStore(redis, 1, job("store 66"), nil)
    writer.enqueueRelease(redis, job("release 67"))
    assert.matches("cache write queue full", logs[1], 1, true)
    drain()
    assert.equal(64, count("store "))
    assert.equal("store 64", sent[64])
    assert.same({ "release 65", "release 67" }, { sent[65], sent[66] })
    assert.equal(66, #sent)
    -- Sent: room again.
    writer.enqueueStore(redis, MIB, job("store 68"), job("release 68"))
    drain()
    assert.equal("store 68", sent[#sent])
  end)

  it("drops stores past 10000 queued writes; releases queue up to 100000, then locks are left to expire", function()
    for i = 1, 10000 do writer.enqueueStore(redis, 10, job("store " .. i), job("release " .. i)) end
    assert.same({}, logs)
    writer.enqueueStore(redis, 10, job("store 10001"), job("release 10001"))
    assert.equal(1, #logs)
    for i = 1, 89999 do writer.enqueueRelease(redis, job("release x" .. i)) end
    assert.equal(1, #logs)
    writer.enqueueRelease(redis, job("release lost"))
    assert.equal(2, #logs)
    assert.matches("a lock is left to expire", logs[2], 1, true)
    drain()
    assert.equal(10000, count("store "))
    assert.equal(90000, count("release "))
    assert.equal("release 10001", sent[10001])
    assert.equal("release x89999", sent[#sent])
  end)

  it("always takes a store into an empty queue, whatever its size", function()
    writer.enqueueStore(redis, 100 * MIB, job("store big"), job("release big"))
    writer.enqueueStore(redis, 1, job("store small"), job("release small"))
    drain()
    assert.same({ "store big", "release small" }, sent)
  end)
end)

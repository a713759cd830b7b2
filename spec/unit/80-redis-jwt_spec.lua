-- redis-jwt: its schema (Kong jwt's defaults), the token parser with Kong's error
-- strings, the registered-claim checks, and krs.crypto.sign against tokens signed by
-- Node's crypto for every algorithm (one flipped bit anywhere fails), keys of the wrong
-- type or size, and JOSE r||s versus DER ECDSA signatures.
local cjson = require("cjson")

-- Plain LuaJIT has no ngx: the parser needs only decode_base64.
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function decode_base64(s)
  if #s % 4 ~= 0 or s:find("[^%w%+/=]") then return nil end
  local out, bits, n = {}, 0, 0
  for i = 1, #s do
    local c = s:sub(i, i)
    if c == "=" then break end
    bits = bits * 64 + (B64:find(c, 1, true) - 1)
    n = n + 6
    if n >= 8 then
      n = n - 8
      out[#out + 1] = string.char(math.floor(bits / 2 ^ n) % 256)
      bits = bits % 2 ^ n
    end
  end
  return table.concat(out)
end

local saved_ngx
setup(function()
  saved_ngx = rawget(_G, "ngx")
  _G.ngx = setmetatable({ decode_base64 = decode_base64 }, { __index = saved_ngx })
end)
teardown(function() _G.ngx = saved_ngx end)

local function b64url(bytes)
  local out = {}
  for i = 1, #bytes, 3 do
    local a, b, c = bytes:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = 2 + (b and 1 or 0) + (c and 1 or 0)
    for j = 1, chars do
      local idx = math.floor(n / 2 ^ (6 * (4 - j))) % 64
      out[#out + 1] = B64:sub(idx + 1, idx + 1)
    end
  end
  return (table.concat(out):gsub("[+/]", { ["+"] = "-", ["/"] = "_" }))
end

-- Keys and tokens from Node's crypto (an independent JOSE implementation's primitives).
local VECTORS_JS = [==[
const c = require("crypto");
const b64u = (b) => Buffer.from(b).toString("base64url");
const out = [];
const specs = {
  RS256: ["rsa", { modulusLength: 2048 }, "sha256"], RS384: ["rsa", { modulusLength: 2048 }, "sha384"], RS512: ["rsa", { modulusLength: 2048 }, "sha512"],
  PS256: ["rsa", { modulusLength: 2048 }, "sha256"], PS384: ["rsa", { modulusLength: 2048 }, "sha384"], PS512: ["rsa", { modulusLength: 2048 }, "sha512"],
  ES256: ["ec", { namedCurve: "P-256" }, "sha256"], ES384: ["ec", { namedCurve: "P-384" }, "sha384"], ES512: ["ec", { namedCurve: "P-521" }, "sha512"],
  EdDSA: ["ed25519", {}, null],
};
const small = c.generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey.export({ type: "spki", format: "pem" });
for (const [alg, [kind, opts, hash]] of Object.entries(specs)) {
  const { publicKey, privateKey } = c.generateKeyPairSync(kind, opts);
  const input = b64u(JSON.stringify({ alg, typ: "JWT" })) + "." + b64u(JSON.stringify({ iss: "k", sub: "u", exp: 4102444800 }));
  let sig;
  if (alg.startsWith("PS")) sig = c.sign(hash, Buffer.from(input), { key: privateKey, padding: c.constants.RSA_PKCS1_PSS_PADDING, saltLength: c.constants.RSA_PSS_SALTLEN_DIGEST });
  else if (alg.startsWith("ES")) sig = c.sign(hash, Buffer.from(input), { key: privateKey, dsaEncoding: "ieee-p1363" });
  else sig = c.sign(hash, Buffer.from(input), privateKey);
  const der = alg.startsWith("ES") ? b64u(c.sign(hash, Buffer.from(input), privateKey)) : null;
  out.push({ alg, pem: publicKey.export({ type: "spki", format: "pem" }), token: input + "." + b64u(sig), der });
}
for (const [alg, hash] of [["HS256", "sha256"], ["HS384", "sha384"], ["HS512", "sha512"]]) {
  const secret = "s3cr3t-" + alg;
  const input = b64u(JSON.stringify({ alg, typ: "JWT" })) + "." + b64u(JSON.stringify({ iss: "k" }));
  out.push({ alg, secret, token: input + "." + b64u(c.createHmac(hash, secret).update(input).digest()) });
}
console.log(JSON.stringify({ vectors: out, small }));
]==]

local vectors, small_rsa
local function load_vectors()
  if vectors then return end
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(VECTORS_JS)
  f:close()
  local p = assert(io.popen("node " .. path))
  local data = cjson.decode(p:read("*a"))
  p:close()
  os.remove(path)
  vectors, small_rsa = data.vectors, data.small
end

local function flip(s, pos)
  local b = s:byte(pos)
  return s:sub(1, pos - 1) .. string.char(bit.bxor(b, 1)) .. s:sub(pos + 1)
end

describe("redis-jwt schema", function()
  local plugin_schema = require("plugin_schema")("redis-jwt")
  it("fills Kong jwt's defaults and the suite's own", function()
    local conf = plugin_schema.ok({})
    assert.same({ "jwt" }, conf.uri_param_names)
    assert.same({}, conf.cookie_names)
    assert.same({ "authorization" }, conf.header_names)
    assert.equal("iss", conf.key_claim_name)
    assert.is_false(conf.secret_is_base64)
    assert.is_true(conf.run_on_preflight)
    assert.equal(0, conf.maximum_expiration)
    assert.equal(0, conf.clock_skew)
    assert.is_false(conf.fault_tolerant)
  end)
  it("refuses claims other than exp and nbf, and maximum_expiration without exp", function()
    assert.matches("claims_to_verify", plugin_schema.error_text({ claims_to_verify = { "iat" } }))
    plugin_schema.errors_of({ maximum_expiration = 60 })
    plugin_schema.ok({ maximum_expiration = 60, claims_to_verify = { "exp" } })
  end)
end)

describe("redis-jwt token parser", function()
  local token = require("kong.plugins.redis-jwt.token")
  local function t(header, claims, sig)
    return b64url(header) .. "." .. b64url(claims) .. "." .. (sig or "c2ln")
  end

  it("takes a well-formed token apart", function()
    local tok, err = token.parse(t('{"alg":"HS256"}', '{"iss":"a","exp":1}'))
    assert.is_nil(err)
    assert.equal("HS256", tok.alg)
    assert.equal("a", tok.claims.iss)
    assert.equal("sig", tok.signature)
  end)

  it("refuses bad input with Kong's reasons, never raising", function()
    local cases = {
      { "a.b", "invalid JSON" },
      { "a.b.c.d", "invalid JSON" },
      { t('{"alg":"HS256"}', '{}'):gsub("^..", "!!"), "invalid JSON" },
      { t('[1,2]', '{}'), "invalid JSON" },
      { t('"str"', '{}'), "invalid JSON" },
      { t('{"alg":"HS256"}', '{bad'), "invalid JSON" },
      { t('{"typ":"JWT"}', '{}'), "invalid alg" },
      { t('{"alg":"none"}', '{}'), "invalid alg" },
      { t('{"alg":"HS1024"}', '{}'), "invalid alg" },
      { t('{"alg":5}', '{}'), "invalid alg" },
      { t('{"alg":"HS256"}', '[1]'), "invalid claims" },
      { t('{"alg":"HS256"}', '3'), "invalid claims" },
      { t('{"alg":"HS256"}', '{}', "%%%"), "invalid signature" },
      { t('{"alg":"HS256"}', '{}', ""), "invalid signature" },
      { string.rep("a", 65536), "invalid JSON" },
      { t('{"alg":"HS256","kid":"' .. string.rep("{:", 5000) .. '"}', '{}'), nil },
    }
    for _, case in ipairs(cases) do
      local ok, tok, err = pcall(token.parse, case[1])
      assert.is_true(ok, tostring(tok))
      assert.equal(case[2], err, case[1]:sub(1, 80))
      if case[2] then assert.is_nil(tok) end
    end
  end)

  it("checks exp and nbf with Kong's messages and clock_skew", function()
    assert.same({ exp = "token expired" }, token.verifyClaims({ exp = 100 }, { "exp" }, 100, 0))
    assert.is_nil(token.verifyClaims({ exp = 100 }, { "exp" }, 100, 1))
    assert.is_nil(token.verifyClaims({ exp = 101 }, { "exp" }, 100, 0))
    assert.same({ exp = "must be a number" }, token.verifyClaims({ exp = "101" }, { "exp" }, 100, 0))
    assert.same({ nbf = "token not valid yet" }, token.verifyClaims({ nbf = 101 }, { "nbf" }, 100, 0))
    assert.is_nil(token.verifyClaims({ nbf = 101 }, { "nbf" }, 100, 1))
    assert.is_nil(token.verifyClaims({ exp = "x" }, {}, 100, 0))
    assert.is_true(token.exceedsMaximum({}, 60, 100))
    assert.is_true(token.exceedsMaximum({ exp = 161 }, 60, 100))
    assert.is_false(token.exceedsMaximum({ exp = 160 }, 60, 100))
  end)
end)

describe("krs.crypto.sign", function()
  local sign = require("krs.crypto.sign")
  local token = require("kong.plugins.redis-jwt.token")
  setup(load_vectors)

  it("verifies tokens signed by Node's crypto for every algorithm; one flipped bit anywhere fails", function()
    local seen = {}
    for _, v in ipairs(vectors) do
      seen[v.alg] = true
      local key
      if v.pem ~= cjson.null and v.pem then
        local err
        key, err = sign.publicKey(v.pem)
        assert.is_nil(err, v.alg)
        assert.is_nil(sign.keyMismatch(v.alg, key), v.alg)
      end
      local secret = v.secret ~= cjson.null and v.secret or nil
      local tok = assert(token.parse(v.token))
      assert.is_true(sign.verify(v.alg, tok.signingInput, tok.signature, secret, key), v.alg)
      local dot2 = #tok.signingInput + 1
      for _, pos in ipairs({ 2, dot2 - 3, dot2 + 3, #v.token - 1 }) do
        local altered = flip(v.token, pos)
        local t2 = token.parse(altered)
        if t2 then
          assert.is_false(sign.verify(v.alg, t2.signingInput, t2.signature, secret, key), v.alg .. " flipped at " .. pos)
        end
      end
      -- the signature of one algorithm never verifies under another of the same family
      if v.alg == "RS256" then assert.is_false(sign.verify("RS512", tok.signingInput, tok.signature, nil, key)) end
      if v.alg == "PS256" then assert.is_false(sign.verify("RS256", tok.signingInput, tok.signature, nil, key)) end
    end
    for _, alg in ipairs(sign.ALGORITHMS) do assert.is_true(seen[alg], alg) end
  end)

  it("refuses DER ECDSA signatures (JOSE signs r||s) and keys of the wrong type or size", function()
    local by = {}
    for _, v in ipairs(vectors) do by[v.alg] = v end
    local es = by.ES256
    local tok = token.parse(es.token)
    local key = sign.publicKey(es.pem)
    local der = token.base64urlDecode(es.der)
    assert.is_false(sign.verify("ES256", tok.signingInput, der, nil, key))
    assert.is_false(sign.verify("ES384", tok.signingInput, tok.signature, nil, key))
    assert.matches("needs a 384%-bit curve", sign.keyMismatch("ES384", key))
    assert.matches("needs an RSA key", sign.keyMismatch("RS256", key))
    assert.matches("needs an EC key", sign.keyMismatch("ES256", sign.publicKey(by.RS256.pem)))
    assert.matches("Ed25519", sign.keyMismatch("EdDSA", sign.publicKey(by.RS256.pem)))
    assert.matches("at least 2048 bits", sign.keyMismatch("RS256", sign.publicKey(small_rsa)))
    local rs = token.parse(by.RS256.token)
    assert.is_false(sign.verify("RS256", rs.signingInput, rs.signature, nil, sign.publicKey(small_rsa)))
    -- HMAC with the wrong secret or a truncated MAC
    local hs = token.parse(by.HS256.token)
    assert.is_true(sign.verify("HS256", hs.signingInput, hs.signature, by.HS256.secret))
    assert.is_false(sign.verify("HS256", hs.signingInput, hs.signature, "other"))
    assert.is_false(sign.verify("HS256", hs.signingInput, hs.signature:sub(1, 16), by.HS256.secret))
  end)

  it("refuses what is not a PEM public key, without raising", function()
    for _, pem in ipairs({ "", "hello", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", string.rep("x", 20000) }) do
      local key, err = sign.publicKey(pem)
      assert.is_nil(key)
      assert.is_string(err)
    end
  end)

  it("converts JOSE r||s to DER, leading zeros and high bits included", function()
    local r = string.rep("\0", 31) .. "\1"
    local s = "\128" .. string.rep("\2", 31)
    local der = sign.joseToDer(r .. s, 32)
    assert.equal("\48\38\2\1\1\2\33\0\128" .. string.rep("\2", 31), der)
    local long = sign.joseToDer(string.rep("\255", 132), 66)
    assert.equal("\48\129\138", long:sub(1, 3))
  end)
end)

describe("redis-jwt helpers", function()
  local util = require("kong.plugins.redis-jwt.util")
  local token = require("kong.plugins.redis-jwt.token")

  it("finds the token of a Bearer header as Kong does, in any case", function()
    assert.equal("abc.def.ghi", util.bearerToken("Bearer abc.def.ghi"))
    assert.equal("abc", util.bearerToken("bearer    abc"))
    assert.equal("abc", util.bearerToken("BEARER abc"))
    assert.equal("abc", util.bearerToken("Basic xyz, Bearer abc"))
    assert.is_nil(util.bearerToken("Basic xyz"))
    assert.is_nil(util.bearerToken("Bearer"))
    assert.is_nil(util.bearerToken("Bearerabc"))
  end)

  it("builds Kong's challenges, escaping the realm", function()
    assert.same({ "Bearer", 'Bearer error="invalid_token"' }, { util.challenges(nil) })
    assert.same({ 'Bearer realm="a\\"b"', 'Bearer realm="a\\"b" error="invalid_token"' }, { util.challenges('a"b') })
  end)

  it("names a token's jti as krs jwt does: strings as they are, integers in decimal", function()
    assert.equal("abc", token.jtiOf({ jti = "abc" }))
    assert.equal("123", token.jtiOf({ jti = 123 }))
    assert.is_nil(token.jtiOf({ jti = 1.5 }))
    assert.is_nil(token.jtiOf({ jti = "" }))
    assert.is_nil(token.jtiOf({ jti = { 1 } }))
  end)
end)

-- krs.keys: the key schema and the escaping of client-supplied parts.
local digest = require "ngx_digest"
local keys = require "krs.keys"

describe("krs.keys", function()
  it("builds versioned keys with one hash tag", function()
    assert.are.equal("krs:redis-rate-limit:v1:{abc}", keys.key("redis-rate-limit", "abc"))
    assert.are.equal("krs:p:v1:{t}:a:b", keys.key("p", "t", "a", "b"))
  end)

  it("keeps short, plain values as they are", function()
    for _, v in ipairs({ "alice", "127.0.0.1", "user@example.com", "a-b_c.d", string.rep("x", 64) }) do
      assert.are.equal(v, keys.part(v))
    end
  end)

  it("hashes anything that could break out of its part, and anything long", function()
    local inputs = { "a:b", "{tag}", "}", "{", "#x", "", "with space", "new\nline", "ünïcode",
      string.rep("x", 65), string.rep("y", 10000), "a\0b" }
    for _, v in ipairs(inputs) do
      local p = keys.part(v)
      assert.are.equal("#", p:sub(1, 1), v)
      assert.are.equal(28, #p)
      assert.is_nil(p:find("[:{}%s]"), p)
      -- base64url of the value's SHA-1: the same bytes nginx's ngx.sha1_bin gives
      local expected = digest.encode_base64(digest.sha1_bin(v), true):gsub("[+/]", { ["+"] = "-", ["/"] = "_" })
      assert.are.equal("#" .. expected, p)
    end
  end)

  it("never lets a kept value look like a hashed one", function()
    -- A literal "#..." is itself hashed, so it cannot collide with a hash output.
    local hashed = keys.part("a:b")
    assert.are_not.equal(hashed, keys.part(hashed))
  end)

  it("maps different inputs to different parts", function()
    local seen = {}
    for i = 1, 2000 do
      local v = (i % 2 == 0) and ("k:" .. i) or ("k" .. i)
      local p = keys.part(v)
      assert.is_nil(seen[p], v)
      seen[p] = true
    end
  end)
end)

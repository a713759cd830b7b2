-- redis-ip-access: its schema (through the local gateway's Kong validator) and the
-- address parser and compiled matcher every worker uses.
local ip = require("kong.plugins.redis-ip-access.ip")

local plugin_schema = require("plugin_schema")("redis-ip-access")
local ok, error_text = plugin_schema.ok, plugin_schema.error_text

local function matcher(list)
  return ip.compileList(list)
end

local function matches(list, address)
  local bin = assert(ip.parseAddress(address), "not an address: " .. address)
  return ip.contains(matcher(list), bin)
end

describe("redis-ip-access schema", function()
  it("takes Kong ip-restriction's fields", function()
    local c = ok({ allow = { "10.0.0.0/8", "2001:db8::/32" }, deny = { "10.1.2.3" }, status = 401, message = "go away" })
    assert.same({ "10.0.0.0/8", "2001:db8::/32" }, c.allow)
    assert.same({ "10.1.2.3" }, c.deny)
    assert.equal(401, c.status)
    assert.equal("go away", c.message)
  end)

  it("fills the suite's defaults: lists sync every second, fail open, bans off", function()
    local c = ok({ deny = { "10.0.0.1" } })
    assert.equal(1, c.sync_interval)
    assert.is_true(c.fault_tolerant)
    assert.equal(0, c.ban.threshold)
    assert.same({ 401, 403, 429 }, c.ban.statuses)
    -- Its own small list: sharing the hand-managed "blocklist" made every ban reload it whole.
    assert.equal("bans", c.ban.list)
    assert.equal("127.0.0.1", c.redis.host)
  end)

  it("refuses bad list names, naming them", function()
    assert.matches("invalid list name: 'a b'", error_text({ redis_deny_lists = { "a b" } }))
    assert.matches("invalid list name: 'x:y'", error_text({ deny = { "1.2.3.4" }, ban = { threshold = 3, list = "x:y" } }))
    assert.matches("invalid list name", error_text({ redis_allow_lists = { string.rep("a", 65) } }))
  end)

  it("needs allow or deny, as Kong's at_least_one_of", function()
    assert.matches("at least one of", error_text({}))
  end)

  for _, bad in ipairs({ "1.2.3.4/33", "::1/129", "1.2.3", "fe80::1%eth0", "1.2.3.256", "1:2:3:4:5:6:7:8:9", "1::2::3", "::g", "10.0.0.0/", "10.0.0.0/-1", "a.b.c.d",
    -- Leading zeros, refused as by Kong (inet_pton): elsewhere they may be read as octal.
    "01.2.3.4", "1.2.3.004", "1.2.3.4/08", "10.0.0.0/024", "::ffff:01.2.3.4", "2001:db8::/032" }) do
    it("refuses '" .. bad .. "' and names it", function()
      local text = error_text({ allow = { "127.0.0.1", bad } })
      assert.matches("'" .. bad:gsub("%p", "%%%0") .. "'", text)
      text = error_text({ deny = { bad } })
      assert.matches("invalid ip or cidr range", text)
    end)
  end

  it("refuses an empty entry", function()
    assert.matches("config.allow.2", error_text({ allow = { "127.0.0.1", "" } }))
    local first, _, err = ip.parseEntry("")
    assert.is_nil(first)
    assert.equal("invalid ip or cidr range: ''", err)
  end)

  it("refuses statuses kong.response.error cannot send", function()
    assert.truthy(error_text({ deny = { "1.2.3.4" }, status = 200 }))
    assert.truthy(error_text({ deny = { "1.2.3.4" }, status = 600 }))
  end)
end)

describe("redis-ip-access addresses", function()
  it("parses IPv4, IPv6 and mapped IPv6 into 4 or 16 bytes", function()
    assert.equal("\203\0\113\7", ip.parseAddress("203.0.113.7"))
    assert.equal("\203\0\113\7", ip.parseAddress("::ffff:203.0.113.7"))
    assert.equal("\203\0\113\7", ip.parseAddress("0:0:0:0:0:ffff:cb00:7107"))
    assert.equal(string.rep("\0", 15) .. "\1", ip.parseAddress("::1"))
    assert.equal(16, #ip.parseAddress("2001:db8::1"))
    assert.equal(ip.parseAddress("2001:db8:0:0:0:0:0:1"), ip.parseAddress("2001:DB8::1"))
    assert.equal(string.rep("\0", 16), ip.parseAddress("::"))
  end)

  it("returns nothing for garbage, zone ids and oversized input without raising", function()
    for _, bad in ipairs({ "", "garbage", "fe80::1%eth0", "1.2.3", "unix:", "::ffff:1.2.3", string.rep("1.", 1000), string.rep(":", 5000), "1.2.3.4, 5.6.7.8", 42 }) do
      assert.is_nil(ip.parseAddress(bad))
    end
  end)
end)

describe("redis-ip-access matcher", function()
  it("matches CIDRs, single addresses and their edges", function()
    local list = { "10.0.0.0/8", "192.168.1.7", "2001:db8::/32" }
    assert.is_true(matches(list, "10.0.0.0"))
    assert.is_true(matches(list, "10.255.255.255"))
    assert.is_false(matches(list, "11.0.0.0"))
    assert.is_false(matches(list, "9.255.255.255"))
    assert.is_true(matches(list, "192.168.1.7"))
    assert.is_false(matches(list, "192.168.1.8"))
    assert.is_true(matches(list, "2001:db8:ffff::1"))
    assert.is_false(matches(list, "2001:db9::"))
  end)

  it("matches a mapped IPv6 client with its IPv4 rules, and IPv4 written as mapped CIDRs", function()
    assert.is_true(matches({ "203.0.113.0/24" }, "::ffff:203.0.113.7"))
    assert.is_true(matches({ "::ffff:203.0.113.0/120" }, "203.0.113.9"))
    assert.is_false(matches({ "203.0.113.0/24" }, "::ffff:203.0.114.7"))
  end)

  it("keeps the families apart: an IPv6 /0 is not an IPv4 rule", function()
    assert.is_false(matches({ "::/0" }, "1.2.3.4"))
    assert.is_true(matches({ "0.0.0.0/0" }, "1.2.3.4"))
    assert.is_true(matches({ "::/0" }, "::1"))
  end)

  it("takes CIDRs with host bits set as their network (as Kong)", function()
    assert.is_true(matches({ "10.1.2.3/16" }, "10.1.200.1"))
  end)

  it("merges nested and overlapping entries: a block inside a larger one is left out", function()
    local list = { "10.0.0.0/24", "10.0.0.0/8", "10.0.0.5", "10.1.0.0/16", "12.0.0.0/8" }
    local m = matcher(list)
    -- what the /8s hold is left out: one set, of /8 blocks, with 10 and 12
    assert.same({ 2 ^ 24 }, m.v4.sizes)
    assert.same({ [10] = true, [12] = true }, m.v4.sets[1])
    assert.is_true(matches(list, "10.200.0.1"))
    assert.is_false(matches(list, "11.0.0.1"))
    assert.is_true(matches(list, "12.0.0.1"))
  end)

  it("matches a span that is no single block (cut into blocks) and the whole space (0.0.0.0/0)", function()
    local m = ip.compile({ "\10\0\0\1" }, { "\10\0\0\6" })
    for last = 0, 7 do
      assert.equal(last >= 1 and last <= 6, ip.contains(m, "\10\0\0" .. string.char(last)), last)
    end
    assert.is_true(matches({ "0.0.0.0/0" }, "255.255.255.255"))
    assert.is_true(matches({ "0.0.0.0/0" }, "0.0.0.0"))
  end)

  it("agrees with a linear scan over many random entries and addresses", function()
    math.randomseed(12345)
    local list, ranges = {}, {}
    for i = 1, 2000 do
      local a, b, c = math.random(0, 255), math.random(0, 255), math.random(0, 255)
      local prefix = math.random(8, 32)
      list[i] = string.format("%d.%d.%d.0/%d", a, b, c, prefix)
      local first, last = ip.parseEntry(list[i])
      ranges[i] = { first, last }
    end
    local m = matcher(list)
    for _ = 1, 5000 do
      local addr = string.format("%d.%d.%d.%d", math.random(0, 255), math.random(0, 255), math.random(0, 255), math.random(0, 255))
      local bin = ip.parseAddress(addr)
      local expected = false
      for _, r in ipairs(ranges) do
        if bin >= r[1] and bin <= r[2] then expected = true break end
      end
      assert.equal(expected, ip.contains(m, bin), addr)
    end
  end)

  it("an empty matcher matches nothing", function()
    assert.is_false(ip.contains(matcher({}), ip.parseAddress("1.2.3.4")))
  end)
end)

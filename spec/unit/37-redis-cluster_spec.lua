-- krs.redis.slot, the cluster/sentinel fields of config.redis, and the cluster client's
-- routing (MOVED, ASK, redirection limit, pipelines split per node, NOSCRIPT per node)
-- on a scripted fake lua-resty-redis: pure logic, no sockets. The real cluster is in
-- spec/integration/16-redis-cluster.test.ts.
local slot = require("krs.redis.slot")

describe("krs.redis.slot", function()
  it("CRC16 is CRC16/XMODEM (the Redis Cluster specification's check value)", function()
    assert.are.equal(0x31C3, slot.crc16("123456789"))
    assert.are.equal(0, slot.crc16(""))
  end)

  it("hashes the hash tag: the part between the first { and the next }, when not empty", function()
    assert.are.equal(12182, slot.keySlot("foo"))
    assert.are.equal(slot.keySlot("user1000"), slot.keySlot("{user1000}.following"))
    assert.are.equal(slot.keySlot("{user1000}.following"), slot.keySlot("{user1000}.followers"))
    assert.are.equal(slot.keySlot("bar"), slot.keySlot("foo{bar}{zap}"))
    assert.are.equal(slot.keySlot("{bar"), slot.keySlot("foo{{bar}}zap"))
    -- An empty tag, or none closed: the whole key.
    assert.are.equal(slot.crc16("foo{}{bar}") % 16384, slot.keySlot("foo{}{bar}"))
    assert.are.equal(slot.crc16("foo{bar") % 16384, slot.keySlot("foo{bar"))
  end)

  it("every key of one suite script call has one slot", function()
    local keys = require("krs.keys")
    local a = keys.key("redis-cache", "0." .. string.rep("ab", 32), "entry")
    local b = keys.key("redis-cache", "0." .. string.rep("ab", 32), "fill")
    assert.are.equal(slot.keySlot(a), slot.keySlot(b))
  end)
end)

describe("config.redis cluster and sentinel fields", function()
  local s = require("plugin_schema")("redis-rate-limit")
  local function conf(redis) return { minute = 10, redis = redis } end

  it("leaves existing configs as they were: no cluster, no sentinel, redirections default 5", function()
    local out = s.ok(conf({ host = "10.0.0.1", port = 6380 }))
    assert.are.equal("10.0.0.1", out.redis.host)
    assert.are.equal(5, out.redis.cluster_max_redirections)
    assert.is_nil(out.redis.cluster_nodes)
    assert.is_nil(out.redis.sentinel_master)
  end)

  it("takes cluster_nodes ({ip, port}, defaults filled)", function()
    local out = s.ok(conf({ cluster_nodes = { { ip = "10.0.0.1", port = 7000 }, { ip = "10.0.0.2" } }, cluster_max_redirections = 3 }))
    assert.are.equal(7000, out.redis.cluster_nodes[1].port)
    assert.are.equal(6379, out.redis.cluster_nodes[2].port)
    assert.are.equal(3, out.redis.cluster_max_redirections)
  end)

  it("takes the sentinel fields together", function()
    local out = s.ok(conf({ sentinel_master = "mymaster", sentinel_role = "master", sentinel_nodes = { { host = "10.0.0.1", port = 26379 } }, sentinel_password = "x" }))
    assert.are.equal("mymaster", out.redis.sentinel_master)
    assert.are.equal(26379, out.redis.sentinel_nodes[1].port)
  end)

  it("refuses cluster and sentinel at once, with a clear error", function()
    local text = s.error_text(conf({ cluster_nodes = { { ip = "10.0.0.1", port = 7000 } }, sentinel_master = "m", sentinel_role = "any", sentinel_nodes = { { host = "10.0.0.2" } } }))
    assert.matches("mutually exclusive", text)
    assert.matches("cluster_nodes", text)
  end)

  it("refuses part of the sentinel fields", function()
    local text = s.error_text(conf({ sentinel_master = "m" }))
    assert.matches("all or none of these fields must be set", text)
    assert.matches("sentinel_nodes", text)
  end)

  it("refuses an unknown sentinel_role, an empty cluster_nodes and a database other than 0 on a cluster", function()
    assert.matches("sentinel_role", s.error_text(conf({ sentinel_master = "m", sentinel_role = "leader", sentinel_nodes = { { host = "h" } } })))
    assert.matches("cluster_nodes", s.error_text(conf({ cluster_nodes = {} })))
    assert.matches("Redis Cluster has only database 0", s.error_text(conf({ cluster_nodes = { { ip = "10.0.0.1", port = 7000 } }, database = 2 })))
  end)
end)

describe("krs.redis.client on a cluster (scripted fake lua-resty-redis)", function()
  local client, servers, log, saved_ngx
  -- ngx.thread on coroutines: spawn runs a thread until it waits on its socket, wait resumes it to its end.
  local light = setmetatable({}, { __mode = "k" })
  local fake_thread = {
    spawn = function(fn, ...)
      local co = coroutine.create(fn)
      light[co] = true
      local function keep(...) return { n = select("#", ...), ... } end
      local t = { co = co, keep = keep }
      t.res = keep(coroutine.resume(co, ...))
      return t
    end,
    wait = function(t)
      while coroutine.status(t.co) ~= "dead" do t.res = t.keep(coroutine.resume(t.co)) end
      return unpack(t.res, 1, t.res.n)
    end,
  }
  local clock = 1000

  -- Each fake server: which slots it serves, its keys, what it answers.
  local function new_server(addr, opts)
    servers[addr] = { addr = addr, owns = opts.owns, scripts = opts.scripts or {}, answer = opts.answer }
  end

  local function fake_redis()
    local red = {}
    red.__index = red
    local module = {}
    function module.new()
      return setmetatable({ queue = nil }, red)
    end
    function red:set_timeout() end
    function red:connect(host, port)
      self.server = servers[host .. ":" .. port]
      if not self.server then return nil, "connection refused" end
      return 1
    end
    function red:get_reused_times() return 1 end
    function red:set_keepalive() return 1 end
    function red:close() return 1 end
    local function exec(self, cmd, ...)
      local args = { ... }
      log[#log + 1] = self.server.addr .. " " .. cmd .. (args[1] and (" " .. tostring(args[1])) or "")
      if cmd == "cluster" then
        local out = {}
        for _, srv in pairs(servers) do
          if srv.owns then
            local host, port = srv.addr:match("^(.*):(%d+)$")
            out[#out + 1] = { srv.owns[1], srv.owns[2], { host, tonumber(port), "id" } }
          end
        end
        return out
      end
      if cmd == "asking" then self.asking = true return "OK" end
      local asking = self.asking
      self.asking = nil
      if self.server.answer then
        local res, err = self.server.answer(cmd, args, asking)
        if res ~= nil or err ~= nil then return res, err end
      end
      if cmd == "evalsha" and not self.server.scripts[args[1]] then return false, "NOSCRIPT No matching script" end
      if cmd == "eval" then return "evaled" end
      return cmd .. "@" .. self.server.addr
    end
    for _, cmd in ipairs({ "get", "set", "evalsha", "eval", "cluster", "asking", "publish", "ping", "sentinel" }) do
      red[cmd] = function(self, ...)
        if self.queue then
          local args = { ... }
          self.queue[#self.queue + 1] = function() return exec(self, cmd, unpack(args)) end
          return
        end
        return exec(self, cmd, ...)
      end
    end
    function red:init_pipeline() self.queue = {} end
    function red:commit_pipeline()
      local q = self.queue
      self.queue = nil
      -- The request goes out, then the reply is awaited: a light thread lets the others run meanwhile.
      log[#log + 1] = "sent " .. self.server.addr
      if light[coroutine.running()] then coroutine.yield() end
      log[#log + 1] = "read " .. self.server.addr
      local out = {}
      for i, f in ipairs(q) do
        local res, err = f()
        out[i] = res == false and { false, err } or res
      end
      return out
    end
    return module
  end

  local function conf(extra)
    local c = { host = "127.0.0.1", port = 6379, timeout = 1000, database = 0, ssl = false, ssl_verify = false,
      keepalive_pool_size = 10, keepalive_timeout = 1000, cluster_max_redirections = 5,
      cluster_nodes = { { ip = "10.0.0.1", port = 7000 } } }
    for k, v in pairs(extra or {}) do c[k] = v end
    return c
  end

  before_each(function()
    servers, log = {}, {}
    saved_ngx = rawget(_G, "ngx")
    _G.ngx = setmetatable({ now = function() return clock end, update_time = function() end, sleep = function() end,
      md5 = function(s) return string.rep("0", 32) end, get_phase = function() return "timer" end,
      timer = { at = function() return 1 end }, thread = fake_thread, null = saved_ngx and saved_ngx.null or "null" }, { __index = saved_ngx })
    for _, m in ipairs({ "krs.redis.client", "krs.redis.cluster", "krs.redis.connection", "krs.redis.breaker", "krs.redis.sentinel", "resty.redis" }) do package.loaded[m] = nil end
    package.loaded["resty.redis"] = fake_redis()
    package.loaded["krs.scripts"] = { get = function(_, name) if name == "s" then return { sha1 = "sha", numkeys = 1, source = "return 1" } end end }
    setmetatable(package.loaded["krs.scripts"], { __index = function(t, name) return name == "s" and { sha1 = "sha", numkeys = 1, source = "return 1" } or nil end })
    client = require("krs.redis.client")
  end)

  after_each(function()
    _G.ngx = saved_ngx
    for _, m in ipairs({ "krs.redis.client", "krs.redis.cluster", "krs.redis.connection", "krs.redis.breaker", "krs.redis.sentinel", "resty.redis", "krs.scripts" }) do package.loaded[m] = nil end
  end)

  local function count(pattern)
    local n = 0
    for _, line in ipairs(log) do if line:match(pattern) then n = n + 1 end end
    return n
  end

  it("sends a key's command to the master of its slot, learned from CLUSTER SLOTS", function()
    new_server("10.0.0.1:7000", { owns = { 0, 8191 } })
    new_server("10.0.0.2:7000", { owns = { 8192, 16383 } })
    assert.are.equal("get@10.0.0.1:7000", (client.command(conf(), "get", "{user1000}x")))  -- slot 3443
    assert.are.equal("get@10.0.0.2:7000", (client.command(conf(), "get", "foo")))          -- slot 12182
    assert.are.equal(1, count("cluster slots"))
  end)

  it("follows MOVED, remembers the new owner, and re-reads the map once", function()
    new_server("10.0.0.1:7000", { owns = { 0, 16383 }, answer = function(cmd, args)
      if cmd == "get" then return false, "MOVED 12182 10.0.0.3:7000" end
    end })
    new_server("10.0.0.3:7000", {})
    local c = conf()
    assert.are.equal("get@10.0.0.3:7000", (client.command(c, "get", "foo")))
    assert.are.equal(1, count("cluster slots"))
    -- Within the refresh interval the slot goes straight to the new owner.
    assert.are.equal("get@10.0.0.3:7000", (client.command(c, "get", "foo")))
    assert.are.equal(1, count("10.0.0.1:7000 get"))
    -- Later, the stale map is read again, once.
    clock = clock + 1
    assert.are.equal("get@10.0.0.3:7000", (client.command(c, "get", "foo")))
    assert.are.equal(2, count("cluster slots"))
  end)

  it("after a node failed, reads the map again within 25 ms (a killed master's promoted replica), not sooner", function()
    new_server("10.0.0.1:7000", { owns = { 0, 8191 } })
    new_server("10.0.0.2:7000", { owns = { 8192, 16383 } })
    local c = conf()
    assert.are.equal("get@10.0.0.2:7000", (client.command(c, "get", "foo")))
    servers["10.0.0.2:7000"] = nil  -- killed
    assert.is_nil((client.command(c, "get", "foo")))
    clock = clock + 0.01
    assert.is_nil((client.command(c, "get", "foo")))
    assert.are.equal(1, count("cluster slots"))
    new_server("10.0.0.3:7000", { owns = { 8192, 16383 } })  -- its replica, promoted
    clock = clock + 0.02
    assert.are.equal("get@10.0.0.3:7000", (client.command(c, "get", "foo")))
    assert.are.equal(2, count("cluster slots"))
  end)

  it("follows ASK with ASKING right before the command, and does not remember it", function()
    new_server("10.0.0.1:7000", { owns = { 0, 16383 }, answer = function(cmd)
      if cmd == "get" then return false, "ASK 12182 10.0.0.3:7000" end
    end })
    new_server("10.0.0.3:7000", { answer = function(cmd, _, asking)
      if cmd == "get" and not asking then return false, "MOVED 12182 10.0.0.1:7000" end
    end })
    assert.are.equal("get@10.0.0.3:7000", (client.command(conf(), "get", "foo")))
    assert.are.equal(1, count("^10.0.0.3:7000 asking"))
    assert.are.equal(1, count("cluster slots"))
  end)

  it("gives up after cluster_max_redirections with an error reply naming the last one", function()
    new_server("10.0.0.1:7000", { owns = { 0, 16383 }, answer = function(cmd)
      if cmd == "get" then return false, "MOVED 12182 10.0.0.1:7000" end
    end })
    local res, err = client.command(conf({ cluster_max_redirections = 2 }), "get", "foo")
    assert.is_false(res)
    assert.matches("more than 2 cluster redirections %(last: MOVED 12182", err)
    assert.are.equal(3, count("10.0.0.1:7000 get"))
  end)

  it("splits a pipeline per node, keeps the replies in order, and falls back to EVAL per node", function()
    new_server("10.0.0.1:7000", { owns = { 0, 8191 }, scripts = { sha = true } })
    new_server("10.0.0.2:7000", { owns = { 8192, 16383 } })
    local replies = client.pipeline(conf(), {
      { command = "get", args = { "foo" } },               -- node 2
      { script = "s", keys = { "{user1000}a" }, args = {} }, -- node 1, has the script
      { script = "s", keys = { "foo" }, args = {} },        -- node 2, NOSCRIPT
      { command = "get", args = { "{user1000}b" } },        -- node 1
    })
    assert.are.same({ "get@10.0.0.2:7000", "evalsha@10.0.0.1:7000", "evaled", "get@10.0.0.1:7000" }, replies)
    assert.are.equal(1, count("^10.0.0.2:7000 eval return"))
    assert.are.equal(0, count("^10.0.0.1:7000 eval return"))
  end)

  it("sends every node's part of a pipeline before it reads any reply; replies come back in the caller's order", function()
    new_server("10.0.0.1:7000", { owns = { 0, 5460 } })
    new_server("10.0.0.2:7000", { owns = { 5461, 10922 } })
    new_server("10.0.0.3:7000", { owns = { 10923, 16383 } })
    client.command(conf(), "get", "{user1000}x")  -- reads the slot map first
    log = {}
    local calls, expected = {}, {}
    for i = 1, 12 do
      local key = "k" .. i
      calls[i] = { command = "get", args = { key } }
      local s = slot.keySlot(key)
      expected[i] = "get@10.0.0." .. (s <= 5460 and 1 or s <= 10922 and 2 or 3) .. ":7000"
    end
    local replies = client.pipeline(conf(), calls)
    assert.are.same(expected, replies)
    local sent, first_read = {}, nil
    for i, line in ipairs(log) do
      if line:match("^sent ") then sent[#sent + 1] = i end
      if line:match("^read ") and not first_read then first_read = i end
    end
    assert.are.equal(3, #sent)
    assert.is_true(sent[3] < first_read, table.concat(log, "\n"))
  end)

  it("a node that fails in a pipeline fails the pipeline, naming it; the other parts were sent all the same", function()
    new_server("10.0.0.1:7000", { owns = { 0, 8191 } })
    new_server("10.0.0.2:7000", { owns = { 8192, 16383 }, answer = function() end })
    client.command(conf(), "get", "{user1000}x")
    servers["10.0.0.2:7000"] = nil  -- gone: connection refused
    local replies, err = client.pipeline(conf(), { { command = "get", args = { "{user1000}a" } }, { command = "get", args = { "foo" } } })
    assert.is_nil(replies)
    assert.matches("10.0.0.2:7000", err)
    assert.are.equal(1, count("^sent 10.0.0.1:7000"))
  end)

  it("a redirected call inside a pipeline is sent again to its new node", function()
    new_server("10.0.0.1:7000", { owns = { 0, 16383 }, answer = function(cmd, args)
      if cmd == "get" and args[1] == "foo" then return false, "MOVED 12182 10.0.0.3:7000" end
    end })
    new_server("10.0.0.3:7000", {})
    local replies = client.pipeline(conf(), { { command = "get", args = { "bar" } }, { command = "get", args = { "foo" } } })
    assert.are.same({ "get@10.0.0.1:7000", "get@10.0.0.3:7000" }, replies)
  end)

  it("keeps one breaker per node: a hung node's slow failures do not open the circuit of another", function()
    new_server("10.0.0.1:7000", { owns = { 0, 8191 } })
    new_server("10.0.0.2:7000", { owns = { 8192, 16383 }, answer = function() return nil, "timeout" end })
    local c = conf()
    for _ = 1, 5 do assert.is_nil((client.command(c, "get", "foo"))) end
    local _, err = client.command(c, "get", "foo")
    assert.matches("circuit open", err)
    assert.are.equal("get@10.0.0.1:7000", (client.command(c, "get", "{user1000}x")))
  end)

  describe("on sentinel", function()
    local function sconf(role)
      local c = conf({ sentinel_master = "mymaster", sentinel_role = role or "master",
        sentinel_nodes = { { host = "10.0.1.1", port = 26379 }, { host = "10.0.1.2", port = 26379 } } })
      c.cluster_nodes = nil
      return c
    end
    local master = "10.0.0.1:6379"

    local function sentinels(first_answers)
      new_server("10.0.1.1:26379", { answer = function(cmd, args)
        if not first_answers then return nil, "closed" end
      end })
      new_server("10.0.1.2:26379", { answer = function(cmd, args)
        if args[1] == "get-master-addr-by-name" then
          local host, port = master:match("^(.*):(%d+)$")
          return { host, port }
        end
        if args[1] == "replicas" then
          return { { "ip", "10.0.0.2", "port", "6379", "flags", "slave", "master-link-status", "ok" },
                   { "ip", "10.0.0.3", "port", "6379", "flags", "s_down,slave", "master-link-status", "err" } }
        end
      end })
    end

    it("asks the sentinels in order for the master, once per worker", function()
      sentinels(false)
      new_server("10.0.0.1:6379", {})
      local c = sconf()
      assert.are.equal("get@10.0.0.1:6379", (client.command(c, "get", "k")))
      assert.are.equal("get@10.0.0.1:6379", (client.command(c, "get", "k")))
      assert.are.equal(1, count("^10.0.1.2:26379 sentinel get%-master%-addr%-by%-name"))
    end)

    it("a READONLY reply (a demoted master) asks again and retries on the new master", function()
      sentinels(false)
      new_server("10.0.0.1:6379", { answer = function(cmd) if cmd == "set" then return false, "READONLY You can't write against a read only replica." end end })
      new_server("10.0.0.9:6379", {})
      local c = sconf()
      assert.are.equal("get@10.0.0.1:6379", (client.command(c, "get", "k")))
      master = "10.0.0.9:6379"
      assert.are.equal("set@10.0.0.9:6379", (client.command(c, "set", "k", "v")))
      assert.are.equal(2, count("^10.0.1.2:26379 sentinel get%-master%-addr%-by%-name"))
      master = "10.0.0.1:6379"
    end)

    it("a master that no longer accepts connections is asked for again on the next call", function()
      sentinels(false)
      local c = sconf()
      master = "10.0.0.7:6379"
      local res, err = client.command(c, "get", "k")
      assert.is_nil(res)
      assert.matches("could not connect to redis at 10.0.0.7:6379", err)
      new_server("10.0.0.8:6379", {})
      master = "10.0.0.8:6379"
      assert.are.equal("get@10.0.0.8:6379", (client.command(c, "get", "k")))
      master = "10.0.0.1:6379"
    end)

    it("role slave: a healthy replica, never one that is down", function()
      sentinels(false)
      new_server("10.0.0.2:6379", {})
      new_server("10.0.0.3:6379", {})
      for _ = 1, 5 do
        package.loaded["krs.redis.sentinel"] = nil
        package.loaded["krs.redis.client"] = nil
        client = require("krs.redis.client")
        assert.are.equal("get@10.0.0.2:6379", (client.command(sconf("slave"), "get", "k")))
      end
    end)

    it("says which sentinels failed when none knows the master", function()
      new_server("10.0.1.1:26379", { answer = function() return ngx.null end })
      local res, err = client.command(sconf(), "get", "k")
      assert.is_nil(res)
      assert.matches("no sentinel gave the address of 'mymaster'", err)
      assert.matches("10.0.1.2:26379", err)
    end)
  end)
end)

-- redis-metrics's pure parts on a stand-in shared dict: label escaping, the text format
-- (cumulative buckets, Kong's le format), and the store (requests only touch the
-- worker's buffer; the flush merges it; max_series admission and the drop counter).

--- A shared dict with lua-resty-core's semantics for what the store uses, counting calls.
local function fake_dict()
  local data, calls = {}, { incr = 0, add = 0 }
  local d = {}
  function d:get(k) return data[k] end
  function d:set(k, v) data[k] = v; return true end
  function d:add(k, v)
    calls.add = calls.add + 1
    if data[k] ~= nil then return false, "exists" end
    data[k] = v
    return true
  end
  function d:incr(k, v, init)
    calls.incr = calls.incr + 1
    if data[k] == nil then
      if init == nil then return nil, "not found" end
      data[k] = init
    end
    data[k] = data[k] + v
    return data[k]
  end
  d.safe_add = d.add
  d.safe_set = d.set
  function d:delete(k) data[k] = nil end
  function d:get_keys()
    local keys = {}
    for k in pairs(data) do keys[#keys + 1] = k end
    return keys
  end
  return d, data, calls
end

describe("redis-metrics", function()
  local saved_ngx, dict, data, calls

  local function load_fresh()
    for _, name in ipairs({ "store", "metrics", "exposition" }) do package.loaded["kong.plugins.redis-metrics." .. name] = nil end
    return require("kong.plugins.redis-metrics.store"), require("kong.plugins.redis-metrics.metrics"), require("kong.plugins.redis-metrics.exposition")
  end

  before_each(function()
    saved_ngx = rawget(_G, "ngx")
    dict, data, calls = fake_dict()
    _G.ngx = setmetatable({
      shared = { krs_metrics = dict },
      now = function() return 1000 end,
      worker = { pid = function() return 42 end, id = function() return 0 end },
    }, { __index = saved_ngx })
  end)

  after_each(function()
    _G.ngx = saved_ngx
  end)

  it("escapes backslash, double quote and newline in label values, and nothing else", function()
    local _, M = load_fresh()
    assert.are.equal([[a\\b\"c\nd{},=]], M.escapeLabel('a\\b"c\nd{},='))
    assert.are.equal("plain", M.escapeLabel("plain"))
    assert.are.equal([[service="s\"1",route=""]], M.labelText({ labels = { "service", "route" } }, { 's"1' }))
  end)

  it("counts a request in the worker's buffer only: the dict sees one incr per series at the flush", function()
    local store, M = load_fresh()
    for _ = 1, 100 do store.inc(M.HTTP_REQUESTS, 'service="s"', 1) end
    local admission_incrs = calls.incr
    for _ = 1, 100 do store.inc(M.HTTP_REQUESTS, 'service="s"', 1) end
    assert.are.equal(admission_incrs, calls.incr) -- no dict call once admitted
    assert.are.equal(0, data['kong_http_requests_total{service="s"}'])
    store.flush()
    assert.are.equal(200, data['kong_http_requests_total{service="s"}'])
    assert.are.equal(admission_incrs + 1, calls.incr)
  end)

  it("writes histograms cumulatively with Kong's le format, +Inf, _count and _sum", function()
    local store, M, exposition = load_fresh()
    for _, v in ipairs({ 1, 3, 3, 80, 5000 }) do store.observe(M.KONG_LATENCY, 'service="s"', v) end
    store.flush()
    local text = exposition.render(store.snapshot())
    assert.truthy(text:find('# HELP kong_kong_latency_ms Latency added by Kong and enabled plugins for each service/route in Kong\n# TYPE kong_kong_latency_ms histogram\n', 1, true))
    assert.truthy(text:find('kong_kong_latency_ms_bucket{service="s",le="0001.0"} 1\n', 1, true))
    assert.truthy(text:find('kong_kong_latency_ms_bucket{service="s",le="0002.0"} 1\n', 1, true))
    assert.truthy(text:find('kong_kong_latency_ms_bucket{service="s",le="0005.0"} 3\n', 1, true))
    assert.truthy(text:find('kong_kong_latency_ms_bucket{service="s",le="0100.0"} 4\n', 1, true))
    assert.truthy(text:find('kong_kong_latency_ms_bucket{service="s",le="1000.0"} 4\n', 1, true))
    assert.truthy(text:find('kong_kong_latency_ms_bucket{service="s",le="+Inf"} 5\n', 1, true))
    assert.truthy(text:find('kong_kong_latency_ms_count{service="s"} 5\n', 1, true))
    assert.truthy(text:find('kong_kong_latency_ms_sum{service="s"} 5087\n', 1, true))
    local _, helps = text:gsub("# HELP kong_kong_latency_ms ", "")
    assert.are.equal(1, helps)
  end)

  it("puts every observation in its bucket: whole values from the prepared table, others by search, at every bound", function()
    local store, M = load_fresh()
    local values = { -1, 0, 0.5, 59999.5, 60000, 60001, 1e9 }
    for _, def in ipairs({ M.KONG_LATENCY, M.UPSTREAM_LATENCY, M.REDIS_LATENCY }) do
      for _, bound in ipairs(def.buckets) do
        values[#values + 1] = bound
        values[#values + 1] = bound + 1
        values[#values + 1] = bound - 1
        values[#values + 1] = bound + 0.25
      end
    end
    for v = 0, 1200 do values[#values + 1] = v end
    local seen, unique = {}, {}
    for _, v in ipairs(values) do
      if not seen[v] then seen[v] = true; unique[#unique + 1] = v end
    end
    values = unique
    store.setMaxSeries(1e7)
    -- expected by the definition: the first bucket whose bound is >= the value (none past the last)
    local function expected(def, v)
      for i, bound in ipairs(def.buckets) do if v <= bound then return i end end
      return nil
    end
    for _, def in ipairs({ M.KONG_LATENCY, M.UPSTREAM_LATENCY, M.REDIS_LATENCY }) do
      for _, v in ipairs(values) do
        local labels = 'v="' .. tostring(v) .. '"'
        store.observe(def, labels, v)
        store.flush()
        local base = def.name .. "{" .. labels .. "}"
        local want = expected(def, v)
        for i = 1, #def.buckets do
          local got = data[base .. "\t" .. store.bucketPart(i)]
          assert.are.equal(i == want and 1 or 0, got, def.name .. " value " .. tostring(v) .. " bucket " .. i)
        end
        assert.are.equal(1, data[base .. "\tcount"])
      end
    end
  end)

  it("writes a series without labels without braces, fractions exactly, and skips unknown metrics", function()
    local _, _, exposition = load_fresh()
    local text = exposition.render({ ["kong_datastore_reachable{}"] = 1, ["krs_redis_latency_seconds{plugin=\"p\"}\tsum"] = 0.25, ["gone_metric{a=\"b\"}"] = 3 })
    assert.truthy(text:find("\nkong_datastore_reachable 1\n", 1, true))
    assert.truthy(text:find('krs_redis_latency_seconds_sum{plugin="p"} 0.25\n', 1, true))
    assert.truthy(text:find('krs_redis_latency_seconds_bucket{plugin="p",le="0.0005"} 0\n', 1, true))
    assert.is_nil(text:find("gone_metric", 1, true))
  end)

  it("admits label sets up to max_series (a histogram's buckets, +Inf, _sum, _count count) and counts what it drops", function()
    local store, M = load_fresh()
    store.setMaxSeries(100)
    store.observe(M.REDIS_LATENCY, 'plugin="a"', 0.001) -- 13 buckets + 3 = 16 series
    assert.are.equal(16, data["#series"])
    for i = 1, 120 do store.inc(M.HTTP_REQUESTS, 'consumer="c' .. i .. '"', 1) end
    store.flush()
    assert.are.equal(100, data["#series"])
    assert.are.equal(36, data["#dropped"])
    assert.is_nil(data['kong_http_requests_total{consumer="c85"}'])
    assert.are.equal(1, data['kong_http_requests_total{consumer="c84"}'])
    -- Full: a known series still counts, a new one is dropped without asking the dict.
    local before = calls.incr
    store.inc(M.HTTP_REQUESTS, 'consumer="c1"', 1)
    store.inc(M.HTTP_REQUESTS, 'consumer="new"', 1)
    assert.are.equal(before, calls.incr)
    store.flush()
    assert.are.equal(2, data['kong_http_requests_total{consumer="c1"}'])
    assert.are.equal(37, data["#dropped"])
  end)

  it("a full zone refuses a new series instead of evicting counted ones, and counts the failure", function()
    local store, M = load_fresh()
    store.inc(M.HTTP_REQUESTS, 'route="kept"', 1)
    store.flush()
    dict.safe_add = function() return false, "no memory" end
    store.inc(M.HTTP_REQUESTS, 'route="new"', 1)
    store.flush()
    assert.are.equal(1, data["#series"])
    assert.are.equal(1, data["#errors"])
    assert.is_nil(data['kong_http_requests_total{route="new"}'])
    assert.are.equal(1, data['kong_http_requests_total{route="kept"}'])
  end)

  it("a label set another worker admitted is counted without reserving it twice", function()
    local store, M = load_fresh()
    store.inc(M.HTTP_REQUESTS, 'route="r"', 2)
    store.flush()
    local other = load_fresh() -- a second worker: its own buffer and memory, the same dict
    other.inc(M.HTTP_REQUESTS, 'route="r"', 3)
    other.flush()
    assert.are.equal(1, data["#series"])
    assert.are.equal(5, data['kong_http_requests_total{route="r"}'])
  end)

  it("writes only well-formed series of known metrics: a key read back from Redis cannot add lines of its own", function()
    local _, _, exposition = load_fresh()
    local text = exposition.render({
      ['kong_http_requests_total{code="200"}'] = 3,
      ['kong_http_requests_total{code="201"} 1\ninjected_metric 1\nkong_http_requests_total{code="202"}'] = 7,
      ['kong_http_requests_total{code="2"03"}'] = 1,
      [ [[kong_http_requests_total{code="204\\"}]] ] = 1,
      ['kong_http_requests_total{code="205"}x'] = 1,
      ['kong_http_requests_total{code="206"}'] = "12",
      ['kong_http_requests_total{code="207"}'] = math.huge,
      ['krs_redis_latency_seconds{plugin="p"}\tcount'] = 2,
      ['krs_redis_latency_seconds{plugin="q"}\tb99'] = 2,
      ['krs_redis_latency_seconds{plugin="r"} 1\nx{}\tsum'] = 2,
    })
    assert.truthy(text:find('kong_http_requests_total{code="200"} 3\n', 1, true))
    assert.truthy(text:find([[kong_http_requests_total{code="204\\"} 1]] .. "\n", 1, true))
    assert.truthy(text:find('krs_redis_latency_seconds_count{plugin="p"} 2\n', 1, true))
    for _, absent in ipairs({ "injected_metric", 'code="201"', 'code="202"', 'code="2"03"', 'code="205"', 'code="206"', 'code="207"', 'plugin="q"', 'plugin="r"' }) do
      assert.is_nil(text:find(absent, 1, true), absent)
    end
    assert.is_true(exposition.isSeries('kong_bandwidth_bytes{service="a\\\\b\\nc",direction="egress"}', 1))
    assert.is_false(exposition.isSeries('kong_bandwidth_bytes{service="a\\tb"}', 1))
    assert.is_false(exposition.isSeries('kong_bandwidth_bytes{service="a"', 1))
    assert.is_true(exposition.isSeries("kong_datastore_reachable{}", 1))
  end)
end)

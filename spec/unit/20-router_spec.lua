-- The local gateway's router: Kong 3.x traditional_compatible matching and v0 path handling.

local router_mod = require("krs.gateway.router")

-- busted runs outside nginx: stand in for ngx.re.find with Lua patterns for the few
-- PCRE forms these tests use (\d, \w, escaped dots). A "(" without ")" does not compile.
local function test_regex_find(subject, regex, options)
  assert(options == "jo", "router must pass ngx.re options 'jo'")
  local open = select(2, regex:gsub("%(", ""))
  local close = select(2, regex:gsub("%)", ""))
  if open ~= close then
    return nil, nil, "pcre_compile() failed: missing )"
  end
  local pattern = regex:gsub("\\d", "%%d"):gsub("\\w", "%%w"):gsub("\\%.", "%%.")
  local from, to = subject:find(pattern)
  return from, to
end

local function new_router(routes)
  return router_mod.newRouter(routes, { regex_find = test_regex_find })
end

local n = 0
local function route(fields)
  n = n + 1
  fields.id = fields.id or ("route-" .. n)
  return fields
end

local function service(path)
  return { id = "svc", protocol = "http", host = "upstream.test", port = 80, path = path }
end

local function id_of(m)
  return m and m.route.id
end

describe("krs.gateway.router", function()
  describe("prefix paths", function()
    it("prefers the longest prefix, whatever the declaration order", function()
      local r = new_router({
        route { id = "short", paths = { "/api" } },
        route { id = "long", paths = { "/api/v1" } },
        route { id = "root", paths = { "/" } },
      })
      assert.equal("long", id_of(r:match("GET", nil, "/api/v1/users")))
      assert.equal("short", id_of(r:match("GET", nil, "/api/v2")))
      assert.equal("root", id_of(r:match("GET", nil, "/other")))
    end)

    it("is a plain prefix match, not segment-aware", function()
      local r = new_router({ route { id = "a", paths = { "/api" } } })
      assert.equal("a", id_of(r:match("GET", nil, "/apix")))
      assert.is_nil(r:match("GET", nil, "/ap"))
    end)

    it("splits a route with several paths into groups with their own length", function()
      local r = new_router({
        route { id = "multi", paths = { "/a", "/abc/def" } },
        route { id = "mid", paths = { "/abc" } },
      })
      local m = r:match("GET", nil, "/abc/x")
      assert.equal("mid", id_of(m))
      m = r:match("GET", nil, "/abc/def/x")
      assert.equal("multi", id_of(m))
      assert.equal("/abc/def", m.matched_path)
      m = r:match("GET", nil, "/ax")
      assert.equal("multi", id_of(m))
      assert.equal("/a", m.matched_path)
    end)

    it("returns nil when nothing matches", function()
      local r = new_router({
        route { paths = { "/api" } },
        route { hosts = { "example.com" } },
        route { methods = { "POST" }, paths = { "/" } },
      })
      assert.is_nil(r:match("GET", "other.test", "/nope"))
      assert.is_nil(new_router({}):match("GET", "example.com", "/"))
    end)
  end)

  describe("hosts", function()
    it("prefers plain hosts over wildcard hosts", function()
      local r = new_router({
        route { id = "wild", hosts = { "*.example.com" } },
        route { id = "plain", hosts = { "api.example.com" } },
      })
      assert.equal("plain", id_of(r:match("GET", "api.example.com", "/")))
      assert.equal("wild", id_of(r:match("GET", "www.example.com", "/")))
    end)

    it("matches a leading wildcard as a suffix, at any depth", function()
      local r = new_router({ route { id = "w", hosts = { "*.example.com" } } })
      assert.equal("w", id_of(r:match("GET", "a.b.example.com", "/")))
      assert.is_nil(r:match("GET", "example.com", "/"))
      assert.is_nil(r:match("GET", "badexample.com", "/"))
    end)

    it("matches a trailing wildcard as a prefix", function()
      local r = new_router({ route { id = "w", hosts = { "example.*" } } })
      assert.equal("w", id_of(r:match("GET", "example.org", "/")))
      assert.equal("w", id_of(r:match("GET", "example.co.uk", "/")))
      assert.is_nil(r:match("GET", "www.example.org", "/"))
    end)

    it("compares hosts case-sensitively, as Kong does", function()
      local r = new_router({
        route { id = "a", hosts = { "api.example.test" } },
        route { id = "w", hosts = { "*.wild.test" } },
      })
      assert.equal("a", id_of(r:match("GET", "api.example.test", "/")))
      assert.is_nil(r:match("GET", "API.Example.TEST", "/"))
      assert.equal("w", id_of(r:match("GET", "x.wild.test", "/")))
      assert.is_nil(r:match("GET", "X.WILD.TEST", "/"))
    end)

    it("ignores the request port unless the route host has one", function()
      local r = new_router({
        route { id = "any-port", hosts = { "example.com" } },
        route { id = "port-8443", hosts = { "secure.test:8443" } },
        route { id = "wild-port", hosts = { "*.ports.test:9000" } },
      })
      assert.equal("any-port", id_of(r:match("GET", "example.com:8000", "/")))
      assert.equal("any-port", id_of(r:match("GET", "example.com", "/")))
      assert.equal("port-8443", id_of(r:match("GET", "secure.test:8443", "/")))
      assert.is_nil(r:match("GET", "secure.test:8000", "/"))
      assert.is_nil(r:match("GET", "secure.test", "/"))
      assert.equal("wild-port", id_of(r:match("GET", "a.ports.test:9000", "/")))
      assert.is_nil(r:match("GET", "a.ports.test", "/"))
    end)

    it("does not match host routes when the request has no host", function()
      local r = new_router({ route { hosts = { "example.com" } } })
      assert.is_nil(r:match("GET", nil, "/"))
    end)
  end)

  describe("methods", function()
    it("matches methods case-sensitively", function()
      local r = new_router({ route { id = "m", methods = { "GET", "POST" } } })
      assert.equal("m", id_of(r:match("GET", nil, "/")))
      assert.equal("m", id_of(r:match("POST", nil, "/x")))
      assert.is_nil(r:match("get", nil, "/"))
      assert.is_nil(r:match("DELETE", nil, "/"))
    end)

    it("falls through to the next route when the method does not match", function()
      local r = new_router({
        route { id = "post", methods = { "POST" }, paths = { "/api" } },
        route { id = "any", paths = { "/api" } },
      })
      assert.equal("post", id_of(r:match("POST", nil, "/api")))
      assert.equal("any", id_of(r:match("GET", nil, "/api")))
    end)
  end)

  describe("priority", function()
    it("puts routes setting more categories first (host+method+path > host+path > path)", function()
      local r = new_router({
        route { id = "path", paths = { "/api/very/long/prefix" } },
        route { id = "host-path", hosts = { "example.com" }, paths = { "/api" } },
        route { id = "host-method-path", hosts = { "example.com" }, methods = { "GET" }, paths = { "/" } },
      })
      assert.equal("host-method-path", id_of(r:match("GET", "example.com", "/api/very/long/prefix")))
      assert.equal("host-path", id_of(r:match("POST", "example.com", "/api/very/long/prefix")))
      assert.equal("path", id_of(r:match("POST", "other.test", "/api/very/long/prefix")))
    end)

    it("ranks a plain-host route above a method route with the same category count", function()
      local r = new_router({
        route { id = "method-path", methods = { "GET" }, paths = { "/api/longer" } },
        route { id = "host-path", hosts = { "example.com" }, paths = { "/api" } },
      })
      assert.equal("host-path", id_of(r:match("GET", "example.com", "/api/longer")))
    end)

    it("tries regex paths before prefix paths within the same class", function()
      local r = new_router({
        route { id = "prefix", paths = { "/users/123/profile" } },
        route { id = "regex", paths = { "~/users/\\d+" } },
      })
      assert.equal("regex", id_of(r:match("GET", nil, "/users/123/profile")))
    end)

    it("still ranks more categories above a regex path", function()
      local r = new_router({
        route { id = "regex", paths = { "~/users/\\d+" }, regex_priority = 100 },
        route { id = "host-prefix", hosts = { "example.com" }, paths = { "/users" } },
      })
      assert.equal("host-prefix", id_of(r:match("GET", "example.com", "/users/1")))
      assert.equal("regex", id_of(r:match("GET", "other.test", "/users/1")))
    end)

    it("orders regex paths by regex_priority, higher first", function()
      local r = new_router({
        route { id = "low", paths = { "~/items/\\d+" }, regex_priority = 1 },
        route { id = "default", paths = { "~/items/\\d+$" } },
        route { id = "high", paths = { "~/items/\\d+/edit$" }, regex_priority = 10 },
      })
      assert.equal("high", id_of(r:match("GET", nil, "/items/7/edit")))
      assert.equal("low", id_of(r:match("GET", nil, "/items/7")))
      local r2 = new_router({
        route { id = "default", paths = { "~/items/\\d+$" } },
        route { id = "negative", paths = { "~/items/\\d+" }, regex_priority = -5 },
      })
      assert.equal("default", id_of(r2:match("GET", nil, "/items/7")))
      assert.equal("negative", id_of(r2:match("GET", nil, "/items/7/x")))
    end)

    it("breaks ties by declaration order", function()
      local r = new_router({
        route { id = "first", paths = { "/same" } },
        route { id = "second", paths = { "/same" } },
        route { id = "third", hosts = { "a.test" } },
        route { id = "fourth", hosts = { "a.test" } },
        route { id = "rx1", paths = { "~/rx/\\d+" } },
        route { id = "rx2", paths = { "~/rx/\\d+" } },
      })
      assert.equal("first", id_of(r:match("GET", nil, "/same")))
      assert.equal("third", id_of(r:match("GET", "a.test", "/x")))
      assert.equal("rx1", id_of(r:match("GET", nil, "/rx/1")))
    end)
  end)

  describe("regex paths", function()
    it("anchors the regex at the start of the path", function()
      local r = new_router({ route { id = "rx", paths = { "~/users/\\d+$" } } })
      assert.equal("rx", id_of(r:match("GET", nil, "/users/42")))
      assert.is_nil(r:match("GET", nil, "/v1/users/42"))
      assert.is_nil(r:match("GET", nil, "/users/42/x"))
    end)

    it("reports the route path and strips the whole matched text", function()
      local r = new_router({
        route { id = "rx", paths = { "~/version/\\d+/service" }, service = service("/s") },
      })
      local m = r:match("GET", nil, "/version/2/service/path/to/resource")
      assert.equal("~/version/\\d+/service", m.matched_path)
      assert.equal("/s/path/to/resource", m.upstream_uri)
    end)

    it("uses the route's first matching regex in declaration order", function()
      local r = new_router({
        route { id = "rx", paths = { "~/a/\\d+", "~/a/\\d+/b" } },
      })
      local m = r:match("GET", nil, "/a/1/b/c")
      assert.equal("~/a/\\d+", m.matched_path)
      assert.equal("/b/c", m.upstream_uri)
    end)

    it("keeps the route's prefix paths when its regex group does not compile", function()
      local r = new_router({
        route { id = "mixed", paths = { "~/bad(", "/good" } },
      })
      assert.is_nil(r:match("GET", nil, "/bad("))
      assert.equal("mixed", id_of(r:match("GET", nil, "/good/x")))
    end)

    it("skips regex paths when no regex engine is available", function()
      if ngx ~= nil then
        pending("ngx is present")
        return
      end
      local r = router_mod.newRouter({
        route { id = "rx", paths = { "~/users/\\d+" } },
        route { id = "prefix", paths = { "/users" } },
      })
      assert.equal("prefix", id_of(r:match("GET", nil, "/users/1")))
    end)
  end)

  describe("upstream_uri (v0 path handling)", function()
    -- Kong's router spec ("slash handling", path_handling v0):
    -- service path, route path, request path, expected upstream path, strip_path
    local checks = {
      { "/",         "/",         "/",          "/",                  true },
      { "/",         "/",         "/foo/bar",   "/foo/bar",           true },
      { "/",         "/",         "/foo/bar/",  "/foo/bar/",          true },
      { "/",         "/foo/bar",  "/foo/bar",   "/",                  true },
      { "/",         "/foo/bar/", "/foo/bar/",  "/",                  true },
      { "/fee/bor",  "/",         "/",          "/fee/bor",           true },
      { "/fee/bor",  "/",         "/foo/bar",   "/fee/bor/foo/bar",   true },
      { "/fee/bor",  "/",         "/foo/bar/",  "/fee/bor/foo/bar/",  true },
      { "/fee/bor",  "/foo/bar",  "/foo/bar",   "/fee/bor",           true },
      { "/fee/bor",  "/foo/bar/", "/foo/bar/",  "/fee/bor/",          true },
      { "/fee/bor/", "/",         "/",          "/fee/bor/",          true },
      { "/fee/bor/", "/",         "/foo/bar",   "/fee/bor/foo/bar",   true },
      { "/fee/bor/", "/",         "/foo/bar/",  "/fee/bor/foo/bar/",  true },
      { "/fee/bor/", "/foo/bar",  "/foo/bar",   "/fee/bor",           true },
      { "/fee/bor/", "/foo/bar/", "/foo/bar/",  "/fee/bor/",          true },
      { "/",         "/",         "/",          "/",                  false },
      { "/",         "/",         "/foo/bar",   "/foo/bar",           false },
      { "/",         "/",         "/foo/bar/",  "/foo/bar/",          false },
      { "/",         "/foo/bar",  "/foo/bar",   "/foo/bar",           false },
      { "/",         "/foo/bar/", "/foo/bar/",  "/foo/bar/",          false },
      { "/fee/bor",  "/",         "/",          "/fee/bor",           false },
      { "/fee/bor",  "/",         "/foo/bar",   "/fee/bor/foo/bar",   false },
      { "/fee/bor",  "/",         "/foo/bar/",  "/fee/bor/foo/bar/",  false },
      { "/fee/bor",  "/foo/bar",  "/foo/bar",   "/fee/bor/foo/bar",   false },
      { "/fee/bor",  "/foo/bar/", "/foo/bar/",  "/fee/bor/foo/bar/",  false },
      { "/fee/bor/", "/",         "/",          "/fee/bor/",          false },
      { "/fee/bor/", "/",         "/foo/bar",   "/fee/bor/foo/bar",   false },
      { "/fee/bor/", "/",         "/foo/bar/",  "/fee/bor/foo/bar/",  false },
      { "/fee/bor/", "/foo/bar",  "/foo/bar",   "/fee/bor/foo/bar",   false },
      { "/fee/bor/", "/foo/bar/", "/foo/bar/",  "/fee/bor/foo/bar/",  false },
      -- request longer than the matched part: mid-segment, or one more segment
      { "/",         "/",         "/foo/bars",  "/foo/bars",          true },
      { "/",         "/",         "/foo/bar/s", "/foo/bar/s",         true },
      { "/",         "/foo/bar",  "/foo/bars",  "/s",                 true },
      { "/",         "/foo/bar/", "/foo/bar/s", "/s",                 true },
      { "/fee/bor",  "/",         "/foo/bars",  "/fee/bor/foo/bars",  true },
      { "/fee/bor",  "/",         "/foo/bar/s", "/fee/bor/foo/bar/s", true },
      { "/fee/bor",  "/foo/bar",  "/foo/bars",  "/fee/bor/s",         true },
      { "/fee/bor",  "/foo/bar/", "/foo/bar/s", "/fee/bor/s",         true },
      { "/fee/bor/", "/",         "/foo/bars",  "/fee/bor/foo/bars",  true },
      { "/fee/bor/", "/",         "/foo/bar/s", "/fee/bor/foo/bar/s", true },
      { "/fee/bor/", "/foo/bar",  "/foo/bars",  "/fee/bor/s",         true },
      { "/fee/bor/", "/foo/bar/", "/foo/bar/s", "/fee/bor/s",         true },
      { "/",         "/",         "/foo/bars",  "/foo/bars",          false },
      { "/",         "/",         "/foo/bar/s", "/foo/bar/s",         false },
      { "/",         "/foo/bar",  "/foo/bars",  "/foo/bars",          false },
      { "/",         "/foo/bar/", "/foo/bar/s", "/foo/bar/s",         false },
      { "/fee/bor",  "/",         "/foo/bars",  "/fee/bor/foo/bars",  false },
      { "/fee/bor",  "/",         "/foo/bar/s", "/fee/bor/foo/bar/s", false },
      { "/fee/bor",  "/foo/bar",  "/foo/bars",  "/fee/bor/foo/bars",  false },
      { "/fee/bor",  "/foo/bar/", "/foo/bar/s", "/fee/bor/foo/bar/s", false },
      { "/fee/bor/", "/",         "/foo/bars",  "/fee/bor/foo/bars",  false },
      { "/fee/bor/", "/",         "/foo/bar/s", "/fee/bor/foo/bar/s", false },
      { "/fee/bor/", "/foo/bar",  "/foo/bars",  "/fee/bor/foo/bars",  false },
      { "/fee/bor/", "/foo/bar/", "/foo/bar/s", "/fee/bor/foo/bar/s", false },
      -- Kong's Admin API docs, path_handling table, v0 rows
      { "/s",        "/fv0",      "/fv0req",    "/s/fv0req",          false },
      { "/s",        "/tv0",      "/tv0req",    "/s/req",             true },
      { "/s",        "/fv0/",     "/fv0/req",   "/s/fv0/req",         false },
      { "/s",        "/tv0/",     "/tv0/req",   "/s/req",             true },
      -- further cases
      { "/",         "/api",      "/api/foo",   "/foo",               true },
      { "/s",        "/api",      "/api/foo",   "/s/foo",             true },
      -- nothing left after stripping: a trailing slash on service.path follows the request
      { "/s/",       "/api",      "/api",       "/s",                 true },
      { "/s/",       "/api",      "/api/",      "/s/",                true },
      { "/",         "/api",      "/api",       "/",                  true },
      { "/",         "/api",      "/api..",     "/",                  true },
      { "/s",        "/api",      "/api./x",    "/s/x",               true },
    }

    for i, c in ipairs(checks) do
      local service_path, route_path, request, expected, strip = c[1], c[2], c[3], c[4], c[5]
      it(("(%d) service %s, route %s, strip_path %s: %s -> %s"):format(
           i, service_path, route_path, tostring(strip), request, expected), function()
        local r = new_router({
          route { paths = { route_path }, strip_path = strip, service = service(service_path) },
        })
        local m = assert(r:match("GET", "example.com", request))
        assert.equal(route_path, m.matched_path)
        assert.equal(expected, m.upstream_uri)
      end)
    end

    it("defaults strip_path to true and the service path to /", function()
      local r = new_router({ route { paths = { "/api" } } })
      local m = r:match("GET", nil, "/api/foo")
      assert.equal("/foo", m.upstream_uri)
      assert.is_nil(m.service)
      r = new_router({ route { paths = { "/api" }, service = { id = "svc", protocol = "http", host = "h", port = 80 } } })
      assert.equal("/", r:match("GET", nil, "/api").upstream_uri)
    end)

    it("joins the whole path for a route without paths", function()
      local r = new_router({ route { hosts = { "example.com" }, service = service("/s") } })
      local m = r:match("GET", "example.com", "/foo")
      assert.is_nil(m.matched_path)
      assert.equal("/s/foo", m.upstream_uri)
      assert.equal("/s", r:match("GET", "example.com", "/").upstream_uri)
    end)
  end)

  describe("match result", function()
    it("carries the route (with preserve_host) and its service", function()
      local svc = service("/")
      local r = new_router({
        route { id = "keep", hosts = { "keep.test" }, preserve_host = true, service = svc },
        route { id = "drop", hosts = { "drop.test" }, service = svc },
      })
      local m = r:match("GET", "keep.test:8000", "/")
      assert.equal("keep", m.route.id)
      assert.is_true(m.route.preserve_host)
      assert.equal(svc, m.service)
      m = r:match("GET", "drop.test", "/")
      assert.is_not_true(m.route.preserve_host)
    end)
  end)

  describe("memo of matches", function()
    it("answers a repeated request as the first time, by method and host as well as path", function()
      local r = new_router({
        route { id = "get-a", methods = { "GET" }, hosts = { "a.test" }, paths = { "/x" } },
        route { id = "post-a", methods = { "POST" }, hosts = { "a.test" }, paths = { "/x" } },
        route { id = "get-any", methods = { "GET" }, paths = { "/x" } },
      })
      for _ = 1, 3 do
        assert.equal("get-a", id_of(r:match("GET", "a.test", "/x/1")))
        assert.equal("post-a", id_of(r:match("POST", "a.test:8000", "/x/1")))
        assert.equal("get-any", id_of(r:match("GET", "b.test", "/x/1")))
        assert.equal("get-any", id_of(r:match("GET", nil, "/x/1")))
        assert.is_nil(r:match("POST", "b.test", "/x/1"))
        assert.is_nil(r:match("GET", "a.test", "/y"))
      end
    end)

    it("stays bounded: past its size it starts over and still matches every path", function()
      local r = new_router({ route { id = "root", paths = { "/" }, service = service("/base") } })
      for i = 1, 10000 do
        local m = r:match("GET", nil, "/p" .. i)
        assert.equal("/base/p" .. i, m.upstream_uri)
      end
      assert.is_true(r.memoCount <= 4096)
      assert.equal("/base/p1", r:match("GET", nil, "/p1").upstream_uri)
    end)

    it("keeps no match for a path too long to remember, and matches it every time", function()
      local r = new_router({ route { id = "root", paths = { "/" } } })
      local long = "/" .. string.rep("a", 600)
      assert.equal("root", id_of(r:match("GET", nil, long)))
      assert.equal(0, r.memoCount)
      assert.equal("root", id_of(r:match("GET", nil, long)))
    end)

    it("keeps no match for a client's overlong Host or method (memory a client could fill)", function()
      local r = new_router({
        route { id = "wild", hosts = { "*.example.com" }, paths = { "/" } },
        route { id = "get", methods = { "GET" }, paths = { "/get" } },
      })
      local host = string.rep("a", 4000) .. ".example.com"
      assert.equal("wild", id_of(r:match("GET", host, "/x")))
      local method = string.rep("M", 4000)
      assert.equal("wild", id_of(r:match(method, "a.example.com", "/x")))
      assert.equal(0, r.memoCount)
      assert.equal("wild", id_of(r:match("GET", host, "/x")))
      assert.equal("wild", id_of(r:match("GET", "a.example.com:8000", "/x")))
      assert.equal(1, r.memoCount)
    end)
  end)

  describe("large configs", function()
    it("builds 1000 prefix routes and matches each of them", function()
      local routes = {}
      for i = 1, 1000 do
        routes[i] = route { id = "r" .. i, paths = { "/svc" .. i }, service = service("/up" .. i) }
      end
      routes[1001] = route { id = "catch-all", paths = { "/" } }
      local r = new_router(routes)
      for i = 1, 1000 do
        local m = r:match("GET", "example.com", "/svc" .. i .. "/items")
        assert.equal("r" .. i, m.route.id)
        assert.equal("/up" .. i .. "/items", m.upstream_uri)
      end
      -- "/svc10x" must pick "/svc10", not "/svc1" nor a longer one
      assert.equal("r10", id_of(r:match("GET", nil, "/svc10x")))
      assert.equal("catch-all", id_of(r:match("GET", nil, "/nothing")))
    end)
  end)

  describe("generated Lua", function()
    it("needs no lualib helpers", function()
      local path = package.searchpath("krs.gateway.router", package.path)
      local f = assert(io.open(path, "r"))
      local src = f:read("*a")
      f:close()
      assert.is_nil(src:find("lualib_bundle", 1, true))
      assert.is_nil(src:find("__TS__", 1, true))
    end)
  end)
end)

-- The local gateway's path normalization: what Kong's router and kong.request.get_path
-- see (kong.tools.uri.normalize with merge_slashes), checked without nginx.
local saved_ngx = _G.ngx

describe("krs.gateway.pdk normalizePath", function()
  local normalize

  setup(function()
    -- Loading the PDK needs only nginx's log level constants.
    _G.ngx = saved_ngx or { ERR = 4, WARN = 5, NOTICE = 6, INFO = 7, DEBUG = 8 }
    package.loaded["krs.gateway.pdk"] = nil
    normalize = require("krs.gateway.pdk").normalizePath
  end)

  teardown(function()
    package.loaded["krs.gateway.pdk"] = nil
    _G.ngx = saved_ngx
  end)

  it("keeps escapes of reserved characters, upper-cased", function()
    assert.equal("/a%2Fb", normalize("/a%2Fb"))
    assert.equal("/a%2Fb", normalize("/a%2fb"))
    assert.equal("/100%25", normalize("/100%25"))
    assert.equal("/%3A%40%21%24%26%27%28%29%2A%2B%2C%3B%3D%3F%23%5B%5D",
      normalize("/%3a%40%21%24%26%27%28%29%2a%2b%2c%3b%3d%3f%23%5b%5d"))
  end)

  it("decodes escapes of unreserved and other characters", function()
    assert.equal("/ABc~", normalize("/%41%42c%7E"))
    assert.equal("/A-_.~", normalize("/%41%2D%5F%2E%7E"))
    assert.equal("/a b", normalize("/a%20b"))
    assert.equal("/caf\195\169", normalize("/caf%C3%A9"))
  end)

  it("resolves dot segments, also escaped ones, never above the root", function()
    assert.equal("/b", normalize("/a/../b"))
    assert.equal("/a/b", normalize("/a/./b"))
    assert.equal("/x", normalize("/strip/%2e%2e/x"))
    assert.equal("/a", normalize("/../a"))
    assert.equal("/", normalize("/a/.."))
    assert.equal("/a/", normalize("/a/."))
    assert.equal("/a/", normalize("/a/b/.."))
  end)

  it("merges repeated slashes and keeps a trailing one", function()
    assert.equal("/x/y", normalize("//x//y"))
    assert.equal("/a/", normalize("/a//"))
    assert.equal("/a/", normalize("/a/"))
  end)

  it("leaves plain paths as they are", function()
    assert.equal("/", normalize("/"))
    assert.equal("", normalize(""))
    assert.equal("/strip/a;b=c", normalize("/strip/a;b=c"))
    assert.equal("/a#frag", normalize("/a#frag"))
  end)
end)

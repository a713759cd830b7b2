-- For busted under plain LuaJIT: the few `ngx` digest and encoding functions the shared
-- library calls (sha1_bin, md5, encode_base64), implemented for real on the system's
-- libcrypto, so pure-logic specs run the same bytes nginx would produce.
-- Installs itself as the global `ngx` only where there is none.
local ffi = require "ffi"

ffi.cdef [[
unsigned char *SHA1(const unsigned char *d, size_t n, unsigned char *md);
unsigned char *MD5(const unsigned char *d, size_t n, unsigned char *md);
]]

local ok, crypto = pcall(ffi.load, "crypto")
if not ok then crypto = ffi.load("libcrypto.so.3") end

local function digest(fn, len)
  return function(s)
    local out = ffi.new("unsigned char[?]", len)
    fn(s, #s, out)
    return ffi.string(out, len)
  end
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function encode_base64(s, no_padding)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chunk = {}
    for j = 3, 0, -1 do
      local idx = math.floor(n / 64 ^ j) % 64
      chunk[#chunk + 1] = B64:sub(idx + 1, idx + 1)
    end
    if not b then chunk[3], chunk[4] = "=", "=" elseif not c then chunk[4] = "=" end
    out[#out + 1] = table.concat(chunk)
  end
  local text = table.concat(out)
  if no_padding then text = text:gsub("=+$", "") end
  return text
end

local sha1_bin = digest(crypto.SHA1, 20)
local md5_bin = digest(crypto.MD5, 16)

if rawget(_G, "ngx") == nil then
  _G.ngx = {
    sha1_bin = sha1_bin,
    md5 = function(s) return (md5_bin(s):gsub(".", function(c) return string.format("%02x", c:byte()) end)) end,
    encode_base64 = encode_base64,
  }
end

return { sha1_bin = sha1_bin, encode_base64 = encode_base64 }

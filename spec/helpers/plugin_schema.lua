-- Validating a plugin's config against its own schema.lua, through the local gateway's
-- Kong validator, as the plugin specs do:
--   local s = require("plugin_schema")("redis-cache")
--   s.ok(config) → filled config; s.errors_of(config) → field errors; s.error_text(...)
local validator = require("krs.gateway.schema")
local assert = require("luassert")

return function(name)
  local module = "kong.plugins." .. name .. ".schema"
  local s = {}

  -- A fresh copy each time, so one test's mutations cannot leak into the next.
  function s.schema()
    package.loaded[module] = nil
    return require(module)
  end

  function s.validate(config, extra)
    local entity = { name = name, config = config }
    for k, v in pairs(extra or {}) do entity[k] = v end
    return validator.validatePlugin(s.schema(), entity)
  end

  function s.ok(config, extra)
    local out, errs = s.validate(config, extra)
    assert.is_nil(errs, errs and validator.formatErrors(errs))
    return out.config
  end

  function s.errors_of(config, extra)
    local out, errs = s.validate(config, extra)
    assert.is_nil(out)
    return errs
  end

  function s.error_text(config, extra)
    return validator.formatErrors(s.errors_of(config, extra))
  end

  return s
end

-- wrk script: a flood of unique 16 KB User-Agents (issue 9 item 2), see BENCHMARKS.md.
-- Each has a unique prefix, then random text (one of 64 pads made at start).
local chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ;/()._-"
local pads = {}
local n = 0
init = function(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  for p = 1, 64 do
    local t = {}
    for i = 1, 16200 do
      local k = math.random(#chars)
      t[i] = chars:sub(k, k)
    end
    pads[p] = table.concat(t)
  end
end
request = function()
  n = n + 1
  local ua = "Mozilla/5.0 (X11; flood " .. n .. "-" .. math.random(1e9) .. ") " .. pads[math.random(64)]
  return wrk.format("GET", "/ad", {["User-Agent"] = ua, ["X-Forwarded-For"] = "8.8.8.8"})
end

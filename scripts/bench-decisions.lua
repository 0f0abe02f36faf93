-- wrk script for scripts/bench --endpoint decisions: POST /v1/decisions asking for three slots
-- (top-banner, sidebar, text-link), one traffic row per request: the row's address as the body's
-- "ip" (wrk connects from loopback, a trusted proxy) and its User-Agent as "ua".
--
-- Traffic file: $BENCH_TRAFFIC or the first script argument, as for bench.lua.

local requests = {}
local n = 0
local i = 0

local function json_string(s)
   return '"' .. s:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", c:byte())
   end) .. '"'
end

function init(args)
   local path = args[1] or os.getenv("BENCH_TRAFFIC")
      or "tests/data/traffic/synthetic-requests.tsv"
   local f = assert(io.open(path, "r"))
   local headers = { ["Content-Type"] = "application/json" }
   for line in f:lines() do
      if line:sub(1, 1) ~= "#" and line ~= "" then
         local ip, ua = line:match("^([^\t]*)\t([^\t]*)")
         if ip and ip ~= "" then
            local body = '{"placements":[{"div":"a","placement":"top-banner"},'
               .. '{"div":"b","placement":"sidebar"},{"div":"c","placement":"text-link"}],'
               .. '"ip":' .. json_string(ip) .. ',"ua":' .. json_string(ua) .. '}'
            n = n + 1
            requests[n] = wrk.format("POST", "/v1/decisions", headers, body)
         end
      end
   end
   f:close()
   assert(n > 0, "no rows in " .. path)
   i = math.random(0, n - 1)
end

function request()
   i = i % n + 1
   return requests[i]
end

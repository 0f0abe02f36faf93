-- wrk script for scripts/bench --endpoint impression|click: GETs the paths listed in a file, one
-- per line, round-robin ($BENCH_PATHS or the first script argument).

local requests = {}
local n = 0
local i = 0

function init(args)
   local path = args[1] or os.getenv("BENCH_PATHS")
   local f = assert(io.open(path, "r"))
   for line in f:lines() do
      if line ~= "" then
         n = n + 1
         requests[n] = wrk.format("GET", line)
      end
   end
   f:close()
   assert(n > 0, "no paths in " .. path)
   i = math.random(0, n - 1)
end

function request()
   i = i % n + 1
   return requests[i]
end

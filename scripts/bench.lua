-- wrk script for scripts/bench: replays the synthetic traffic file, one row per request, sending
-- the row's address as X-Forwarded-For and its User-Agent as User-Agent to /ad.
--
-- Traffic file: $BENCH_TRAFFIC, or the first script argument (wrk ... -s bench.lua URL -- FILE),
-- default tests/data/traffic/synthetic-requests.tsv. Lines starting with # are skipped.
-- Each wrk thread has its own Lua state, so every thread reads the file in init() and prebuilds
-- its request strings; threads start at different offsets so they do not send the same rows.
--
-- Returning visitors (scripts/bench --visitors returning): with BENCH_COOKIE=NAME, every row is one
-- visitor that sends back a stable cookie, `Cookie: NAME=r` followed by the row's index (from 0)
-- in 21 zero-padded digits: 22 URL-safe base64 characters, the shape of rotator's `rid` cookie
-- (the same as examples/loadgen --cookie NAME).

local requests = {}
local n = 0
local i = 0

function init(args)
   local cookie = os.getenv("BENCH_COOKIE")
   if cookie == "" then cookie = nil end
   local path = args[1] or os.getenv("BENCH_TRAFFIC")
      or "tests/data/traffic/synthetic-requests.tsv"
   local f = assert(io.open(path, "r"))
   for line in f:lines() do
      if line:sub(1, 1) ~= "#" and line ~= "" then
         local ip, ua = line:match("^([^\t]*)\t([^\t]*)")
         if ip and ip ~= "" then
            local headers = { ["X-Forwarded-For"] = ip }
            -- scripts/bench --tls handshake: a new connection (and TLS handshake) per request.
            if os.getenv("BENCH_CLOSE") == "1" then
               headers["Connection"] = "close"
            end
            if ua ~= "" then
               headers["User-Agent"] = ua
            end
            if cookie then
               headers["Cookie"] = string.format("%s=r%021d", cookie, n)
            end
            n = n + 1
            requests[n] = wrk.format("GET", "/ad", headers)
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

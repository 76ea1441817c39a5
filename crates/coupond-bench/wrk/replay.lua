-- The first KEYS requests of each issue.lua thread sent again, round and round: every
-- answer is a replay. Environment: COUPOND_KEY, BATCH_ID, PREFIX, KEYS.
local threads = 0
local counter = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  prefix = (os.getenv("PREFIX") or "c") .. tid .. "-"
  batch = os.getenv("BATCH_ID")
  keys = tonumber(os.getenv("KEYS") or "5000")
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("COUPOND_KEY")
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter % keys + 1
  local id = prefix .. counter
  wrk.headers["Idempotency-Key"] = "k" .. id
  return wrk.format("POST", "/v1/coupons/issue/", nil,
    '{"batch_id":' .. batch .. ',"user_id":"u' .. id .. '"}')
end

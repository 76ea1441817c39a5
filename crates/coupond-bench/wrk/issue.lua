-- POST /v1/coupons/issue/ with a new user and a new Idempotency-Key on every request.
-- Keys and users are "<prefix><thread>-<n>", n counting from 1, so replay.lua can send
-- the first of them again. Environment: COUPOND_KEY, BATCH_ID, PREFIX.
local threads = 0
local counter = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  prefix = (os.getenv("PREFIX") or "c") .. tid .. "-"
  batch = os.getenv("BATCH_ID")
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("COUPOND_KEY")
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local id = prefix .. counter
  wrk.headers["Idempotency-Key"] = "k" .. id
  return wrk.format("POST", "/v1/coupons/issue/", nil,
    '{"batch_id":' .. batch .. ',"user_id":"u' .. id .. '"}')
end

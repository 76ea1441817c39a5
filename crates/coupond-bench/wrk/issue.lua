-- POST /v1/coupons/issue/ with keys and users "<prefix><thread>-<n>", n counting from 1.
-- Without REPLAY_KEYS every request is a new user and a new Idempotency-Key; with it, the
-- first REPLAY_KEYS of them are sent again, round and round, so every answer is a replay
-- of an earlier run's issue. Environment: COUPOND_KEY, BATCH_ID, PREFIX, REPLAY_KEYS.
local threads = 0
local counter = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  prefix = (os.getenv("PREFIX") or "c") .. tid .. "-"
  batch = os.getenv("BATCH_ID")
  replay_keys = tonumber(os.getenv("REPLAY_KEYS") or "")
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("COUPOND_KEY")
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  if replay_keys then
    counter = counter % replay_keys + 1
  else
    counter = counter + 1
  end
  local id = prefix .. counter
  wrk.headers["Idempotency-Key"] = "k" .. id
  return wrk.format("POST", "/v1/coupons/issue/", nil,
    '{"batch_id":' .. batch .. ',"user_id":"u' .. id .. '"}')
end

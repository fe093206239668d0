-- Give back a request's budget holds (admit.lua): it was refused after admission, before its job
-- was queued, so it will cost nothing (broker/limits/ratelimit.py `Limiter.refund`).
-- KEYS: per budget its counter and its holds ZSET; ARGV: [1] the hold (`<request id>:<nano-dollars>`)
local nanos = tonumber(string.match(ARGV[1], ':(%d+)$'))
for k = 1, #KEYS - 1, 2 do
  -- Only a hold still there is given back: one that lapsed was already.
  if redis.call('ZREM', KEYS[k + 1], ARGV[1]) == 1 and redis.call('EXISTS', KEYS[k]) == 1 then
    redis.call('DECRBY', KEYS[k], nanos)
  end
end
return 1

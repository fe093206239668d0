-- Reserve a request's worst-case cost against every budget that applies to it, all or none
-- (broker/budgets.py). A counter holds the nano-dollars spent plus those reserved by requests still
-- running; finish.lua settles each reservation with the real cost.
-- KEYS: the counters; ARGV: 1 nano-dollars to reserve (negative: a refund), then per key: its limit
--       (nano-dollars) and when it may expire (unix s: a while after its day or month ends)
-- Returns {1, 0, nano-dollars left under the tightest budget} or {0, index of the budget that refused, left}
local want = tonumber(ARGV[1])
local left = nil
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local spent = tonumber(redis.call('GET', KEYS[i]) or '0')
  if want > 0 and spent + want > limit then return {0, i, string.format('%.0f', math.max(0, limit - spent))} end
  if left == nil or limit - spent - want < left then left = limit - spent - want end
end
for i = 1, #KEYS do
  if want ~= 0 then redis.call('INCRBY', KEYS[i], want) end
  redis.call('EXPIREAT', KEYS[i], ARGV[2 * i + 1])
end
return {1, 0, string.format('%.0f', math.max(0, left or 0))}

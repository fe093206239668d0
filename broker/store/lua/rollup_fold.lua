-- Fold a closed hour's per-minute buckets into its day's per-hour bucket (broker/ops/rollups.py), once:
-- the hour's hash is marked `folded`, so every worker may try and one does it. Both keys are in the
-- tenant's Cluster slot. One call an hour per tenant, instead of a second hash written by every request.
-- KEYS: 1 the hour's per-minute hash, 2 its day's per-hour hash
-- ARGV: 1 the hour's field prefix ("<hour of the day>\t"), 2 the day hash's expiry (unix s)
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HSETNX', KEYS[1], 'folded', '1') == 0 then return 0 end
local flat = redis.call('HGETALL', KEYS[1])
local sums = {}
for i = 1, #flat, 2 do
  local rest = string.match(flat[i], '^%d+\t(.+)$')  -- the field without its minute
  if rest then sums[rest] = (sums[rest] or 0) + tonumber(flat[i + 1]) end
end
for field, n in pairs(sums) do redis.call('HINCRBY', KEYS[2], ARGV[1] .. field, n) end
redis.call('EXPIREAT', KEYS[2], ARGV[2])
return 1

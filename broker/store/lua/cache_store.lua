-- Store an answer (broker/cache/exact.py), keep the cache within its bounds, and land the single flight.
-- The entry is written before the flight key goes, so a follower that sees the flight gone and
-- then reads the entry (broker/cache/exact.py `poll`, in that order) finds it.
-- KEYS: 1 the entry, 2 the index zset, 3 the flight
-- ARGV: 1 the answer, 2 its TTL in ms, 3 now (ms), 4 max entries, 5 the leader's job id ('' if none)
local now, ttl, max = tonumber(ARGV[3]), tonumber(ARGV[2]), tonumber(ARGV[4])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
-- Members are scored by expiry: the expired ones' keys are gone already, and past the bound the
-- soonest to expire (about the oldest) are dropped with their entries.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
local excess = redis.call('ZCARD', KEYS[2]) - max
if excess > 0 then
  local dropped = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #dropped, 2 do
    redis.call('DEL', dropped[i])  -- in the index's slot: every cache key is tagged {cache}
  end
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[2], last[2])
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) == ARGV[5] then
  redis.call('DEL', KEYS[3])
end
return 1

-- A hedged job's race between its two attempts (workers/hedging.py). One hash per job:
-- live (attempts still running), primary and hedge (their providers), won (the winner's provider).
-- KEYS: 1 the race hash
-- ARGV: 1 op, 2 the calling attempt's provider, then per op:
--   start  3 the hedge's provider, 4 expire at (unix ms)   → 1
--   claim  the first attempt to claim wins                   → 1 won, 0 lost
--   quit   an attempt stops before winning (failed, cancelled, or its hedge was never queued: ARGV 2 is
--          then the hedge's provider) → 1: it must answer all the same (it won, or no other attempt runs),
--          0: another answers
--   state  → {primary, hedge, won} (nil when there is no race)
local op, me = ARGV[1], ARGV[2]
if op == 'start' then
  redis.call('HSET', KEYS[1], 'live', 2, 'primary', me, 'hedge', ARGV[3])
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
  return 1
end
local won = redis.call('HGET', KEYS[1], 'won')
if op == 'claim' then
  if not won then
    redis.call('HSET', KEYS[1], 'won', me)
    return 1
  end
  return won == me and 1 or 0
end
if op == 'quit' then
  if won then return won == me and 1 or 0 end
  return redis.call('HINCRBY', KEYS[1], 'live', -1) <= 0 and 1 or 0
end
return redis.call('HMGET', KEYS[1], 'primary', 'hedge', 'won')

-- Mark a job cancelled on one provider (broker/queue/streams.py `cancel`): pull.lua drops it unrun if
-- it is still queued. The marker lives until the job's deadline (past it pull.lua drops the job anyway).
-- The backlog hash's field `~cancels` says until when a marker may live (server clock, ms): pull.lua
-- asks for markers only before that instant (it reads the field in the HMGET it makes anyway), so a
-- provider with no cancellation lately pays no EXISTS per job. Moved only later, never earlier (two
-- cancels racing must not leave the earlier deadline): hence a script. Both keys are in the provider's
-- Cluster slot.
-- KEYS: 1 the job's marker, 2 the provider's backlog hash; ARGV: 1 ms until the job's deadline
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
local t = redis.call('TIME')
local lives_until = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
if tonumber(redis.call('HGET', KEYS[2], '~cancels') or '0') < lives_until then
  redis.call('HSET', KEYS[2], '~cancels', lives_until)
end
return 1

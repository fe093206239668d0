-- Admit and enqueue one job atomically (broker/streams.py `enqueue`).
-- KEYS: 1 the tenant's lane stream, 2 the lane's active-tenants zset, 3 backlog hash,
--       4 drain hash, 5 workers zset
-- ARGV: 1 tenant, 2 lane, 3 job id, 4 job (msgpack), 5 ms left before the job's deadline,
--       6 worker liveness window ms, 7 min_queue, 8 stream maxlen, 9 bell channel,
--       10.. lanes served before or with this one (their backlog is ahead of us)
-- Returns {'ok', entry id} | {'no_workers'} | {'full', retry_after_ms, backlog, rate}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZCOUNT', KEYS[5], now - tonumber(ARGV[6]), '+inf') == 0 then
  return {'no_workers'}
end
local ahead = 0
for i = 10, #ARGV do
  ahead = ahead + tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0')
end
-- The drain rate is measured only while workers are saturated (pull.lua), so it
-- is the lane's real capacity; below min_queue we never reject.
local rate = tonumber(redis.call('HGET', KEYS[4], 'rate') or '0')
if ahead >= tonumber(ARGV[7]) and rate > 0 then
  local wait_ms = ahead / rate * 1000
  local left = tonumber(ARGV[5])
  if wait_ms > left then
    return {'full', tostring(math.ceil(wait_ms - left)), tostring(ahead), tostring(rate)}
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], 'workers', '$', 'MKSTREAM')
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[8], '*', 'id', ARGV[3], 'job', ARGV[4])
redis.call('ZADD', KEYS[2], 'NX', 0, ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('PUBLISH', ARGV[9], ARGV[2])
return {'ok', id}

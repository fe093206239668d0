-- End a job: hand the terminal reply to its API process, keep the result for a
-- while, acknowledge and delete the entry, and retire the tenant's stream when
-- it is empty (broker/outbox.py). Atomic, so enqueue.lua never sees half of it.
-- KEYS: 1 the job's stream, 2 the lane's active zset, 3 result key, 4 the provider's drain hash,
--       5 the provider's circuit hash (circuit.lua)
-- ARGV: 1 entry id, 2 tenant, 3 reply channel, 4 reply (msgpack), 5 result TTL s,
--       6 how long the job ran in ms (0: a failure or cancellation, not a measure of the work),
--       7 the upstream model, 8 its time to first token in ms (0: not a stream), 9 '1' to keep the
--       deployment's own averages too (its group routes by latency: broker/strategies.py)
-- Ledger (broker/ledger.py), absent for a hand-off: KEYS 6 the tenant's usage hash of the day,
--       7 the usage log stream; ARGV 10 field prefix, 11 the hash's expiry (unix s), 12 log maxlen,
--       13 the log record, 14..22 one count per ledger metric (ledger.METRICS order); KEYS 8.. per
--       budget the job was held to: its counter and its holds ZSET (admit.lua), ARGV 23 the job's
--       cost (nano-dollars), 24 its hold (`<job id>:<nano-dollars>`)
-- An empty reply channel: the job was handed to another deployment (failover), which answers it.
if ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
end
local acked = redis.call('XACK', KEYS[1], 'workers', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
-- Counted by the one delivery that acknowledges the entry: a re-delivered job, or an end sent twice, once.
if acked == 1 and ARGV[10] then
  local metrics = {'requests', 'input_tokens', 'output_tokens', 'cached_tokens', 'cost_nanos', 'errors',
                   'cancelled', 'estimated', 'unpriced'}
  for i, metric in ipairs(metrics) do
    if ARGV[13 + i] ~= '0' then redis.call('HINCRBY', KEYS[6], ARGV[10] .. metric, ARGV[13 + i]) end
  end
  redis.call('EXPIREAT', KEYS[6], ARGV[11])
  if tonumber(ARGV[12]) > 0 then
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[12], '*', 'r', ARGV[13])
  end
  for k = 8, #KEYS - 1, 2 do
    -- The hold still there is replaced by the real cost; one admit.lua already gave back (its
    -- deadline passed) leaves the whole cost to add.
    local delta = tonumber(ARGV[23])
    if redis.call('ZREM', KEYS[k + 1], ARGV[24]) == 1 then
      delta = delta - tonumber(string.match(ARGV[24], ':(%d+)$'))
    end
    -- A counter gone with its period stays gone (INCRBY would revive it without a TTL).
    if delta ~= 0 and redis.call('EXISTS', KEYS[k]) == 1 then
      redis.call('INCRBY', KEYS[k], string.format('%.0f', delta))
    end
  end
end
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[1])
end
-- The provider's service time, a moving average: enqueue.lua admits by when a job would finish.
local service = tonumber(ARGV[6] or '0')
local took = service
if service > 0 then
  local average = tonumber(redis.call('HGET', KEYS[4], 'service_ms') or '0')
  if average > 0 then service = 0.8 * average + 0.2 * service end
  redis.call('HSET', KEYS[4], 'service_ms', tostring(service))
  if ARGV[9] == '1' then
    for field, sample in pairs({['total:' .. ARGV[7]] = took, ['ttft:' .. ARGV[7]] = tonumber(ARGV[8] or '0')}) do
      if sample > 0 then
        local avg = tonumber(redis.call('HGET', KEYS[4], field) or '0')
        if avg > 0 then sample = 0.8 * avg + 0.2 * sample end
        redis.call('HSET', KEYS[4], field, tostring(sample))
      end
    end
  end
  -- A success closes the deployment's circuit (and ends its run of failures).
  if KEYS[5] and redis.call('EXISTS', KEYS[5]) == 1 then
    redis.call('HDEL', KEYS[5], ARGV[7], ARGV[7] .. ':fails', ARGV[7] .. ':probe')
    if redis.call('HEXISTS', KEYS[5], ARGV[7] .. ':since') == 1 then  -- a failure ratio's window is open
      redis.call('HINCRBY', KEYS[5], ARGV[7] .. ':ok', 1)
    end
  end
end
return 1

-- End a job in its provider's queue: acknowledge and delete its entry, and keep the provider's service
-- times and circuit (broker/queue/outbox.py). Atomic, so enqueue.lua never sees half of it. A stream
-- left empty is not retired here: pull.lua retires it (with its tenant's place in the lane) when its
-- turn finds it empty, and reclaim.lua at every live worker's heartbeat and when a worker stops
-- (broker/queue/streams.py `leave`). Retiring it here cost three commands per job (XLEN, ZREM, DEL),
-- and the tenant's next job a fourth to make it again (XGROUP CREATE): a tenant sending one request at
-- a time paid them all on every request. Every key is in the provider's Cluster slot; the reply and
-- the result are commands of the same round trip, and the ledger (ledger.lua, in the tenant's slot)
-- follows only for the call that acknowledged the entry (on one Redis, all in job_end.lua).
-- KEYS: 1 the job's stream, 2 the lane's active zset (unused since streams are retired by pull.lua;
--       kept so every caller's layout stays one), 3 the provider's drain hash,
--       4 the provider's circuit hash (circuit.lua)
-- ARGV: 1 entry id, 2 tenant (unused, as KEYS[2]), 3 how long the job ran in ms (0: a failure, a
--       cancellation or a hand-off, not a measure of the work), 4 the upstream model, 5 its time to
--       first token in ms (0: not a stream), 6 '1' to keep the deployment's own averages too (its group
--       routes by latency: broker/routing/strategies.py), 7 the provider's average service time in ms to
--       store (the worker's moving average, sent a few times a second, not per job:
--       broker/queue/outbox.py); absent or '': the average as it was, moved here by ARGV[3] (a caller
--       that keeps none, or the previous release's arguments)
-- Returns 1 if this call acknowledged the entry, 0 if another delivery of the job already had: the
-- ledger counts a job once, after the call that returned 1.
local acked = redis.call('XACK', KEYS[1], 'workers', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
-- The provider's service time, a moving average: enqueue.lua admits by when a job would finish.
local service = tonumber(ARGV[3] or '0')
local took = service
if service > 0 then
  if ARGV[7] == nil then
    local average = tonumber(redis.call('HGET', KEYS[3], 'service_ms') or '0')
    if average > 0 then service = 0.8 * average + 0.2 * service end
    redis.call('HSET', KEYS[3], 'service_ms', tostring(service))
  elseif ARGV[7] ~= '' then
    redis.call('HSET', KEYS[3], 'service_ms', ARGV[7])
  end
  if ARGV[6] == '1' then
    for field, sample in pairs({['total:' .. ARGV[4]] = took, ['ttft:' .. ARGV[4]] = tonumber(ARGV[5] or '0')}) do
      if sample > 0 then
        local avg = tonumber(redis.call('HGET', KEYS[3], field) or '0')
        if avg > 0 then sample = 0.8 * avg + 0.2 * sample end
        redis.call('HSET', KEYS[3], field, tostring(sample))
      end
    end
  end
  -- A success closes the deployment's circuit (and ends its run of failures).
  if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('HDEL', KEYS[4], ARGV[4], ARGV[4] .. ':fails', ARGV[4] .. ':probe')
    if redis.call('HEXISTS', KEYS[4], ARGV[4] .. ':since') == 1 then  -- a failure ratio's window is open
      redis.call('HINCRBY', KEYS[4], ARGV[4] .. ':ok', 1)
    end
  end
end
return acked

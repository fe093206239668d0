-- Admit and enqueue one job atomically (broker/queue/streams.py `enqueue`).
-- KEYS: 1 the tenant's lane stream, 2 the lane's active-tenants zset, 3 backlog hash,
--       4 drain hash, 5 workers zset, 6 circuit hash (circuit.lua)
-- ARGV: 1 tenant, 2 lane, 3 job id, 4 job (msgpack), 5 ms left before the job's deadline,
--       6 worker liveness window ms, 7 min_queue, 8 stream maxlen, 9 bell channel,
--       10 n lanes, then the lane names, then their weights, then the jobs/s one worker is
--       assumed to drain before the provider's rate has ever been measured, the upstream
--       model, how long a half-open circuit's one probe may take (ms), and '1' when the caller saw a live
--       worker less than a second ago (broker/queue/streams.py LIVE_MEMO_S): the workers zset is not read
--       then, unless the cold rate below needs their number
-- Returns {'ok', entry id} | {'no_workers'} | {'open', ms until it may be tried[, 'cool': rate limited]}
--       | {'full', retry_after_ms, jobs ahead, their drain rate, service time ms (0: not measured)}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function count_live() return redis.call('ZCOUNT', KEYS[5], now - tonumber(ARGV[6]), '+inf') end
local live_workers = nil
if ARGV[14 + 2 * tonumber(ARGV[10])] ~= '1' then
  live_workers = count_live()
  if live_workers == 0 then
    return {'no_workers'}
  end
end
-- While several lanes have work each drains at its weighted share of the
-- measured rate (pull.lua's smooth weighted round robin). The rate is measured
-- only while workers are saturated, so it is real capacity; below min_queue
-- waiting jobs a lane never rejects.
local lane, nl = ARGV[2], tonumber(ARGV[10])
-- The deployment's circuit: skipped while open or cooling down after a 429; once the open time
-- is over, exactly one job at a time goes through as the probe (half-open) until one succeeds.
if redis.call('EXISTS', KEYS[6]) == 1 then
  local m = ARGV[12 + 2 * nl]
  local cool = tonumber(redis.call('HGET', KEYS[6], m .. ':cool') or '0')
  if cool > now then return {'open', string.format('%.0f', cool - now), 'cool'} end
  local open_until = tonumber(redis.call('HGET', KEYS[6], m) or '0')
  if open_until > now then return {'open', string.format('%.0f', open_until - now)} end
  if open_until > 0 then
    local probe = tonumber(redis.call('HGET', KEYS[6], m .. ':probe') or '0')
    if probe > now then return {'open', string.format('%.0f', probe - now)} end
    redis.call('HSET', KEYS[6], m .. ':probe', now + tonumber(ARGV[13 + 2 * nl]))
  end
end
local own_field = lane .. ':' .. ARGV[1]  -- this tenant's queue of the lane, as the drain hash names it
-- The lane's backlog counted up front: its answer is the backlog this job joins, so below min_queue
-- (the usual case) nothing more is read. A refusal below takes the count back.
local mine = redis.call('HINCRBY', KEYS[3], lane, 1) - 1
-- Admit only what should *finish* in time: its wait plus the provider's
-- average service time (finish.lua measures it) within 90% of the time left.
-- Before any job has finished, only the start can be estimated: within 70%
-- of the time left, the rest for the work. The best estimate of the wait is how fast
-- this tenant's own queue in this lane has been draining (pull.lua measures
-- it while the queue had work): that rate already reflects the other tenants
-- and lanes competing with it, including the ones that arrive later and are
-- served first. Before it has been measured: the lane's weighted share of the
-- provider's rate, with tenants taking turns. And before even that has ever
-- been measured (a provider's first saturation): a cautious guess from the
-- live workers' slots, so a first burst of short-deadline requests is not
-- all admitted to time out.
-- (Read only past min_queue: below it nothing here is needed, and a quiet queue reads nothing more.)
if mine >= tonumber(ARGV[7]) then
  -- Every other lane's backlog in one command: the lanes' names are ARGV[11..10+nl].
  local backlog = redis.call('HMGET', KEYS[3], unpack(ARGV, 11, 10 + nl))
  local my_weight, weights = 1, 0
  for i = 1, nl do
    local name, weight = ARGV[10 + i], tonumber(ARGV[10 + nl + i])
    if name == lane then
      my_weight = weight
      weights = weights + weight
    elseif tonumber(backlog[i] or '0') > 0 then
      weights = weights + weight
    end
  end
  -- This tenant's own waiting jobs in the lane, from its stream: its entries are the jobs waiting and
  -- those running (pending; every other is deleted as it ends or is dropped). Counted here, on this
  -- path only, rather than kept in a counter that every job moved twice (up here, down at its pull).
  local own = 0
  local queued = redis.call('XLEN', KEYS[1])
  if queued > 0 then
    local pending = redis.pcall('XPENDING', KEYS[1], 'workers')
    if type(pending) == 'table' and not pending.err then own = math.max(queued - tonumber(pending[1]), 0) end
  end
  local drains = redis.call('HMGET', KEYS[4], 'rate', own_field .. ':rate', 'service_ms')
  local rate = tonumber(drains[1] or '0')
  if rate <= 0 then rate = (live_workers or count_live()) * tonumber(ARGV[11 + 2 * nl]) end
  local own_rate = tonumber(drains[2] or '0')
  local ahead, drain = own + 1, own_rate
  if own_rate <= 0 then
    ahead = math.min(mine, (own + 1) * math.max(redis.call('ZCARD', KEYS[2]), 1))
    -- Jobs waiting mean every slot is busy: this one starts after those ahead *and* one more finish.
    if ahead > 0 then ahead = ahead + 1 end
    drain = rate * my_weight / weights
  end
  local wait_ms = ahead / drain * 1000
  local service_ms = tonumber(drains[3] or '0')
  local budget = tonumber(ARGV[5]) * 0.7
  if service_ms > 0 then budget = tonumber(ARGV[5]) * 0.9 - service_ms end
  if wait_ms > budget then
    redis.call('HINCRBY', KEYS[3], lane, -1)
    -- '%.0f', not tostring: past 1e14 Lua writes '1e+14', which the caller's int() refuses.
    return {'full', string.format('%.0f', math.ceil(wait_ms - budget)), string.format('%.0f', ahead - 1),
            tostring(drain), tostring(service_ms)}
  end
end
-- A tenant is in the lane's active set exactly while its stream exists (this script makes both together,
-- pull.lua and reclaim.lua retire both together, as the previous release's finish.lua did), so an XADD
-- that finds the stream (NOMKSTREAM: it never makes one here) needs no ZADD: the tenant is active. Only
-- when it finds none are the stream, its group and the tenant's place made: a stream without its group
-- would hold the job where no worker reads it. That saves the ZADD NX every job paid.
-- The set can be lost while the stream lives only to an allkeys-* eviction policy (neither key has a
-- TTL, so volatile-* ones never take them; the default, noeviction, never does): then the tenant's jobs
-- would wait unseen by pull.lua. One job in eight (by the server's millisecond) puts the tenant back
-- (ZADD NX, a no-op otherwise), so such a loss heals within a few of the tenant's jobs, where the ZADD on
-- every job healed it at the next one.
local dl = now + tonumber(ARGV[5])
local id = redis.call('XADD', KEYS[1], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[8], '*', 'id', ARGV[3], 'dl', dl,
                      'job', ARGV[4])
if not id then
  redis.call('XGROUP', 'CREATE', KEYS[1], 'workers', '$', 'MKSTREAM')
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[8], '*', 'id', ARGV[3], 'dl', dl, 'job', ARGV[4])
  redis.call('ZADD', KEYS[2], 'NX', 0, ARGV[1])
elseif now % 8 == 0 then
  redis.call('ZADD', KEYS[2], 'NX', 0, ARGV[1])
end
redis.call('PUBLISH', ARGV[9], lane)
return {'ok', id}

-- Admit one request against every limit that applies to it (its tenant's, and
-- its key's when the key has its own), atomically: all buckets or none.
-- KEYS: 3 per scope: requests bucket, tokens bucket, in-flight ZSET
-- ARGV: [1] tokens, [2] request id, [3] slot TTL in ms (the request's deadline, from now),
--       [4] number of scopes, then per scope: rpm, tpm, max_concurrent (0 = no such limit)
-- Returns {admitted, reason (0 none, 1 rpm, 2 tpm, 3 concurrency), wait_ms, scope that refused (0 none),
--          then per scope: requests remaining, requests reset ms, tokens remaining, tokens reset ms, in flight}
--
-- A bucket is one number: the instant (µs, Redis server clock) at which it is
-- full again; a missing key means full. Level = limit - (full_at - now) * rate,
-- so continuous refill needs no timer, and the key's TTL is exactly the time
-- until it is full. Server TIME, not a client clock, so every API process agrees.
local WINDOW = 60000000 -- µs: a bucket refills completely in one minute
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local costs = {1, tonumber(ARGV[1])}
local scopes = {}
local reason, worst, culprit = 0, 0, 0
for s = 1, tonumber(ARGV[4]) do
  local base = 4 + (s - 1) * 3
  local scope = {limits = {tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])},
                 max_concurrent = tonumber(ARGV[base + 3]), full_at = {now, now}, in_flight = 0,
                 keys = {KEYS[(s - 1) * 3 + 1], KEYS[(s - 1) * 3 + 2], KEYS[(s - 1) * 3 + 3]}}
  scopes[s] = scope
  for i = 1, 2 do
    if scope.limits[i] > 0 then
      local stored = tonumber(redis.call('GET', scope.keys[i]) or now)
      scope.full_at[i] = math.max(stored, now)
      -- Time this request must wait for the bucket to hold its cost; 1 µs of slack for float error.
      local over = scope.full_at[i] - now + costs[i] * WINDOW / scope.limits[i] - WINDOW
      if over > 1 and over > worst then reason, worst, culprit = i, over, s end
    end
  end
  if scope.max_concurrent > 0 then
    -- Slots of requests whose deadline passed belong to crashed or stuck processes: reclaim them.
    redis.call('ZREMRANGEBYSCORE', scope.keys[3], '-inf', math.floor(now / 1000))
    scope.in_flight = redis.call('ZCARD', scope.keys[3])
    -- When a slot frees is unknowable here; a second is the retry hint.
    if scope.in_flight >= scope.max_concurrent and worst < 1000000 then reason, worst, culprit = 3, 1000000, s end
  end
end

if reason == 0 then
  local ttl = tonumber(ARGV[3])
  for _, scope in ipairs(scopes) do
    for i = 1, 2 do
      if scope.limits[i] > 0 and costs[i] > 0 then
        scope.full_at[i] = scope.full_at[i] + costs[i] * WINDOW / scope.limits[i]
        -- At least 1 ms: a cost below the clock's float precision leaves full_at == now, and
        -- Redis refuses PX 0.
        redis.call('SET', scope.keys[i], string.format('%.0f', scope.full_at[i]), 'PX',
                   math.max(1, math.ceil((scope.full_at[i] - now) / 1000)))
      end
    end
    if scope.max_concurrent > 0 then
      redis.call('ZADD', scope.keys[3], math.floor(now / 1000) + ttl, ARGV[2])
      scope.in_flight = scope.in_flight + 1
      -- The set lives as long as its latest slot could.
      if redis.call('PTTL', scope.keys[3]) < ttl then redis.call('PEXPIRE', scope.keys[3], ttl) end
    end
  end
end

local out = {reason == 0 and 1 or 0, reason, math.ceil(worst / 1000), culprit}
for _, scope in ipairs(scopes) do
  for i = 1, 2 do
    local used = (scope.full_at[i] - now) * scope.limits[i] / WINDOW
    out[#out + 1] = math.max(0, math.floor(scope.limits[i] - used + 1e-6))
    out[#out + 1] = math.ceil((scope.full_at[i] - now) / 1000)
  end
  out[#out + 1] = scope.in_flight
end
return out

-- Admit one request against every limit that applies to it (its tenant's, and
-- its key's when the key has its own), atomically: all buckets or none.
-- The request's budgets (broker/money/budgets.py) are held in the same step: its worst-case cost is
-- reserved against each, all or none, and only when every rate limit admitted it.
-- KEYS: 3 per scope: requests bucket, tokens bucket, in-flight ZSET (its slots, and EXPIRES below);
--       then 2 per budget: its counter (nano-dollars spent + held), its holds ZSET
-- ARGV: [1] tokens, [2] request id, [3] slot TTL in ms (the request's deadline, from now),
--       [4] number of scopes, then per scope: rpm, tpm, max_concurrent (0 = no such limit);
--       then [n] number of budgets, [n+1] nano-dollars to hold, then per budget: its limit
--       (nano-dollars) and when its keys may expire (unix s)
-- Returns {admitted, reason (0 none, 1 rpm, 2 tpm, 3 concurrency, 4 budget), wait_ms,
--          scope (or, for reason 4, budget) that refused (0 none),
--          then per scope: requests remaining, requests reset ms, tokens remaining, tokens reset ms, in flight,
--          then, with budgets, the nano-dollars left under the tightest one}
--
-- A bucket is one number: the instant (µs, Redis server clock) at which it is
-- full again; a missing key means full. Level = limit - (full_at - now) * rate,
-- so continuous refill needs no timer, and the key's TTL is exactly the time
-- until it is full. Server TIME, not a client clock, so every API process agrees.
local WINDOW = 60000000 -- µs: a bucket refills completely in one minute
-- An in-flight set's member that is no slot: scored by the set's expiry (unix ms), always in the future.
local EXPIRES, EXPIRY_STEP_MS = '~expires', 60000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local costs = {1, tonumber(ARGV[1])}
local scopes = {}
local reason, worst, culprit = 0, 0, 0
-- Every bucket that has a limit, read in one MGET (all of one call's keys share a Cluster slot).
local buckets = {}
for s = 1, tonumber(ARGV[4]) do
  local base = 4 + (s - 1) * 3
  local scope = {limits = {tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])},
                 max_concurrent = tonumber(ARGV[base + 3]), full_at = {now, now}, in_flight = 0,
                 keys = {KEYS[(s - 1) * 3 + 1], KEYS[(s - 1) * 3 + 2], KEYS[(s - 1) * 3 + 3]}}
  scopes[s] = scope
  for i = 1, 2 do
    if scope.limits[i] > 0 then buckets[#buckets + 1] = scope.keys[i] end
  end
end
local levels = #buckets > 0 and redis.call('MGET', unpack(buckets)) or {}
local read = 0
for s, scope in ipairs(scopes) do
  for i = 1, 2 do
    if scope.limits[i] > 0 then
      read = read + 1
      local stored = tonumber(levels[read] or now)
      scope.full_at[i] = math.max(stored, now)
      -- Time this request must wait for the bucket to hold its cost; 1 µs of slack for float error.
      local over = scope.full_at[i] - now + costs[i] * WINDOW / scope.limits[i] - WINDOW
      if over > 1 and over > worst then reason, worst, culprit = i, over, s end
    end
  end
  if scope.max_concurrent > 0 then
    -- Every member but EXPIRES is a slot (a set of the previous release has none: one slot fewer is
    -- counted for the first admission that meets it, which adds it).
    scope.members = redis.call('ZCARD', scope.keys[3])
    scope.in_flight = math.max(scope.members - 1, 0)
    if scope.in_flight >= scope.max_concurrent then
      -- Slots of requests whose deadline passed belong to crashed or stuck processes: reclaimed when
      -- they would refuse one (below the limit they refuse nothing; the set never holds more than it).
      -- EXPIRES is scored at the set's own expiry, in the future, so it stays.
      redis.call('ZREMRANGEBYSCORE', scope.keys[3], '-inf', math.floor(now / 1000))
      scope.in_flight = math.max(redis.call('ZCARD', scope.keys[3]) - 1, 0)
    end
    -- When a slot frees is unknowable here; a second is the retry hint.
    if scope.in_flight >= scope.max_concurrent and worst < 1000000 then reason, worst, culprit = 3, 1000000, s end
  end
end

-- Budgets. A hold is a member `<request id>:<nano-dollars>` of the budget's holds ZSET, scored by
-- when it lapses (the request's deadline): ledger.lua removes it and charges the real cost; one
-- whose job never reached a worker's end (dropped unrun, its process gone) is given back here.
local nb_at = 5 + tonumber(ARGV[4]) * 3
local budgets = tonumber(ARGV[nb_at] or '0')
local want, left = tonumber(ARGV[nb_at + 1] or '0'), nil
local first_budget_key = tonumber(ARGV[4]) * 3
if budgets > 0 then
  local now_ms = math.floor(now / 1000)
  for b = 1, budgets do
    local counter, holds = KEYS[first_budget_key + 2 * b - 1], KEYS[first_budget_key + 2 * b]
    -- At most 100 lapsed holds per call keeps the script's time bounded; the rest go next time.
    local lapsed = redis.call('ZRANGEBYSCORE', holds, '-inf', now_ms, 'LIMIT', 0, 100)
    for _, member in ipairs(lapsed) do
      if redis.call('EXISTS', counter) == 1 then
        redis.call('DECRBY', counter, tonumber(string.match(member, ':(%d+)$')))
      end
      redis.call('ZREM', holds, member)
    end
    local limit = tonumber(ARGV[nb_at + 2 * b])
    local spent = tonumber(redis.call('GET', counter) or '0')
    if reason == 0 and want > 0 and spent + want > limit then reason, culprit = 4, b end
    if left == nil or limit - spent < left then left = limit - spent end
  end
end

if reason == 0 then
  local ttl = tonumber(ARGV[3])
  if budgets > 0 and want > 0 then
    local member = ARGV[2] .. ':' .. string.format('%.0f', want)
    for b = 1, budgets do
      local counter, holds = KEYS[first_budget_key + 2 * b - 1], KEYS[first_budget_key + 2 * b]
      local expires = ARGV[nb_at + 2 * b + 1]
      redis.call('INCRBY', counter, string.format('%.0f', want))
      redis.call('ZADD', holds, math.floor(now / 1000) + ttl, member)
      redis.call('EXPIREAT', counter, expires)
      redis.call('EXPIREAT', holds, expires)
    end
    left = left - want
  end
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
      -- The set lives at least as long as its latest slot could: until EXPIRES's score, which is its
      -- expiry (PEXPIREAT), rounded up to the next whole minute past this slot's deadline. The ZADD that
      -- takes the slot moves EXPIRES on only if that is later (GT) and says so (CH: 2 changed, the slot
      -- and EXPIRES), so the set's TTL is written about once a minute, not with every slot.
      -- (Request ids are unique: an id already there, with a later deadline, cannot move EXPIRES on.)
      local slot_at = math.floor(now / 1000) + ttl
      local expires = math.ceil(slot_at / EXPIRY_STEP_MS) * EXPIRY_STEP_MS
      if redis.call('ZADD', scope.keys[3], 'GT', 'CH', expires, EXPIRES, slot_at, ARGV[2]) > 1 then
        -- A new set has no TTL, which GT takes for an infinite one; an existing set's is only lengthened
        -- (one of the previous release may hold a slot with a later deadline).
        if scope.members == 0 then
          redis.call('PEXPIREAT', scope.keys[3], expires)
        else
          redis.call('PEXPIREAT', scope.keys[3], expires, 'GT')
        end
      end
      scope.in_flight = scope.in_flight + 1
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
if budgets > 0 then out[#out + 1] = string.format('%.0f', math.max(0, left)) end
return out

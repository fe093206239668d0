-- A deployment's call failed: count it against its circuit (broker/circuit.py).
-- KEYS: 1 the provider's circuit hash
-- ARGV: 1 upstream model, 2 'hard' (5xx, timeout, refused connection or key) | 'cool' (429 with
--       Retry-After), 3 consecutive hard failures that open the circuit, 4 open ms,
--       5 cooldown ms (cool), 6 the hash's TTL ms
-- Returns 1 if this failure opened the circuit, else 0.
--
-- Fields, per upstream model: <m> open until (ms, server clock) · <m>:fails consecutive hard
-- failures · <m>:probe the half-open probe's deadline · <m>:cool rate-limited until.
-- enqueue.lua reads them; finish.lua clears them on a success.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = ARGV[1]
local opened = 0
if ARGV[2] == 'cool' then
  local until_ms = now + tonumber(ARGV[5])
  if until_ms > tonumber(redis.call('HGET', KEYS[1], m .. ':cool') or '0') then
    redis.call('HSET', KEYS[1], m .. ':cool', until_ms)
  end
else
  local fails = redis.call('HINCRBY', KEYS[1], m .. ':fails', 1)
  -- A failed half-open probe reopens at once; otherwise K failures in a row open it.
  if fails >= tonumber(ARGV[3]) or redis.call('HEXISTS', KEYS[1], m .. ':probe') == 1 then
    redis.call('HSET', KEYS[1], m, now + tonumber(ARGV[4]))
    redis.call('HDEL', KEYS[1], m .. ':probe')
    opened = 1
  end
end
-- Idle circuits go: the state is only worth keeping while failures are recent.
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[6]) then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
return opened

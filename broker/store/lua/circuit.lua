-- A deployment's call failed: count it against its circuit (broker/limits/circuit.py).
-- KEYS: 1 the provider's circuit hash
-- ARGV: 1 upstream model, 2 'hard' (5xx, timeout, refused connection or key) | 'cool' (429 with
--       Retry-After), 3 consecutive hard failures that open the circuit, 4 open ms,
--       5 cooldown ms (cool), 6 the hash's TTL ms, 7 failure ratio that opens it, 8 its window ms,
--       9 the fewest calls the ratio is judged on
-- Returns 1 if this failure opened the circuit, else 0.
--
-- Fields, per upstream model: <m> open until (ms, server clock) · <m>:fails consecutive hard
-- failures · <m>:probe the half-open probe's deadline · <m>:cool rate-limited until ·
-- <m>:since, <m>:bad, <m>:ok the ratio's window (from its first failure) and its counts.
-- enqueue.lua reads them; finish.lua counts successes in an open window and closes on a success.
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
  -- The ratio's window opens with a failure; successes count in it from then (finish.lua).
  local since = tonumber(redis.call('HGET', KEYS[1], m .. ':since') or '0')
  if now - since > tonumber(ARGV[8]) then
    redis.call('HSET', KEYS[1], m .. ':since', now, m .. ':bad', 0, m .. ':ok', 0)
  end
  local bad = redis.call('HINCRBY', KEYS[1], m .. ':bad', 1)
  local calls = bad + tonumber(redis.call('HGET', KEYS[1], m .. ':ok') or '0')
  local too_many = calls >= tonumber(ARGV[9]) and bad >= tonumber(ARGV[7]) * calls
  -- A failed half-open probe reopens at once; otherwise K failures in a row, or the ratio, open it.
  if fails >= tonumber(ARGV[3]) or too_many or redis.call('HEXISTS', KEYS[1], m .. ':probe') == 1 then
    redis.call('HDEL', KEYS[1], m .. ':since', m .. ':bad', m .. ':ok')  -- a fresh window after it
    redis.call('HSET', KEYS[1], m, now + tonumber(ARGV[4]))
    redis.call('HDEL', KEYS[1], m .. ':probe')
    opened = 1
  end
end
-- Idle circuits go: the state is only worth keeping while failures are recent.
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[6]) then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
return opened

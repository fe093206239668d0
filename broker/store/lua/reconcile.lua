-- Settle a tokens bucket with the usage the provider reported (broker/limits/ratelimit.py `reconcile_into`),
-- or, run backwards, give back a refused request's charge (`Limiter.refund`).
-- Real usage minus the estimate, applied to the tokens bucket: a credit moves
-- `full_at` back, a debit moves it on from now, past capacity if need be, so a tenant that used more
-- waits it off.
-- A credit, the usual case (the estimate counts the whole output limit), is one INCRBY of the stored
-- instant and reads no clock: the level admit.lua reads is max(full_at, now), so a full_at moved into
-- the past reads as full, as a deleted key would; the key keeps its TTL, the instant it would have been
-- full without the credit, which is later than needed, never earlier. Whole µs, rounded towards less
-- credit. A credit to a bucket already full (its key gone) would make the key from nothing: removed.
-- A debt is capped at a year: an upstream may report any int64 of usage, and past that the expiry
-- would leave the range Redis accepts for PX (the script error would fail the whole finish pipeline).
-- KEYS: [1] tokens bucket; ARGV: [1] tpm, [2] actual - estimated.
-- Returns the bucket's new TTL in ms after a debit, 0 after a credit.
local delta = tonumber(ARGV[2]) * 60000000 / tonumber(ARGV[1])
if delta <= 0 then
  local credit = math.floor(-delta)
  if credit > 0 and redis.call('INCRBY', KEYS[1], -credit) < 1e14 then  -- no µs instant of this century
    redis.call('DEL', KEYS[1])
  end
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local full_at = tonumber(redis.call('GET', KEYS[1]) or now)
full_at = math.min(math.max(full_at, now) + delta, now + 365 * 86400000000)
local ttl = math.max(1, math.ceil((full_at - now) / 1000))  -- Redis refuses PX 0
redis.call('SET', KEYS[1], string.format('%.0f', full_at), 'PX', ttl)
return ttl

-- Settle a tokens bucket with the usage the provider reported (broker/limits/ratelimit.py `reconcile_into`).
-- Real usage minus the estimate, applied to the tokens bucket: a credit moves
-- `full_at` back (deleting the key once that is in the past), a debit moves it on
-- from now, past capacity if need be, so a tenant that used more waits it off.
-- A debt is capped at a year: an upstream may report any int64 of usage, and past that the expiry
-- would leave the range Redis accepts for PX (the script error would fail the whole finish pipeline).
-- KEYS: [1] tokens bucket; ARGV: [1] tpm, [2] actual - estimated.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local delta = tonumber(ARGV[2]) * 60000000 / tonumber(ARGV[1])
local full_at = tonumber(redis.call('GET', KEYS[1]) or now)
if delta > 0 then full_at = math.min(math.max(full_at, now) + delta, now + 365 * 86400000000)
else full_at = full_at + delta end
if full_at <= now then redis.call('DEL', KEYS[1]) return 0 end
local ttl = math.max(1, math.ceil((full_at - now) / 1000))  -- Redis refuses PX 0
redis.call('SET', KEYS[1], string.format('%.0f', full_at), 'PX', ttl)
return ttl

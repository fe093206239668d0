-- Count a finished job in its tenant's ledger (broker/money/ledger.py): the day's usage hash, and each
-- budget it was held to (admit.lua) gets its real cost in place of the hold. Every key is in the
-- tenant's Cluster slot. Sent only after finish.lua acknowledged the job's entry, so a job delivered
-- twice is counted once.
-- KEYS: 1 the tenant's usage hash of the day, 2 the day's counters of the job's key, model and deployment;
--       3.. per budget: its counter and its holds ZSET; then, with the console's series on, its R rollup
--       hashes (broker/ops/rollups.py)
-- ARGV: 1 field prefix ('<key>\t<model>\t<deployment>\t'), 2 the keys' expiry (unix s), 3..11 one count
--       per ledger metric (ledger.METRICS order), 12 the job's cost (nano-dollars), 13 its hold
--       (`<job id>:<nano-dollars>`); 14 R (absent: 0), then per rollup hash its bucket's field prefix and
--       expiry (unix s), then (field, increment) pairs added to each
-- The job's counts are added by one BITFIELD to a string of nine signed 64-bit counters (METRICS order),
-- one per (key, model, deployment) and day: one command for a job whatever it counted, where a hash
-- field per metric cost one HINCRBY per count that was not zero (four for a plain request). Exact as
-- HINCRBY is (OVERFLOW FAIL: past 2^63 the count is refused, as HINCRBY refuses it). The usage hash
-- lists them, a field '<prefix>#' each, written with the counters' first count, when both keys' expiry
-- is set too (the counters' instant is a function of the day: one write suffices). The reader
-- (ledger.py `report`) adds the per-metric fields the previous release wrote in the hash.
local ops = {'OVERFLOW', 'FAIL'}
local added = {}
for i = 1, 9 do
  if ARGV[2 + i] ~= '0' then
    ops[#ops + 1], ops[#ops + 2], ops[#ops + 3], ops[#ops + 4] = 'INCRBY', 'i64', '#' .. (i - 1), ARGV[2 + i]
    added[#added + 1] = tonumber(ARGV[2 + i])
  end
end
if #added > 0 then
  local sums = redis.call('BITFIELD', KEYS[2], unpack(ops))
  -- Every counter it moved was at zero before: the counters are new (a job always counts its request).
  local fresh = true
  for i, sum in ipairs(sums) do
    if not sum then error({err = 'ERR a ledger count would pass 2^63'}) end
    if sum ~= added[i] then fresh = false end
  end
  if fresh then
    redis.call('EXPIREAT', KEYS[2], ARGV[2])
    if redis.call('HSET', KEYS[1], ARGV[1] .. '#', 1) == 1 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
  end
end
local rollups = tonumber(ARGV[14] or '0')
for k = 3, #KEYS - rollups - 1, 2 do
  -- The hold still there is replaced by the real cost; one admit.lua already gave back (its
  -- deadline passed) leaves the whole cost to add.
  local delta = tonumber(ARGV[12])
  if redis.call('ZREM', KEYS[k + 1], ARGV[13]) == 1 then
    delta = delta - tonumber(string.match(ARGV[13], ':(%d+)$'))
  end
  -- A counter gone with its period stays gone (INCRBY would revive it without a TTL).
  if delta ~= 0 and redis.call('EXISTS', KEYS[k]) == 1 then
    redis.call('INCRBY', KEYS[k], string.format('%.0f', delta))
  end
end
-- The console's series (per-metric fields, broker/ops/rollups.py): a hash's expiry set when its first field
-- written here is new (HINCRBY answered just its increment).
local function count(key, field, by, first)
  local value = redis.call('HINCRBY', key, field, by)
  return first and tonumber(value) == tonumber(by)
end
local fresh, first
for r = 1, rollups do
  local key, prefix = KEYS[#KEYS - rollups + r], ARGV[13 + 2 * r]
  fresh, first = false, true
  for i = 15 + 2 * rollups, #ARGV - 1, 2 do
    fresh = count(key, prefix .. ARGV[i], ARGV[i + 1], first) or fresh
    first = false
  end
  if fresh then redis.call('EXPIREAT', key, ARGV[14 + 2 * r]) end
end
return 1

-- Count a finished job in its tenant's ledger (broker/money/ledger.py): the day's usage hash, and each
-- budget it was held to (admit.lua) gets its real cost in place of the hold. Every key is in the
-- tenant's Cluster slot. Sent only after finish.lua acknowledged the job's entry, so a job delivered
-- twice is counted once.
-- KEYS: 1 the tenant's usage hash of the day; 2.. per budget: its counter and its holds ZSET;
--       then, with the console's series on, its R rollup hashes (broker/ops/rollups.py)
-- ARGV: 1 field prefix ('<key>\t<model>\t<deployment>\t'), 2 the hash's expiry (unix s), 3..11 one count
--       per ledger metric (ledger.METRICS order), 12 the job's cost (nano-dollars), 13 its hold (`<job id>:<nano-dollars>`);
--       14 R (absent: 0), then per rollup hash its bucket's field prefix and expiry (unix s), then
--       (field, increment) pairs added to each
-- The job's counts go into one field of the hash, '<prefix>*', its nine counts packed as decimal numbers
-- in ledger.METRICS order, separated by commas: read and written back here, two commands for a job
-- whatever it counted, where a field per metric cost one HINCRBY per count that was not zero (four for
-- a plain request). Atomic, as the script is. Lua's numbers are doubles: a sum that would pass 2^53
-- (cost_nanos past $9M in a day for one key, model and deployment) is not packed but counted by
-- HINCRBY in the field '<prefix><metric>' as before, exact to 2^63; the reader (ledger.py `report`) adds
-- both kinds of field, and the fields the previous release wrote too.
local METRICS = {'requests', 'input_tokens', 'output_tokens', 'cached_tokens', 'cost_nanos', 'errors',
                 'cancelled', 'estimated', 'unpriced'}
local EXACT = 9007199254740992
local field = ARGV[1] .. '*'
local stored = redis.call('HGET', KEYS[1], field)
local sums = {}
if stored then
  for n in string.gmatch(stored, '[^,]+') do sums[#sums + 1] = tonumber(n) end
end
local changed = false
for i = 1, 9 do
  local by, sum = tonumber(ARGV[2 + i]), sums[i] or 0
  if by ~= 0 then
    if math.abs(sum + by) < EXACT and math.abs(by) < EXACT then
      sum, changed = sum + by, true
    else
      redis.call('HINCRBY', KEYS[1], ARGV[1] .. METRICS[i], ARGV[2 + i])
    end
  end
  sums[i] = string.format('%.0f', sum)
end
if changed then redis.call('HSET', KEYS[1], field, table.concat(sums, ',')) end
-- The hash's expiry is set when its field is made, not at every count (the instant is a function of the
-- hash's day, so one write suffices; a new field of an existing hash sets the same instant again).
if not stored then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
local rollups = tonumber(ARGV[14] or '0')
for k = 2, #KEYS - rollups - 1, 2 do
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

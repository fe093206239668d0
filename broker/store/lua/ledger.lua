-- Count a finished job in its tenant's ledger (broker/money/ledger.py): the day's usage hash, and each
-- budget it was held to (admit.lua) gets its real cost in place of the hold. Every key is in the
-- tenant's Cluster slot. Sent only after finish.lua acknowledged the job's entry, so a job delivered
-- twice is counted once.
-- KEYS: 1 the tenant's usage hash of the day; 2.. per budget: its counter and its holds ZSET;
--       then, with the console's series on, its R rollup hashes (broker/ops/rollups.py)
-- ARGV: 1 field prefix, 2 the hash's expiry (unix s), 3..11 one count per ledger metric
--       (ledger.METRICS order), 12 the job's cost (nano-dollars), 13 its hold (`<job id>:<nano-dollars>`);
--       14 R (absent: 0), then per rollup hash its bucket's field prefix and expiry (unix s), then
--       (field, increment) pairs added to each
local metrics = {'requests', 'input_tokens', 'output_tokens', 'cached_tokens', 'cost_nanos', 'errors',
                 'cancelled', 'estimated', 'unpriced'}
-- A hash's expiry is set when the hash is made, not at every count: its first write then is the first of
-- its fields, whose HINCRBY answers just its increment. So the expiry is set whenever the first field
-- written here is new (a new hash, or a new field of one: the same instant again, harmless), never
-- skipped for a new hash. (The instant is a function of the hash's day, so one write suffices.)
local function count(key, field, by, first)
  local value = redis.call('HINCRBY', key, field, by)
  return first and tonumber(value) == tonumber(by)
end
local fresh, first = false, true
for i, metric in ipairs(metrics) do
  if ARGV[2 + i] ~= '0' then
    fresh = count(KEYS[1], ARGV[1] .. metric, ARGV[2 + i], first) or fresh
    first = false
  end
end
if fresh then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
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

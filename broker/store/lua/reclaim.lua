-- Claim entries a dead worker left pending (idle past the limit: live workers
-- refresh theirs with heartbeats), with how often each was delivered. Jobs
-- cancelled meanwhile (their client left, or was failed during a Redis outage)
-- are dropped here, as pull.lua drops them, instead of being run again.
-- A stream left empty (finish.lua does not retire it) is retired here with its tenant's place in the
-- lane, as pull.lua does when its turn finds it empty: every live worker's heartbeat passes over them all.
-- KEYS: 1 stream, 2 the lane's active zset (absent: the previous release's caller; nothing retired)
-- ARGV: 1 consumer, 2 min idle ms, 3 count (0: only retire an empty stream), 4 the stream's tenant
-- Cancellation markers are named from the stream's provider prefix (up to its hash tag's `}:`), so
-- they are in the stream's Cluster slot.
-- Returns {{entry id, fields, times delivered}, ...}
if redis.call('XLEN', KEYS[1]) == 0 then
  if KEYS[2] then
    redis.call('ZREM', KEYS[2], ARGV[4])
    redis.call('DEL', KEYS[1])  -- its consumer group goes too; enqueue.lua makes both again
  end
  return {}
end
if tonumber(ARGV[3]) <= 0 then return {} end
local prefix = string.match(KEYS[1], '^.-}:')
local claimed = redis.call('XAUTOCLAIM', KEYS[1], 'workers', ARGV[1], ARGV[2], '0-0', 'COUNT', ARGV[3])
local out = {}
for _, entry in ipairs(claimed[2]) do
  if entry and entry[2] and redis.call('EXISTS', prefix .. 'cancelled:' .. entry[2][2]) == 1 then
    redis.call('XACK', KEYS[1], 'workers', entry[1])
    redis.call('XDEL', KEYS[1], entry[1])
  elseif entry and entry[2] then
    local info = redis.call('XPENDING', KEYS[1], 'workers', 'IDLE', 0, entry[1], entry[1], 1)
    local delivered = 1
    if info[1] then delivered = info[1][4] end
    out[#out + 1] = {entry[1], entry[2], delivered}
  end
end
return out

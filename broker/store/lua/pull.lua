-- Take up to `count` jobs for one worker, fairly (broker/queue/streams.py `pull`).
-- Lanes: smooth weighted round robin (nginx's), so every lane with work gets
-- its weight's share and none starves. Tenants within a lane: round robin, one
-- job per turn, so a flood from one tenant waits behind one job of each other.
-- Entries of cancelled jobs, and of jobs already past their deadline (their
-- client has had its timeout error from the API), are dropped here, unrun and
-- uncounted, so the drain rate measures real work only. A job's cancellation marker is looked for only
-- while one may live (cancel.lua's `~cancels`): a previous release's API marks without it, so in a
-- rolling upgrade its APIs go first (until then a job one of them cancels while queued may run; the
-- worker then hears of it only if its pub/sub reconnects, as for a cancel after the pull).
-- KEYS: 1 sched hash, 2 backlog hash, 3 drain hash
-- The tenants' streams and cancellation markers are found at run time, so their names (and the
-- lanes' active sets') are built here, from the prefix of KEYS[1] (Keys.sched): it
-- holds the provider's hash tag, so every one is in the declared keys' Cluster slot.
-- ARGV: 1 consumer, 2 count, 3 n lanes, 4.. lanes, then weights
-- Returns {{stream, entry id, fields}, ...}
local prefix = string.sub(KEYS[1], 1, -6)  -- without 'sched'
local consumer, want = ARGV[1], tonumber(ARGV[2])
local nl = tonumber(ARGV[3])
local lanes, weights, members, misses, done = {}, {}, {}, {}, {}
-- Each lane's first two tenants in turn order: whether it has any, whether more than one, and the one
-- whose turn it is, in one command. `heads[i]` stays valid until this script reorders the lane (a
-- lane's only tenant is never moved, so it serves every turn of the call); members[i] is 0, 1 or 2
-- ("2 or more") until a miss needs the exact count.
-- Only lanes whose backlog counts work waiting are looked at (one HMGET for them all, where a ZRANGE per
-- lane cost one command per lane even with one lane at work). The count is kept by the scripts that
-- move jobs (enqueue.lua up, this one down), atomically with the entries; should it read no work in any
-- lane, every lane is looked at all the same: a count gone wrong (a lost hash, a previous release's
-- enqueue.lua counting elsewhere) then costs a lane its turns only while other lanes count work, and
-- never leaves its jobs unseen once they are done.
local MEASURING = '~measuring'  -- the backlog hash's field set while a drain interval may be open
local heads, counted, working = {}, {}, 0
for i = 1, nl do
  lanes[i] = ARGV[3 + i]
  weights[i] = tonumber(ARGV[3 + nl + i])
end
-- Read with them: whether a drain interval may be open (MEASURING, below), and until when a job's
-- cancellation marker may live (cancel.lua): past that instant none does, and no job is asked about.
local asked = {unpack(lanes)}
asked[nl + 1], asked[nl + 2] = MEASURING, '~cancels'
local backlog, any = redis.call('HMGET', KEYS[2], unpack(asked)), false
local measuring, cancels = backlog[nl + 1] ~= false, tonumber(backlog[nl + 2] or '0') or 0
for i = 1, nl do
  backlog[i] = tonumber(backlog[i] or '0') or 0
  if backlog[i] > 0 then any = true end
end
for i = 1, nl do
  if any and backlog[i] <= 0 then heads[i] = {} else
    heads[i] = redis.call('ZRANGE', prefix .. 'active:' .. lanes[i], 0, 1)
  end
  members[i] = #heads[i]
  counted[i] = members[i] < 2
  misses[i] = 0
  done[i] = members[i] == 0
  if not done[i] then working = working + 1 end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out, taken, guard = {}, 0, 0
local taken_from = {}  -- 'lane:tenant' -> jobs taken from that queue now
local last_in = {}  -- 'lane:tenant' -> {its stream, the entry taken from it last, its lane's index}
local lane_left = {}  -- lane index -> its backlog after the last job taken from it
-- Every lane's credit, read once: only this script writes them (below), so later turns keep them here.
-- Not read at all when every lane is empty (an idle worker's poll), nor when one lane alone has work:
-- then that lane wins every turn and its credit comes back to what it was (+weight, -total), so zeros
-- stand in for them all and nothing is written.
local stored = nil
if working == 1 then stored = {} elseif working > 1 then stored = redis.call('HMGET', KEYS[1], unpack(lanes)) end
-- The tenants' turn counter, taken only when a lane's round robin has more than one tenant to order.
local function next_turn() return redis.call('HINCRBY', KEYS[1], 'turn', 1) end
while stored and taken < want and guard < 100000 do
  guard = guard + 1
  local total, best, best_weight = 0, nil, nil
  local current = {}
  for i = 1, nl do
    if not done[i] then
      current[i] = tonumber(stored[i] or '0') + weights[i]
      total = total + weights[i]
      if best == nil or current[i] > best_weight then best, best_weight = i, current[i] end
    end
  end
  if best == nil then break end
  local lane = lanes[best]
  local active = prefix .. 'active:' .. lane
  local tenant = (heads[best] or redis.call('ZRANGE', active, 0, 0))[1]
  if not tenant then
    done[best] = true
  else
    local stream = prefix .. 'q:' .. lane .. ':' .. tenant
    -- A tenant in the lane's active set has its stream (enqueue.lua makes both together, this script
    -- retires both together); should it be gone anyway (evicted), XREADGROUP's NOGROUP error is a miss.
    local got = redis.pcall('XREADGROUP', 'GROUP', 'workers', consumer, 'COUNT', 1, 'STREAMS', stream, '>')
    if type(got) == 'table' and got.err then got = nil end
    if got then
      local entry = got[1][2][1]
      -- The lane's last waiting job: no other tenant's queue in it has one to give, so the lane is not
      -- probed again in this call (the next call probes it as ever: a miscount costs a probe, no job).
      lane_left[best] = redis.call('HINCRBY', KEYS[2], lane, -1)
      local own_field = lane .. ':' .. tenant
      if lane_left[best] <= 0 then done[best] = true end
      -- Whether this tenant's queue still has work waiting is asked once per queue, after the turns
      -- (below), and only while its lane has: the entry taken last is the one to look past.
      last_in[own_field] = {stream, entry[1], best}
      -- To the back of the lane's round robin; the lane's only tenant is there already (a tenant that
      -- joins later enters at the front, score 0, as it would anyway).
      if members[best] > 1 then
        redis.call('ZADD', active, next_turn(), tenant)
        heads[best] = nil
      end
      local fields = entry[2]  -- id, <job id>, dl, <deadline ms>, job, <msgpack>
      if tonumber(fields[4]) < now
         or (cancels >= now and redis.call('EXISTS', prefix .. 'cancelled:' .. fields[2]) == 1) then
        redis.call('XACK', stream, 'workers', entry[1])
        redis.call('XDEL', stream, entry[1])
      else
        out[#out + 1] = {stream, entry[1], fields}
        taken = taken + 1
        taken_from[own_field] = (taken_from[own_field] or 0) + 1
        misses[best] = 0  -- the lane is exhausted only after a full cycle of its tenants yields nothing
        -- Only a job taken counts as the lane's turn. A lane whose head tenant had
        -- only running jobs, or only dead ones, keeps its weight: otherwise a lane
        -- with many busy tenants would lose its share to those misses.
        -- Written only where they changed: with one lane at work its credit stays as it was.
        local credits = {}
        for i, value in pairs(current) do
          if i == best then value = value - total end
          if value ~= tonumber(stored[i] or '0') then
            credits[#credits + 1] = lanes[i]
            credits[#credits + 1] = value
          end
        end
        if #credits > 0 then
          redis.call('HSET', KEYS[1], unpack(credits))
          for i, value in pairs(current) do
            if i == best then value = value - total end
            stored[i] = value
          end
        end
      end
    else
      -- How many tenants a full cycle is: counted before this miss retires any.
      if not counted[best] then members[best], counted[best] = redis.call('ZCARD', active), true end
      heads[best] = nil
      if redis.call('XLEN', stream) == 0 then
        redis.call('ZREM', active, tenant)
        redis.call('DEL', stream)  -- its consumer group goes too; enqueue.lua recreates both
        -- The previous release counted each tenant's queue in the backlog hash too: a count it left goes.
        redis.call('HDEL', KEYS[2], lane .. ':' .. tenant)
      else
        redis.call('ZADD', active, next_turn(), tenant)  -- only running jobs left: skip for now
      end
      misses[best] = misses[best] + 1
      if misses[best] >= members[best] then done[best] = true end
    end
  end
end
-- Drain rates (jobs/s), measured only over intervals in which work kept
-- waiting: then pulls are limited by capacity and competition, not by
-- arrivals. One for the provider, one per tenant queue of a lane (fields
-- '<lane>:<tenant>:rate|since|count'); enqueue.lua uses them.
-- An interval is open from the pull that first sees work left waiting until the one that leaves none. The
-- backlog hash's field MEASURING is set while one may be open (set by the first pull that measures, read
-- by every pull in its HMGET above, deleted by the pull that leaves the provider no work waiting): a pull
-- that finds it unset has no interval to close, and writes nothing here. At one request at a time that
-- is every pull, which wrote the same zeros back each time. (Intervals a previous release's pull.lua
-- opened are flagged by the first pull here that measures them; one that closes before that keeps its
-- start, and its next sample, over the gap, reads low once.)
local flag = false  -- an interval measured by this call: MEASURING to be set if it was not
local resets = {}  -- fields of queues with nothing waiting now: zeroed in one HSET at the end
local function measure(prefix_, still_waiting, n)
  if still_waiting > 0 and n > 0 then
    flag = true
    local since = tonumber(redis.call('HGET', KEYS[3], prefix_ .. 'since') or '0')
    if since == 0 then
      redis.call('HSET', KEYS[3], prefix_ .. 'since', now, prefix_ .. 'count', 0)
    else
      local count = redis.call('HINCRBY', KEYS[3], prefix_ .. 'count', n)
      if now - since >= 250 then  -- short windows: a fresh overload is measured within a blink
        local sample = count * 1000 / (now - since)
        local rate = tonumber(redis.call('HGET', KEYS[3], prefix_ .. 'rate') or '0')
        if rate > 0 then rate = 0.7 * rate + 0.3 * sample else rate = sample end
        redis.call('HSET', KEYS[3], prefix_ .. 'rate', tostring(rate), prefix_ .. 'since', now, prefix_ .. 'count', 0)
      end
    end
  elseif still_waiting == 0 and measuring then
    resets[#resets + 1] = prefix_ .. 'since'
    resets[#resets + 1] = 0
    resets[#resets + 1] = prefix_ .. 'count'
    resets[#resets + 1] = 0
  end
end
-- Jobs still waiting in every lane: as its last HINCRBY left it, else as read at the start (only this
-- call has written the hash since); none in a lane without an active tenant, whatever its count says.
local waiting = 0
for i = 1, nl do
  if lane_left[i] ~= nil then waiting = waiting + math.max(lane_left[i], 0)
  elseif members[i] > 0 then waiting = waiting + math.max(backlog[i], 0) end
end
measure('', waiting, taken)
for own_field, n in pairs(taken_from) do
  -- Work still waits in a tenant's queue when an entry follows the last one delivered from it (entries
  -- are delivered in order; none after it has been). Not asked when its lane has none waiting at all.
  local last, left = last_in[own_field], 0
  if (lane_left[last[3]] or 0) > 0 then left = #redis.call('XRANGE', last[1], '(' .. last[2], '+', 'COUNT', 1) end
  measure(own_field .. ':', left, n)
end
if #resets > 0 then redis.call('HSET', KEYS[3], unpack(resets)) end
-- Every queue's interval closed by now once none has work waiting: each was closed by the pull that took
-- its last job (above, flagged all along, since the flag goes only here).
if flag and not measuring then redis.call('HSET', KEYS[2], MEASURING, 1)
elseif measuring and not flag and waiting == 0 then redis.call('HDEL', KEYS[2], MEASURING) end
return out

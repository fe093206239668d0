-- A cacheable request at the door (broker/cache/exact.py): its cached answer, or whether it leads the
-- single flight of identical requests (the first one in takes the flight key), follows one already
-- flying, or runs alone (it may not lead: its client sent `Cache-Control: no-store`).
-- One step, so two identical requests can never both see "no entry, no flight" and both lead.
-- KEYS: 1 the entry, 2 the flight
-- ARGV: 1 '1' if it may lead, 2 its job id, 3 the flight's life in ms (the leader's deadline)
local entry = redis.call('GET', KEYS[1])
if entry then
  return {'hit', entry}
end
if ARGV[1] == '1' and redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {'lead'}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'follow'}
end
return {'alone'}

-- Revoke a key made at run time (broker/api_keys.py): its record and its name go in one step, and
-- only the revoke that removed them reports it (a second, concurrent one is told it is gone).
-- KEYS: [1] records, [2] names, [3] version counter; ARGV: [1] sha256 hex, [2] name, [3] the change channel
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[3], redis.call('INCR', KEYS[3]))
return 1

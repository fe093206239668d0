-- Store a key made at run time (broker/api_keys.py), unless its name is taken: the check and the
-- write are one step, so two admins creating the same name at once get one key and one 409.
-- KEYS: [1] records (hash → record), [2] names (name → hash), [3] version counter
-- ARGV: [1] the key's sha256 hex, [2] its name, [3] its record (msgpack), [4] the change channel
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return 0
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then -- the same secret twice: never with 256 random bits
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('PUBLISH', ARGV[4], redis.call('INCR', KEYS[3]))
return 1

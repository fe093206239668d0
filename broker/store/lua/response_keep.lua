-- Keep a stored response (api/responses_store.py `save`): its fields and its expiry in one call, so
-- the write a Responses request waits for before its client sees it complete is one command, and a
-- response is never left without its TTL.
-- KEYS: 1 the response's hash. ARGV: 1 TTL (s), then field, value pairs.
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1

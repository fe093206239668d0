-- Commit a batch step's progress (broker/batches/runner.py), all or nothing, after its output lines
-- are on disk: lines newly in flight, lines written (out of the in-flight hash, into the bitmap),
-- and the batch's cursor and file sizes. Its keys share the batch's Cluster slot (`{<batch id>}`).
-- KEYS: 1 in-flight hash, 2 written-lines bitmap, 3 the batch's hash
-- ARGV: 1 when the first two expire (unix s), 2 n new lines in flight, then n (line, custom_id)
--       pairs, then m written lines' count and the m numbers, then the batch hash's field/value pairs
local at = 2
local new = tonumber(ARGV[at])
for i = 1, new do
  redis.call('HSET', KEYS[1], ARGV[at + 2 * i - 1], ARGV[at + 2 * i])
end
at = at + 2 * new + 1
local written = tonumber(ARGV[at])
for i = 1, written do
  redis.call('HDEL', KEYS[1], ARGV[at + i])
  redis.call('SETBIT', KEYS[2], ARGV[at + i], 1)
end
if written > 0 then redis.call('EXPIREAT', KEYS[2], ARGV[1]) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIREAT', KEYS[1], ARGV[1]) end
at = at + written + 1
for i = at, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
return 1

-- End a job: hand the terminal reply to its API process, keep the result for a
-- while, acknowledge and delete the entry, and retire the tenant's stream when
-- it is empty (broker/outbox.py). Atomic, so enqueue.lua never sees half of it.
-- KEYS: 1 the job's stream, 2 the lane's active zset, 3 result key
-- ARGV: 1 entry id, 2 tenant, 3 reply channel, 4 reply (msgpack), 5 result TTL s
redis.call('PUBLISH', ARGV[3], ARGV[4])
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
redis.call('XACK', KEYS[1], 'workers', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[1])
end
return 1

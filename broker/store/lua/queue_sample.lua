-- One worker's sample of its provider's queues (broker/ops/queue_series.py), kept as the largest seen
-- in its minute and in its hour: a spike between two samples of another worker is not overwritten.
-- KEYS: the hour's per-minute hash, the day's per-hour hash (the provider's Cluster slot)
-- ARGV: 1, 2 their expiry (unix s); 3, 4 their bucket's field prefix; then (field, value) pairs
for k = 1, 2 do
  for i = 5, #ARGV - 1, 2 do
    local field = ARGV[2 + k] .. ARGV[i]
    if tonumber(ARGV[i + 1]) > tonumber(redis.call('HGET', KEYS[k], field) or '-1') then
      redis.call('HSET', KEYS[k], field, ARGV[i + 1])
    end
  end
  redis.call('EXPIREAT', KEYS[k], ARGV[k])
end
return 1

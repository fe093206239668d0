-- A single flight's leader ended without an answer to store (it failed, or its client left):
-- its followers then look again and one of them leads. Only its own flight: one that expired and
-- was taken by another request stays.
-- KEYS: 1 the flight; ARGV: 1 the leader's job id
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0

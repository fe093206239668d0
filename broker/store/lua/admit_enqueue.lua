-- A request's admission and its job's first enqueue in one call, on a Redis that is not a Cluster
-- (broker/queue/streams.py `enqueue`): admit.lua, then, only if it admitted the request, enqueue.lua.
-- Those two files are this script's functions (broker/store/scripts.py `composed`), each called with its
-- own KEYS and ARGV as when it runs alone. On a Cluster the tenant's keys and the provider's are in two
-- slots, so they stay two calls there; here one saves an EVALSHA and the API's second round trip. A job
-- the queue refuses stays admitted, as after two calls: the caller tries the next candidate or refunds.
-- KEYS: A admit.lua's, then enqueue.lua's
-- ARGV: 1 A, 2 N, then N admit.lua args, then enqueue.lua's
-- Returns {admit.lua's answer} if it refused, else {admit.lua's answer, enqueue.lua's}
local function slice(t, from, to)
  local out = {}
  for i = from, to do out[#out + 1] = t[i] end
  return out
end
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local admitted = admit(slice(KEYS, 1, nk), slice(ARGV, 3, 2 + na))
if admitted[1] ~= 1 then return {admitted} end
return {admitted, enqueue(slice(KEYS, nk + 1, #KEYS), slice(ARGV, 3 + na, #ARGV))}

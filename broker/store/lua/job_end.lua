-- A job's whole end in one call, on a Redis that is not a Cluster (broker/queue/outbox.py): the tenant's
-- tokens bucket settled (reconcile.lua), the terminal reply published and stored, the entry acknowledged
-- (finish.lua) and, only when this call acknowledged it, the job counted in the ledger (ledger.lua) and
-- its usage-log record written. Those three files are this script's functions (broker/store/scripts.py
-- `composed`), each called with its own KEYS and ARGV as when it runs alone. On a Cluster their keys are
-- in three slots, so they stay separate commands and the ledger follows in the next pipeline; here one
-- call saves two EVALSHA and that second round trip. In the order of the separate commands: the bucket
-- before the reply (the client's next request sees it settled), the result stored with the reply, the
-- entry acknowledged only after both, the ledger only after the acknowledgement.
-- The job's concurrency slots are freed here too, before the reply: the API, which the reply tells so
-- (Final.freed), answers its client without a round trip of its own, and the client's next request finds
-- the slot free. ZREM of the job's own member: a slot the API freed already (its client left) stays freed.
-- KEYS: 1-4 finish.lua's, 5 the result, 6 the usage log, then R tokens buckets, then S in-flight sets,
--       then L ledger.lua's
-- ARGV: 1 R, 2 L (0: nothing to count), 3 F, 4 reply channel, 5 the terminal reply, 6 the result's TTL s,
--       7 the usage log's MAXLEN (0: no log), 8 the usage record, 9 S, 10 the job id (its slots' member),
--       then F finish.lua args, then per bucket its tpm and (actual - estimated) tokens, then ledger.lua's args
-- Returns {1 if this call acknowledged the entry else 0, the ledger's error ('' : none)}
local function slice(t, from, to)
  local out = {}
  for i = from, to do out[#out + 1] = t[i] end
  return out
end
local buckets, counted, nf, slots = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[9])
local at = 10 + nf
for r = 1, buckets do
  reconcile({KEYS[6 + r]}, {ARGV[at + 2 * r - 1], ARGV[at + 2 * r]})
end
for s = 1, slots do
  redis.call('ZREM', KEYS[6 + buckets + s], ARGV[10])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
redis.call('SET', KEYS[5], ARGV[5], 'EX', ARGV[6])
local acked = finish(slice(KEYS, 1, 4), slice(ARGV, 11, 10 + nf))
local failed = ''
if acked == 1 and counted > 0 then
  -- A ledger that fails (a key of the wrong type) must not fail the end the client already has: as a
  -- script of its own it would not have.
  local first = 7 + buckets + slots
  local ok, err = pcall(ledger, slice(KEYS, first, first + counted - 1),
                        slice(ARGV, at + 2 * buckets + 1, #ARGV))
  if not ok then failed = type(err) == 'table' and tostring(err.err) or tostring(err) end
  if tonumber(ARGV[7]) > 0 then redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'r', ARGV[8]) end
end
return {acked, failed}

"""Every Redis key name the broker uses, each with its owner and bound.

All keys start with the configured namespace, so several deployments (or test
runs) share one Redis without touching each other's data. Every key one script
touches shares a Redis Cluster hash tag, the first `{...}` of its name:

- `{p}`, the provider's name, for its queues and everything its workers' scripts
  touch (enqueue, pull, finish, reclaim, circuit, deployment limits);
- `{tenant}`, in rate-limit, budget and usage keys: admit.lua reserves a tenant's
  and its key's buckets and budgets in one step, ledger.lua settles usage and budgets;
- `{id}` of a batch, for its record and its step's state (batch_commit.lua);
- `{cache}` and `{apikeys}`, one slot each for the cache's and the run-time keys' scripts.

In the table those braces are literal (the tag); other braces are placeholders.
Keys no script touches (results, job records, files, batches) hash by their whole
name and spread over the cluster.

| key                                   | type    | owner / writer          | bound |
|---------------------------------------|---------|-------------------------|-------|
| {ns}:{p}:q:{lane}:{tenant}            | stream  | enqueue.lua, workers    | entries XDEL'd at finish; key DEL'd when empty by the next pull.lua turn or worker heartbeat (reclaim.lua) that meets it, or by a worker that stops |
| {ns}:{p}:active:{lane}                | zset    | enqueue.lua, pull.lua   | tenants with queued or running jobs in the lane |
| {ns}:{p}:sched                        | hash    | pull.lua                | one field per lane (weighted round robin state) + turn |
| {ns}:{p}:backlog                      | hash    | enqueue.lua, pull.lua   | jobs waiting, not yet pulled: one field per lane, `~measuring` while pull.lua's drain interval may be open, `~cancels` until when a cancellation marker may live (cancel.lua) (a tenant's own, when asked past min_queue, is its stream's length less its pending entries; a previous release's per lane:tenant field is deleted when its stream is retired) |
| {ns}:{p}:drain                        | hash    | pull.lua, finish.lua    | drain rates: 3 fields, + 3 per lane:tenant (tenants come from config); service_ms; ttft:/total: per deployment |
| {ns}:{p}:workers                      | zset    | worker heartbeats       | live workers; entries older than a minute trimmed |
| {ns}:{p}:circuit                      | hash    | circuit.lua, finish.lua | 4 fields per failing upstream model; TTL: 2 x open time after the last failure |
| {ns}:{p}:busy:{model}                 | zset    | workers (least-busy)    | calls running, scored by deadline; expired ones trimmed on read; TTL the latest deadline |
| {ns}:{p}:cancelled:{job}              | string  | API on disconnect (cancel.lua) | TTL: the job's remaining deadline |
| {ns}:{p}:dead                         | stream  | workers, `dead replay`  | MAXLEN ~ queue.dead_letter_maxlen and MINID now - queue.dead_letter_retention_s at each XADD; key expires that long after its newest entry |
| {ns}:{p}:bell / {ns}:{p}:cancel       | channel | API publishes           | pub/sub: holds nothing |
| {ns}:result:{job}                     | string  | workers                 | TTL server.result_ttl_s (async jobs: async_result_ttl_s) |
| {ns}:file:{id}                        | string  | API (files.py)          | expires with the file: batches.file_ttl_days |
| {ns}:files:{tenant}                   | zset    | API (files.py)          | file ids; members past the longest file lifetime trimmed at upload |
| {ns}:batch:{id}                       | hash    | API, batch worker (batches.py) | a few fields; expires batches.retention_days after the batch ends (or its window) |
| {ns}:batch:{id}:inflight / :done / :lock | hash / bitmap / string | batch worker (runner.py, worker.py) | <= batches.max_in_flight lines; one bit per written line; both expire a day after the window; the lock's TTL 5 s, refreshed by its step |
| {ns}:batches:{tenant} / batches:active | zset   | API, batch worker       | batch ids; trimmed past retention / removed when the batch ends |
| {ns}:arq:queue                        | zset    | arq (API, batch worker) | batch steps queued or running; each removed when its step ends |
| {ns}:arq:health                       | string  | arq (batch worker)      | TTL arq's health_check_interval + 1 s (an hour); deleted at exit |
| arq:{job,in-progress,retry,result}:{ns}:{batch}:{n} | string | arq (batch worker) | one step each: deleted when it ends but its result, kept 60 s (keep_result); else the job a day after it was due |
| {ns}:job:{job}                        | hash    | API (async_jobs.py), workers | 2 fields, async jobs only; expires async_result_ttl_s after the job's deadline |
| {ns}:response:{id}                    | hash    | worker (stored_responses.py) | 4 fields, one write with the reply that completes it (store: true; the API for cache hits, background); expires responses.store_ttl_s later |
| {ns}:ev:{job}                         | list    | workers (outbox.py)     | one element per flushed burst of a streamed job, each event as its edit of the one before (event_deltas.py); expires stream_resume_ttl_s after its end (async: async_result_ttl_s), or after its deadline |
| {ns}:evbell:{job}                     | stream  | API readers (job_events.py), workers | only while a resumed or async reader waits on the job: MAXLEN 1 (workers XADD NOMKSTREAM, never creating it); TTL the job's deadline + 60 s |
| {ns}:events:{job}                     | stream  | the previous release's workers | read only, as a fallback, until its TTL (as ev:{job}'s) lets it go |
| {ns}:readers:{job}                    | string  | API (job_events.py)     | clients attached to a stream by reconnecting; TTL the job's deadline |
| {ns}:usage:{tenant}:{day}            | hash    | ledger.lua (ledger.py)  | lists the counters keys below: a field per group, tab-separated `<key> <model> <deployment> #` (and a previous release's per-metric fields, cache hits); expires usage.retention_days after the day |
| {ns}:usage:{tenant}:{day}:{group}    | string  | ledger.lua (ledger.py)  | 9 signed 64-bit counters (BITFIELD) of one (key, model, deployment) that day; the same expiry |
| {ns}:budget:{tenant}:{scope}:{period} | string | admit.lua, ledger.lua  | expires two days after its day or month |
| {ns}:budget:{tenant}:{scope}:{period}:holds | zset | admit.lua, ledger.lua | one member per running request; lapsed ones given back at admission; same expiry |
| {ns}:usage:log                        | stream  | workers (ledger.py), API (refusals) | MAXLEN ~ usage.log_maxlen |
| {ns}:ts:{tenant}:m:{hour}             | hash    | ledger.lua, API (rollups.py) | the console's per-minute series: <= 60 x (10 counts + 2 x 63 histogram buckets) fields per (model, deployment); expires 24 h after the hour |
| {ns}:ts:{tenant}:h:{day}              | hash    | rollup_fold.lua (workers) | the same per hour, folded from the minutes once the hour is over: <= 24 x that; expires 30 days after the day |
| {ns}:{p}:ts:q:m:{hour} / q:h:{day}    | hash    | workers (queue_sample.lua) | queue depth and oldest wait per lane, max per minute / per hour: <= 60 x 3 x 2 / 24 x 3 x 2 fields; expire 24 h / 30 days after the hour / day |
| {ns}:layout                           | string  | key_migration.py        | one integer: the key layout version; no TTL |
| {ns}:race:{job}                       | hash    | workers (hedging)       | 4 fields; expires at the job's deadline + 60 s |
| {ns}:{cache}:e:{scope}:{hash}         | string  | cache_store.lua (API)   | one answer (<= cache.max_entry_bytes); TTL cache ttl_s; DEL'd when trimmed from the index |
| {ns}:{cache}:index                    | zset    | cache_store.lua         | entry keys by expiry (ms); expired ones dropped and the soonest popped past cache.max_entries; expires with its last entry |
| {ns}:{cache}:f:{scope}:{hash}         | string  | cache_lookup.lua, API   | the single-flight leader's job id; PX its deadline; DEL'd when it answers or fails |
| {ns}:replies:{api_instance}           | channel | API subscribes          | pub/sub: holds nothing |
| {ns}:{apikeys}                        | hash    | api_keys.py (CLI, admin API) | one field per key made at run time and not revoked (revoke HDELs it) |
| {ns}:{apikeys}:names                  | hash    | api_keys.py             | the same keys' names: one field each, deleted with the key |
| {ns}:{apikeys}:version                | string  | api_keys.py             | one counter, bumped by every create and revoke |
| {ns}:{apikeys}:changed                | channel | api_keys.py publishes, API subscribes | pub/sub: holds nothing |
| {ns}:rl:{tenant}:rpm                  | string  | ratelimit.py (API)      | TTL = time until the bucket is full again (a refund's credit leaves it): <= 60 s |
| {ns}:rl:{tenant}:tpm                  | string  | ratelimit.py (API, worker) | same (a settlement's credit leaves it too); past 60 s only while repaying usage above the estimate |
| {ns}:rl:{tenant}:inflight             | zset    | ratelimit.py (API), job_end.lua (workers) | <= max_concurrent ids, + `~expires`; TTL: past its latest slot deadline, to the next whole minute (`~expires`' score) |
| {ns}:rl:{tenant}:key:{name}:*         | as above | ratelimit.py           | the same three, for a key with limits of its own |
| {ns}:{p}:dl:{model}:*                 | as above | ratelimit.py (workers) | the same three, for a deployment with limits of its own |
"""

from __future__ import annotations

# Consumer group every worker of a provider joins; one group per stream means
# each job goes to exactly one worker.
WORKER_GROUP = "workers"

# Safety cap on one tenant's lane stream (approximate trim). Finished jobs are
# deleted individually, so a stream holds only its backlog and jobs in flight;
# admission control rejects long before the cap matters.
STREAM_MAXLEN = 100_000

LANES = ("interactive", "default", "batch")


class Keys:
    def __init__(self, namespace: str) -> None:
        self.ns = namespace

    def provider(self, provider: str) -> str:
        """Prefix of a provider's queue keys (hash-tagged: one Cluster slot per provider)."""
        return f"{self.ns}:{{{provider}}}:"

    def queue(self, provider: str, lane: str, tenant: str) -> str:
        return f"{self.provider(provider)}q:{lane}:{tenant}"

    def active(self, provider: str, lane: str) -> str:
        return f"{self.provider(provider)}active:{lane}"

    def sched(self, provider: str) -> str:
        """pull.lua's turn state; the script names the lanes' keys from this one's prefix, which is why
        they all end in the same `provider()` prefix."""
        return f"{self.provider(provider)}sched"

    def backlog(self, provider: str) -> str:
        return f"{self.provider(provider)}backlog"

    def drain(self, provider: str) -> str:
        return f"{self.provider(provider)}drain"

    def workers(self, provider: str) -> str:
        return f"{self.provider(provider)}workers"

    def circuit(self, provider: str) -> str:
        return f"{self.provider(provider)}circuit"

    def cancelled(self, provider: str, job_id: str) -> str:
        return f"{self.provider(provider)}cancelled:{job_id}"

    def dead_letters(self, provider: str) -> str:
        return f"{self.provider(provider)}dead"

    def bell(self, provider: str) -> str:
        return f"{self.provider(provider)}bell"

    def cancel_channel(self, provider: str) -> str:
        return f"{self.provider(provider)}cancel"

    def result(self, job_id: str) -> str:
        return f"{self.ns}:result:{job_id}"

    def usage(self, tenant: str, day: str) -> str:
        """A tenant's usage aggregates of one UTC day (YYYY-MM-DD): broker/money/ledger.py. In the tenant's
        Cluster slot, with its budgets: ledger.lua touches both."""
        return f"{self.ns}:usage:{{{tenant}}}:{day}"

    def usage_counts(self, tenant: str, day: str, group: str) -> str:
        """The day's ledger counters of one `group` ("<key>\\t<model>\\t<deployment>"): ledger.lua's BITFIELD,
        listed in `usage`. In the tenant's Cluster slot too."""
        return f"{self.ns}:usage:{{{tenant}}}:{day}:{group}"

    def file(self, file_id: str) -> str:
        return f"{self.ns}:file:{file_id}"

    def files(self, tenant: str) -> str:
        return f"{self.ns}:files:{tenant}"

    def batch(self, batch_id: str) -> str:
        """A batch's record. Its step's state below shares its hash tag, so its Cluster slot:
        batch_commit.lua touches the record, `batch_inflight` and `batch_done` in one step."""
        return f"{self.ns}:batch:{{{batch_id}}}"

    def batch_inflight(self, batch_id: str) -> str:
        """The batch's lines queued and not yet written: line number → custom_id."""
        return self.batch(batch_id) + ":inflight"

    def batch_done(self, batch_id: str) -> str:
        """A bitmap of the batch's lines whose output is written (one bit per line)."""
        return self.batch(batch_id) + ":done"

    def batch_lock(self, batch_id: str) -> str:
        """Held by the one step of the batch that runs (broker/batches/worker.py)."""
        return self.batch(batch_id) + ":lock"

    def batches(self, tenant: str) -> str:
        return f"{self.ns}:batches:{tenant}"

    def active_batches(self) -> str:
        return f"{self.ns}:batches:active"

    # arq's queue of batch steps and its health line (broker/batches/worker.py), on the broker's Redis or
    # on batches.queue_url. arq keeps each step under keys of its own, named from the step's job id.
    def arq_queue(self) -> str:
        return f"{self.ns}:arq:queue"

    def arq_health(self) -> str:
        return f"{self.ns}:arq:health"

    def batch_step(self, batch_id: str, n: int | str) -> str:
        """arq's job id for a batch's step `n`: arq:job:<it>, arq:in-progress:<it>, arq:result:<it>."""
        return f"{self.ns}:{batch_id}:{n}"

    def response(self, response_id: str) -> str:
        """A stored Responses API response: its tenant, answer, input and whole context (api/responses_store.py).
        Written once, when it completes; expires responses.store_ttl_s later."""
        return f"{self.ns}:response:{response_id}"

    def job(self, job_id: str) -> str:
        """An async job's status record (broker/queue/async_jobs.py)."""
        return f"{self.ns}:job:{job_id}"

    def event_log(self, job_id: str) -> str:
        """A streamed job's events, for clients that resume it (broker/queue/job_events.py)."""
        return f"{self.ns}:ev:{job_id}"

    def event_bell(self, job_id: str) -> str:
        """Rung by a job's every appended burst, once a reader waiting for the next one has made it exist."""
        return f"{self.ns}:evbell:{job_id}"

    def events(self, job_id: str) -> str:
        """The event log as the previous release wrote it (a stream), read while such logs may still exist."""
        return f"{self.ns}:events:{job_id}"

    def readers(self, job_id: str) -> str:
        """How many resumed clients read a stream: while any does, its job is not cancelled."""
        return f"{self.ns}:readers:{job_id}"

    def budget(self, tenant: str, scope: str, period: str) -> str:
        """Spend held against a budget (broker/money/budgets.py): scope `t` (the tenant's) or `k:<key>`. In the
        tenant's Cluster slot, with its rate limits: admit.lua reserves both in one step."""
        return f"{self.ns}:budget:{{{tenant}}}:{scope}:{period}"

    @staticmethod
    def budget_holds(counter: str) -> str:
        """The holds of requests still running against the budget `counter` (admit.lua)."""
        return counter + ":holds"

    def layout(self) -> str:
        """The key layout the namespace's keys follow (broker/store/key_migration.py)."""
        return f"{self.ns}:layout"

    def usage_log(self) -> str:
        return f"{self.ns}:usage:log"

    # The console's time series (broker/ops/rollups.py): a tenant's per-minute buckets, one hash per hour
    # (field "<minute>\t<metric>\t<model>\t<deployment>"), and per-hour buckets, one hash per day. In the
    # tenant's Cluster slot: ledger.lua writes them with its usage hash. A bucket per hash, not a key per
    # bucket: a day's chart reads 25 keys per tenant, not 1,440.
    def rollup_minutes(self, tenant: str, hour: str) -> str:
        """`hour`: YYYY-MM-DDTHH (UTC); expires MINUTES_KEPT_S after the hour ends."""
        return f"{self.ns}:ts:{{{tenant}}}:m:{hour}"

    def rollup_hours(self, tenant: str, day: str) -> str:
        """`day`: YYYY-MM-DD (UTC); expires HOURS_KEPT_S after the day ends."""
        return f"{self.ns}:ts:{{{tenant}}}:h:{day}"

    def queue_minutes(self, provider: str, hour: str) -> str:
        """Queue depth and oldest wait per lane, sampled by workers (broker/ops/queue_series.py)."""
        return f"{self.provider(provider)}ts:q:m:{hour}"

    def queue_hours(self, provider: str, day: str) -> str:
        return f"{self.provider(provider)}ts:q:h:{day}"

    def race(self, job_id: str) -> str:
        """A hedged job's race between its attempts (workers/hedging.py)."""
        return f"{self.ns}:race:{job_id}"

    # Response cache (broker/cache/exact.py): every key in one hash slot (`{cache}`), since storing an entry
    # trims the index and deletes the entries it drops in one script. `scope` is a tenant, or `*` shared.
    def cache_entry(self, scope: str, digest: str) -> str:
        return f"{self.ns}:{{cache}}:e:{scope}:{digest}"

    def cache_flight(self, scope: str, digest: str) -> str:
        return f"{self.ns}:{{cache}}:f:{scope}:{digest}"

    def cache_index(self) -> str:
        return f"{self.ns}:{{cache}}:index"

    def replies(self, instance: str) -> str:
        return f"{self.ns}:replies:{instance}"

    # API keys made at run time (broker/api_keys.py): one hash slot, since creating and revoking a key
    # touch all three in one script. No TTL: a key lives until it is revoked.
    def api_keys(self) -> str:
        return f"{self.ns}:{{apikeys}}"

    def api_key_names(self) -> str:
        return f"{self.ns}:{{apikeys}}:names"

    def api_keys_version(self) -> str:
        return f"{self.ns}:{{apikeys}}:version"

    def api_keys_changed(self) -> str:
        return f"{self.ns}:{{apikeys}}:changed"

    # Rate-limit keys (broker/limits/ratelimit.py) are hash-tagged by tenant: one admission
    # script touches the tenant's buckets and its key's. A bucket holds the instant
    # it is full again and expires then, so an idle tenant costs nothing.
    def _limit(self, tenant: str, key: str | None) -> str:
        return f"{self.ns}:rl:{{{tenant}}}:" + (f"key:{key}:" if key else "")

    def rate_requests(self, tenant: str, key: str | None = None) -> str:
        return self._limit(tenant, key) + "rpm"

    def rate_tokens(self, tenant: str, key: str | None = None) -> str:
        return self._limit(tenant, key) + "tpm"

    def busy(self, provider: str, model: str) -> str:
        """Calls running on a deployment of a least-busy group (broker/routing/strategies.py)."""
        return f"{self.provider(provider)}busy:{model}"

    # A deployment's own buckets (workers, just before each call), in its provider's slot.
    def _deployment_limit(self, provider: str, model: str) -> str:
        return f"{self.provider(provider)}dl:{model}:"

    def deployment_rate_requests(self, provider: str, model: str) -> str:
        return self._deployment_limit(provider, model) + "rpm"

    def deployment_rate_tokens(self, provider: str, model: str) -> str:
        return self._deployment_limit(provider, model) + "tpm"

    def deployment_in_flight(self, provider: str, model: str) -> str:
        return self._deployment_limit(provider, model) + "inflight"

    def in_flight(self, tenant: str, key: str | None = None) -> str:
        # Request ids scored by deadline (ms): slots of a crashed API process expire with them; and
        # `~expires` (admit.lua), scored by the set's own expiry.
        return self._limit(tenant, key) + "inflight"

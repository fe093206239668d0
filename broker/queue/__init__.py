"""Where a request waits: the Job, the per-provider streams, replies back to the API, async jobs, dead letters."""

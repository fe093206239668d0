"""Which deployment serves a job: model groups, strategies, rules, capabilities, failover order."""

"""What may run now: per-tenant and per-key rate limits, per-deployment circuit breakers."""

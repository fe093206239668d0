"""llm-broker core on Redis. Imports neither api/ nor workers/ (cli/ is the composition root)."""

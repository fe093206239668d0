"""llm-broker core on Redis. Imports neither api/ nor workers/ (cli.py is the composition root)."""

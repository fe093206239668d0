"""The response cache: exact-match lookup with single flight, and replay of cached answers."""

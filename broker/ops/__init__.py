"""What operators observe: metrics, queue figures, readiness, the status screen, log context, redaction."""

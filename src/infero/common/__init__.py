"""Small helpers shared by every runtime: settings, durations, backoff, liveness, logging."""

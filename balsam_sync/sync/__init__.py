"""Keeping mirror and server converged: replay of the outbox, pulls, the daemon, status."""

"""Keeping mirror and server converged: pulls (and, later, replays)."""

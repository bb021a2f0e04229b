"""Test helpers for balsam_sync (fault injection against a real Balsam server)."""

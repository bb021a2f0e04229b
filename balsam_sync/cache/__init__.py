"""The local SQLite mirror and outbox: the only package that writes SQL."""

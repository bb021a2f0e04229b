"""The server: REST semantics and quirks, HTTP transport, retries, the link's state, auth."""

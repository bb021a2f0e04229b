"""Guards for test suites: catch a request started while a mirror write transaction is held.

Other processes writing the same mirror wait for that transaction, so a request inside it
makes them wait for the network (the rule: plan, fetch, then store). ``tests/conftest.py``
turns this guard on for every test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..cache import writing_here
from ..remote import transport


class RequestInTransaction(AssertionError):
    """A request started while the calling thread held a mirror write transaction."""


@contextmanager
def no_requests_in_transactions() -> Iterator[list[str]]:
    """While inside, such a request raises ``RequestInTransaction``; yields the violations.

    The list lets a caller also catch violations that some code swallowed.
    """
    seen: list[str] = []

    def guard(method: str, url: str) -> None:
        if writing_here():
            seen.append(f"{method} {url}")
            raise RequestInTransaction(f"{method} {url} started inside a mirror transaction")

    transport.REQUEST_HOOKS.append(guard)
    try:
        yield seen
    finally:
        transport.REQUEST_HOOKS.remove(guard)

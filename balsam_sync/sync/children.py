"""Transfer items and events, read per job: what changed with a job, and history to fill in.

Neither has a timestamp the server filters on reliably (transfer items have none, and an
event's timestamp is whatever the site agent sent). But every server-side change of a job's
items or events changes the job's ``last_update`` in the same transaction, so the children of
the jobs whose ``last_update`` moved since their mark (cache/pullstate.py) are exactly the
children that can have changed. They are read by job id, 500 jobs per request, and replace the
mirror's children of those jobs (so deletions follow their jobs).

Reading them costs the server far more than reading jobs (it serialises each item and event
through its ORM: about 0.2-0.3 ms per row on a small server, against 0.03 ms per job). So a
pull reads the children of changed and unfinished jobs always, and the *history* (children of
finished jobs never read before) at most ``history_per_pull`` jobs at a time: a first pull of a
large account stays short, and the following pulls complete it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..cache.mirror import Mirror
from ..cache.pullstate import PullState, Unsynced
from ..params import FILTER_CHUNK_SIZE
from ..remote import Remote
from ..resources import RESOURCES
from ..spec import QuerySpec
from .pages import bounded_map

Row = dict[str, Any]
CHILDREN = ("TransferItem", "EventLog")


@dataclass
class Fetched:
    """The children of one chunk of jobs, as the server listed them."""

    jobs: list[Unsynced]
    rows: dict[str, list[Row]]


def plan(unsynced: list[Unsynced], history: int | None) -> tuple[list[Unsynced], int]:
    """Choose the jobs to read now: changed and unfinished ones, then up to ``history`` finished
    ones never read (newest first; None: all). Return them and how many are left for later."""
    urgent = [u for u in unsynced if u.changed or not u.done]
    old = [u for u in unsynced if not u.changed and u.done]
    old.sort(key=lambda u: -u.id)
    take = len(old) if history is None else max(0, history)
    return urgent + old[:take], len(old) - min(len(old), take)


class ChildrenReader:
    """Reads and stores the transfer items and events of given jobs."""

    def __init__(
        self,
        remote: Remote,
        mirror: Mirror,
        workers: int = 2,
        progress: Callable[[str, int], None] | None = None,
    ) -> None:
        self.remote = remote
        self.mirror = mirror
        self.state = PullState(mirror.store)
        self.workers = workers
        self.progress = progress or (lambda _r, _n: None)

    def sync(self, jobs: list[Unsynced], at: str) -> dict[str, int]:
        """Read the children of ``jobs``, store them, mark the jobs; return rows per resource."""
        chunks = [jobs[i : i + FILTER_CHUNK_SIZE] for i in range(0, len(jobs), FILTER_CHUNK_SIZE)]
        fetched = {name: 0 for name in CHILDREN}
        for got in bounded_map(self._fetch, chunks, self.workers):
            self._store(got, at)
            for name in CHILDREN:
                fetched[name] += len(got.rows[name])
                self.progress(name, fetched[name])
        return fetched

    def _fetch(self, jobs: list[Unsynced]) -> Fetched:
        ids = [u.id for u in jobs]
        rows = {}
        for name in CHILDREN:
            spec = QuerySpec(name).with_filters({"job_id": ids})
            rows[name] = self.remote.select(RESOURCES[name], spec)[0]
        return Fetched(jobs, rows)

    def _store(self, got: Fetched, at: str) -> None:
        ids = [u.id for u in got.jobs]
        store = self.mirror.store
        with store.write():
            for name in CHILDREN:
                written = self.state.replace_children(name, ids, got.rows[name])
                self.mirror.outbox.overlay(name, written)
            self.state.set_marks([(u.id, u.stamp) for u in got.jobs], at)

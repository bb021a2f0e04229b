"""Transfer items and events, read per job: what changed with a job since its children were read.

Neither has a timestamp the server filters on reliably (transfer items have none, and an
event's timestamp is whatever the site agent sent). But every server-side change of a job's
items or events changes the job's ``last_update`` in the same transaction, so the children of
the jobs whose ``last_update`` moved since their mark (cache/pullstate.py) are exactly the
children that can have changed. They are read by job id, 500 jobs per request, and replace the
mirror's children of those jobs (so deletions follow their jobs).

An incremental pull reads them so for every job it lists whose mark differs, and at its end
for every job left without a mark equal to its stamp; a first or full pull lists every transfer
item and event whole instead (sync/whole.py), and reads by job only the jobs that changed while
it ran.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

from ..cache import Mirror, Unsynced
from ..remote.params import FILTER_CHUNK_SIZE
from ..remote.rest import Remote
from ..resources import JOB, RESOURCES, Row
from ..spec import QuerySpec

CHILDREN = ("TransferItem", "EventLog")
JOBS_PHASE = "TransferItem+EventLog (jobs)"
"""The progress name of reading children by job: counted in jobs, out of the jobs queued."""


@dataclass
class Fetched:
    """The children of one chunk of jobs, as the server lists them (one request each)."""

    jobs: list[Unsynced]
    rows: dict[str, Future[list[Row]]]

    def done(self) -> bool:
        return all(f.done() for f in self.rows.values())


def changed_in(rows: list[Row], marks: dict[int, str]) -> list[Unsynced]:
    """The listed jobs whose children are not known to match the server's: no mark equal to
    their ``last_update``."""
    out = []
    for row in rows:
        mark = marks.get(row["id"])
        if mark != row["last_update"]:
            out.append(Unsynced(row["id"], row["last_update"], mark is not None, _done(row)))
    return out


def _done(row: Row) -> bool:
    return str(row.get("state")) in JOB.done_states


class ChildrenReader:
    """Reads the transfer items and events of the jobs it is given, in the background.

    ``submit`` queues jobs (500 per request, ``workers`` requests at a time); ``store_ready``
    stores what has arrived; ``finish`` waits for the rest. Children of a job deleted from the
    mirror meanwhile are dropped.
    """

    def __init__(
        self,
        remote: Remote,
        mirror: Mirror,
        at: str,
        workers: int = 2,
        progress: Callable[[str, int, int | None], None] | None = None,
    ) -> None:
        self.remote = remote
        self.mirror = mirror
        self.at = at
        self.progress = progress or (lambda _r, _n, _t: None)
        """Called as (resource, rows, None) and (``JOBS_PHASE``, jobs read, jobs queued)."""
        self.fetched = {name: 0 for name in CHILDREN}
        self.queued: set[int] = set()
        self.read = 0
        self._buffer: list[Unsynced] = []
        self._pending: deque[Fetched] = deque()
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="balsam-sync-pull")

    def __enter__(self) -> ChildrenReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, jobs: list[Unsynced]) -> None:
        """Queue the children of ``jobs`` (jobs queued before are skipped)."""
        for job in jobs:
            if job.id not in self.queued:
                self.queued.add(job.id)
                self._buffer.append(job)
        while len(self._buffer) >= FILTER_CHUNK_SIZE:
            self._send(self._buffer[:FILTER_CHUNK_SIZE])
            del self._buffer[:FILTER_CHUNK_SIZE]

    def _send(self, chunk: list[Unsynced]) -> None:
        ids = [u.id for u in chunk]
        rows = {name: self._pool.submit(self._fetch, name, ids) for name in CHILDREN}
        self._pending.append(Fetched(chunk, rows))

    def store_ready(self) -> None:
        """Store the children that have arrived (in the order they were asked for)."""
        while self._pending and self._pending[0].done():
            self._store(self._pending.popleft())

    def finish(self) -> dict[str, int]:
        """Wait for every queued job's children and store them; return rows per resource."""
        if self._buffer:
            self._send(self._buffer)
            self._buffer = []
        while self._pending:
            self._store(self._pending.popleft())
        return self.fetched

    def _fetch(self, name: str, job_ids: list[int]) -> list[Row]:
        spec = QuerySpec(name).with_filters({"job_id": job_ids})
        return self.remote.select(RESOURCES[name], spec)[0]

    def _store(self, got: Fetched) -> None:
        arrived = {name: future.result() for name, future in got.rows.items()}  # no waiting
        self.mirror.children_read(got.jobs, arrived, self.at)
        for name in CHILDREN:
            self.fetched[name] += len(arrived[name])
            self.progress(name, self.fetched[name], None)
        self.read += len(got.jobs)
        self.progress(JOBS_PHASE, self.read, len(self.queued))

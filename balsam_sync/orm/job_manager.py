"""``Job.objects``: the common manager plus upstream's Job helpers (wait, as_completed)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import TYPE_CHECKING, Any, NamedTuple

from ..freshness import USE_CLIENT_DEFAULT
from ..resources import APP
from ..spec import QuerySpec
from .manager import Manager

if TYPE_CHECKING:
    from .job import Job

_DONE = frozenset({"JOB_FINISHED", "FAILED"})


class JobWaitResult(NamedTuple):
    done: list[Job]
    not_done: list[Job]


class JobManager(Manager["Job"]):
    """Manager of Job: queries and writes, plus the Future-like helpers of upstream."""

    def bulk_refresh(self, jobs: Sequence[Job]) -> None:
        """Reload every saved job of ``jobs`` from the server (the mirror when offline)."""
        by_id = {job.id: job for job in jobs if job.id is not None}
        if not by_id:
            return
        for fetched in self.filter(id=list(by_id)).fresh(0):
            assert fetched.id is not None
            by_id[fetched.id]._load(dict(fetched._decoded()))

    def wait(
        self,
        jobs: Sequence[Job],
        timeout: float | None = None,
        poll_interval: float = 1.0,
        return_when: str = "ALL_COMPLETED",
    ) -> JobWaitResult:
        """Poll until all jobs (or, ``FIRST_COMPLETED``, any) finished or failed, or timeout."""
        start = time.time()
        done = [job for job in jobs if job.state in _DONE]
        pending = [job for job in jobs if job.state not in _DONE]

        def finished() -> bool:
            late = timeout is not None and time.time() - start > timeout
            return late or (not pending if return_when == "ALL_COMPLETED" else bool(done))

        while not finished():
            time.sleep(poll_interval)
            self.bulk_refresh(pending)
            done.extend(job for job in pending if job.state in _DONE)
            pending[:] = [job for job in pending if job.state not in _DONE]
        return JobWaitResult(done=done, not_done=pending)

    def as_completed(
        self, jobs: Sequence[Job], timeout: float | None = None, poll_interval: float = 1.0
    ) -> Iterator[Job]:
        """Yield jobs as they finish or fail; ``TimeoutError`` after ``timeout`` seconds."""
        start = time.time()
        pending = []
        for job in jobs:
            if job.state in _DONE:
                yield job
            else:
                pending.append(job)
        while pending and (timeout is None or time.time() - start <= timeout):
            time.sleep(poll_interval)
            self.bulk_refresh(pending)
            yield from (job for job in pending if job.state in _DONE)
            pending = [job for job in pending if job.state not in _DONE]
        if pending:
            raise FuturesTimeout(f"{len(pending)} Jobs are still pending after {timeout} sec.")

    def _app_site_id(self, app_id: int) -> Any:
        spec = QuerySpec(APP.name).with_filters({"id": [app_id]})
        rows = self._gateway.fetch(APP, spec, USE_CLIENT_DEFAULT).dicts()
        if not rows:
            raise ValueError(f"no App with id {app_id}")
        return rows[0]["site_id"]

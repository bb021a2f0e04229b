"""What the figures of one run share: options, results, clients, and the data sets (made once)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import balsam_sync
from balsam_sync.client import Client
from balsam_sync.utc import now

from .data_jobs import Dataset, create_dataset, fill_big_mirror, template_row
from .harness import MB, Row, Stat, fmt_phases, log, timed_pull
from .server import User

Prepare = Callable[[], Callable[[], object]]
"""Returns the operation to profile (its set-up is done unprofiled)."""


@dataclass
class Options:
    api_root: str
    jobs: int
    big: int
    creates: int
    rss_jobs: int
    reps_fast: int
    reps_slow: int
    reps_upstream: int
    reps_mem: int
    upstream_all: bool
    profile: bool
    out: Path
    only: set[str]
    workdir: Path


@dataclass
class PullSamples:
    """Timed first pulls of the jobs data set into fresh mirrors (P4; the first made by P1)."""

    seconds: list[float] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)
    until: list[dict[str, float]] = field(default_factory=list)


@dataclass
class BigMirror:
    user: User
    home: Path
    client: Client
    expected: dict[str, int]


class Context:
    """One benchmark run: the figures add rows, notes and profiles to it."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rows: list[Row] = []
        self.info: dict[str, Any] = {}
        self.profiles: dict[str, Prepare] = {}
        self.pulls = PullSamples()
        self.upstream_count: Stat | None = None
        self._dataset: Dataset | None = None
        self._synced: Client | None = None
        self._big: BigMirror | None = None
        self._clients: list[Client] = []

    def wanted(self, *ids: str) -> bool:
        return not self.opts.only or any(i in self.opts.only for i in ids)

    def home(self, name: str) -> Path:
        path = self.opts.workdir / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    def connect(self, user: User, home: Path, offline: bool = False, **settings: Any) -> Client:
        client = balsam_sync.connect(
            user.api_root, user.token, home=str(home), offline=offline, **settings
        )
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()

    def dataset(self) -> Dataset:
        """The jobs data set on the server (``--jobs``), made on first use."""
        if self._dataset is None:
            log(f"creating {self.opts.jobs} jobs through the real server ...")
            self._dataset = data = create_dataset(self.opts.api_root, self.opts.jobs)
            log(
                f"  {data.n_jobs} jobs in {data.seconds_create:.1f} s, states set in "
                f"{data.seconds_states:.1f} s; {data.failed_p1} FAILED p1 jobs"
            )
            self.info["dataset"] = {
                "user": data.user.username,
                "jobs": data.n_jobs,
                "states": data.counts,
                "failed_p1": data.failed_p1,
                "seconds_create": data.seconds_create,
                "seconds_states": data.seconds_states,
            }
        return self._dataset

    def first_pull(self, client: Client) -> None:
        """Time the first pull of ``client`` (a fresh mirror): one P4 sample."""
        pull = timed_pull(client)
        self.pulls.seconds.append(pull.seconds)
        self.pulls.reports.append(str(pull.report))
        self.pulls.phases.append(pull.phases)
        self.pulls.until.append(pull.until)
        log(f"  pull: {pull.report} in {pull.seconds:.2f} s ({fmt_phases(pull.phases)})")

    def synced(self) -> Client:
        """A client whose fresh mirror was filled by one ``pull()`` (timed: a P4 sample)."""
        if self._synced is None:
            data = self.dataset()
            client = self.connect(data.user, self.home("synced"))
            log("initial pull() into a fresh mirror ...")
            self.first_pull(client)
            self._synced = client
        return self._synced

    def big_mirror(self) -> BigMirror:
        """A mirror of ``--big`` synthetic job rows written straight into the store."""
        if self._big is None:
            user, template = template_row(self.opts.api_root)
            home = self.home("big")
            client = self.connect(user, home, offline=True)
            mirror = client.mirror
            n = self.opts.big
            expected, seconds = fill_big_mirror(
                lambda rows: mirror.server_rows("Job", rows), template, n
            )
            mirror.pull_done(now(), None, full=False, marks_checked=False)  # as a pull would
            self.info["big_mirror"] = {
                "rows": n,
                "upsert_seconds": seconds,
                "rows_per_second": n / seconds,
                "file_mb": sum(p.stat().st_size for p in home.rglob("*.sqlite3*")) / MB,
            }
            self._big = BigMirror(user, home, client, expected)
        return self._big

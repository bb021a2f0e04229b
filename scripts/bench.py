#!/usr/bin/env python
"""Benchmarks of balsam_sync against the local REAL Balsam server, side by side in one run.

Every figure is measured in this run, next to its reference, and reported as a median of
several repetitions (with min/max) and as a ratio, because the machine is small and noisy:

  P1  cached ``Job.objects.filter(state="FAILED", tags={"exp": "p1"}).order_by("-last_update")
      [0:1000]`` (after ``client.pull()``) vs the same query ``.online()`` vs upstream
      ``balsam.api`` (run in the server's venv)                          target: >= 50x faster
  P4  initial ``client.pull()`` of the jobs into a fresh mirror vs ``list(Job.objects.online()
      .all())`` vs upstream ``list(Job.objects.all())``       target: <= 0.4x upstream (anchors)
  P5  incremental pull after 100 job changes vs ``pull(full=True)``           target: <= 5 %
  P6  offline ``count()`` with filters on a 1M-job mirror                     target: < 50 ms
  P7  peak RSS while iterating 1M cached jobs (fresh subprocess)              target: < 200 MB
  P2  offline ``Job.objects.bulk_create`` of 10k jobs vs sqlite-utils ``insert_all``  <= 3x
  P3  replay of those queued creates (``client.push()``) vs a direct online bulk_create <= 1.1x

The data is created through the real server for a freshly registered user (100k jobs in
POSTs of 5000, half tagged ``exp:p1``, half ``exp:p2``; ~6 % FAILED p1 jobs and other states set
by query updates on id lists). Results go to ``results/bench.md``, ``results/bench.json`` and
``results/bench.png`` (when matplotlib is installed).

Run: ``.venv/bin/python scripts/bench.py`` (``--quick`` for a smoke test in seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench_p8  # noqa: E402  (P8: writes while the server is unreachable)
import bench_pulls  # noqa: E402  (the account figures, A1-A5)

import balsam_sync  # noqa: E402
from balsam_sync.client import Client  # noqa: E402
from balsam_sync.remote.rest import normalize_row  # noqa: E402
from balsam_sync.resources import RESOURCES  # noqa: E402

T = TypeVar("T")

DEFAULT_API_ROOT = "http://127.0.0.1:8765"
UPSTREAM_PYTHON = Path.home() / ".cache" / "balsam-real-server" / "venv" / "bin" / "python"
PASSWORD = "bench-password-0"
POST_CHUNK = 5000
ID_CHUNK = 500
BIG_CHUNK = 50_000
P1_SLICE = 1000
MB = 1024 * 1024

# Share of all jobs per (tag, state) after creation; the rest stay as the server made them
# (STAGED_IN). FAILED p1 comes last so its 12 PUTs give 12 distinct last_update values.
STATE_PLAN: tuple[tuple[str, str, float], ...] = (
    ("p1", "JOB_FINISHED", 0.10),
    ("p2", "JOB_FINISHED", 0.08),
    ("p2", "RUNNING", 0.05),
    ("p2", "RUN_DONE", 0.05),
    ("p1", "RUNNING", 0.03),
    ("p2", "FAILED", 0.04),
    ("p1", "FAILED", 0.06),
)

# States of the synthetic 1M-job mirror (P6/P7), with weights.
BIG_STATES: tuple[tuple[str, int], ...] = (
    ("STAGED_IN", 40),
    ("RUNNING", 10),
    ("RUN_DONE", 10),
    ("JOB_FINISHED", 30),
    ("FAILED", 6),
    ("RESTART_READY", 4),
)


def log(message: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# -- statistics --------------------------------------------------------------------------------


@dataclass
class Stat:
    """Repeated measurements of one thing (seconds, or MB for memory)."""

    samples: list[float]
    unit: str = "s"

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def fmt(self, value: float) -> str:
        if self.unit == "MB":
            return f"{value:.0f} MB"
        if value < 1.0:
            return f"{value * 1000:.3g} ms"
        return f"{value:.3g} s"

    def __str__(self) -> str:
        if len(self.samples) == 1:
            return f"{self.fmt(self.median)} (n=1)"
        return (
            f"{self.fmt(self.median)} [{self.fmt(self.low)}-{self.fmt(self.high)}] "
            f"(n={len(self.samples)})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "n": len(self.samples),
            "samples": self.samples,
        }


@dataclass
class Row:
    """One line of the result table."""

    id: str
    what: str
    ours: Stat | None = None
    ours_label: str = ""
    ref: Stat | None = None
    ref_label: str = ""
    ratio: float | None = None
    ratio_text: str = "—"
    target: str = "—"
    met: bool | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in asdict(self).items() if k not in ("ours", "ref")}
        out["ours"] = self.ours.as_json() if self.ours else None
        out["ref"] = self.ref.as_json() if self.ref else None
        return out


def speedup(row: Row, at_least: float | None) -> Row:
    """ratio = reference / ours ("x faster"); met when >= ``at_least`` (None: information)."""
    if row.ours and row.ref and row.ours.median > 0:
        row.ratio = row.ref.median / row.ours.median
        row.ratio_text = f"{row.ratio:.1f}x faster"
        if at_least is not None:
            row.target = f"≥ {at_least:g}x faster"
            row.met = row.ratio >= at_least
    return row


def fraction(row: Row, at_most: float | None, percent: bool = False) -> Row:
    """ratio = ours / reference; met when <= ``at_most`` (None: information only)."""
    if row.ours and row.ref and row.ref.median > 0:
        row.ratio = row.ours.median / row.ref.median
        row.ratio_text = f"{row.ratio * 100:.2f} %" if percent else f"{row.ratio:.2f}x"
        if at_most is not None:
            row.target = f"≤ {at_most * 100:g} %" if percent else f"≤ {at_most:g}x"
            row.met = row.ratio <= at_most
    return row


class PhaseClock:
    """A pull progress callback: when each resource's last page was stored."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last: dict[str, float] = {}

    def __call__(self, resource: str, rows: int, total: int | None) -> None:
        self.last[resource] = time.perf_counter()

    def phases(self) -> dict[str, float]:
        """Seconds per resource, from the previous resource's last page to its own last page."""
        out: dict[str, float] = {}
        previous = self.start
        for name, at in sorted(self.last.items(), key=lambda item: item[1]):
            out[name] = at - previous
            previous = at
        return out


def timed_pull(client: Client, full: bool = False) -> tuple[float, Any, dict[str, float]]:
    """Time ``client.pull()``; also return its report and the seconds spent per resource."""
    gc.collect()
    clock = PhaseClock()
    report = client.pull(full=full, progress=clock)
    seconds = time.perf_counter() - clock.start
    return seconds, report, clock.phases()


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


# -- the server, raw ---------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    api_root: str
    username: str
    token: str
    expiry: str | None


def register_user(api_root: str, prefix: str = "bench") -> User:
    """Register a brand-new user on the server and log in (as tests.conftest does)."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    reply = requests.post(
        f"{api_root}/auth/password/register",
        json={"username": name, "password": PASSWORD},
        timeout=30,
    )
    if reply.status_code != 201:
        raise RuntimeError(f"register {name}: {reply.status_code} {reply.text[:300]}")
    login = requests.post(
        f"{api_root}/auth/password/login",
        data={"username": name, "password": PASSWORD},
        timeout=30,
    )
    if login.status_code != 200:
        raise RuntimeError(f"login {name}: {login.status_code} {login.text[:300]}")
    body = login.json()
    return User(api_root, name, str(body["access_token"]), body.get("expiration"))


class Api:
    """The REST API with plain requests: data set-up and "another client" changes."""

    def __init__(self, user: User) -> None:
        self.root = user.api_root
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {user.token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = self.session.request(method, self.root + path, timeout=600, **kwargs)
        if reply.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {reply.status_code} {reply.text[:300]}")
        return reply.json() if reply.content else None

    def site_and_app(self) -> tuple[int, int]:
        site = self.call(
            "POST", "/sites/", json={"name": f"bench-{uuid.uuid4().hex[:6]}", "path": "/bench"}
        )
        app = self.call(
            "POST",
            "/apps/",
            json={
                "site_id": site["id"],
                "name": "Bench",
                "serialized_class": "txt",
                "source_code": "print('bench')",
            },
        )
        return int(site["id"]), int(app["id"])

    def count(self, path: str, params: list[tuple[str, str]]) -> int:
        return int(self.call("GET", path, params=[*params, ("limit", "0")])["count"])

    def set_state(self, ids: list[int], state: str) -> None:
        """A query update on an id list (one PUT per 500 ids)."""
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start : start + ID_CHUNK]
            self.call(
                "PUT", "/jobs/", params=[("id", str(i)) for i in chunk], json={"state": state}
            )


@dataclass
class Dataset:
    user: User
    site_id: int
    app_id: int
    n_jobs: int
    ids: dict[str, list[int]]
    counts: dict[str, int]
    failed_p1: int
    seconds_create: float
    seconds_states: float


def create_dataset(api_root: str, n_jobs: int) -> Dataset:
    user = register_user(api_root)
    api = Api(user)
    site_id, app_id = api.site_and_app()
    ids: dict[str, list[int]] = {"p1": [], "p2": []}
    t0 = time.perf_counter()
    for start in range(0, n_jobs, POST_CHUNK):
        payload: list[dict[str, Any]] = [
            {"workdir": f"bench/{i}", "app_id": app_id, "tags": {"exp": "p1" if i % 2 else "p2"}}
            for i in range(start, min(n_jobs, start + POST_CHUNK))
        ]
        for item, job in zip(payload, api.call("POST", "/jobs/", json=payload), strict=True):
            ids[item["tags"]["exp"]].append(int(job["id"]))
        log(f"  created {min(n_jobs, start + POST_CHUNK)}/{n_jobs} jobs")
    t1 = time.perf_counter()
    rng = random.Random(20240607)
    pools = {tag: rng.sample(tag_ids, len(tag_ids)) for tag, tag_ids in ids.items()}
    used = {"p1": 0, "p2": 0}
    counts: dict[str, int] = {}
    for tag, state, share in STATE_PLAN:
        n = round(share * n_jobs)
        chosen = pools[tag][used[tag] : used[tag] + n]
        used[tag] += n
        api.set_state(chosen, state)
        counts[f"{tag}:{state}"] = len(chosen)
    t2 = time.perf_counter()
    failed_p1 = api.count("/jobs/", [("state", "FAILED"), ("tags", "exp:p1")])
    if failed_p1 != counts["p1:FAILED"]:
        raise RuntimeError(f"server has {failed_p1} FAILED p1 jobs, expected {counts['p1:FAILED']}")
    return Dataset(user, site_id, app_id, n_jobs, ids, counts, failed_p1, t1 - t0, t2 - t1)


# -- upstream balsam.api, in the server's venv -------------------------------------------------

UPSTREAM_SCRIPT = r"""
import json, sys, time
from balsam.api import Job

mode, reps = sys.argv[1], int(sys.argv[2])
out = {"times": []}
if mode == "p1":
    def run():
        q = Job.objects.filter(state="FAILED", tags={"exp": "p1"}).order_by("-last_update")
        return list(q[0:1000])
    items = run()  # warm-up: imports, connection
    for _ in range(reps):
        t = time.perf_counter()
        items = run()
        out["times"].append(time.perf_counter() - t)
    out["ids"] = [j.id for j in items]
    out["count_times"] = []
    for _ in range(reps):
        t = time.perf_counter()
        n = Job.objects.filter(state="FAILED").count()
        out["count_times"].append(time.perf_counter() - t)
    out["count"] = n
elif mode == "all":
    for _ in range(reps):
        t = time.perf_counter()
        items = list(Job.objects.all())
        out["times"].append(time.perf_counter() - t)
        out["n"] = len(items)
        del items
print(json.dumps(out))
"""


def run_upstream(user: User, workdir: Path, mode: str, reps: int) -> dict[str, Any]:
    """Time a query with upstream ``balsam.api`` in a subprocess of the server's venv."""
    if not UPSTREAM_PYTHON.exists():
        raise RuntimeError(f"upstream venv not found: {UPSTREAM_PYTHON}")
    folder = workdir / f"upstream-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    settings = {
        "api_root": user.api_root,
        "client_class": "balsam.client.BasicAuthRequestsClient",
        "token": user.token,
        "token_expiry": user.expiry,
        "connect_timeout": 6.2,
        "read_timeout": 600.0,
        "retry_count": 3,
    }
    client_yml = folder / "client.yml"
    # JSON is YAML: one key per line, values JSON-quoted.
    client_yml.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    client_yml.chmod(0o600)
    script = folder / "upstream_bench.py"
    script.write_text(UPSTREAM_SCRIPT)
    env = {**os.environ, "BALSAM_CLIENT_PATH": str(client_yml), "HOME": str(folder)}
    argv = [str(UPSTREAM_PYTHON), str(script), mode, str(reps)]
    return last_json(run_child(argv, env, f"upstream {mode}", folder))


def run_child(argv: list[str], env: dict[str, str], what: str, cwd: Path | None = None) -> str:
    """Run a helper process of the benchmark; return its stdout, or raise with its stderr."""
    run = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=3600, check=False
    )
    if run.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{run.stderr[-3000:]}")
    return run.stdout


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object a helper process prints as its last line."""
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


# -- the benchmark run -------------------------------------------------------------------------


@dataclass
class Options:
    api_root: str
    jobs: int
    big: int
    creates: int
    reps_fast: int
    reps_slow: int
    reps_upstream: int
    reps_mem: int
    upstream_all: bool
    profile: bool
    out: Path
    only: set[str]
    workdir: Path


Prepare = Callable[[], Callable[[], object]]
"""Returns the operation to profile (its set-up is done unprofiled)."""


class Bench:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rows: list[Row] = []
        self.info: dict[str, Any] = {}
        self.profiles: dict[str, Prepare] = {}
        self._dataset: Dataset | None = None
        self._synced: Client | None = None
        self._template: tuple[User, dict[str, Any]] | None = None
        self._big_home: Path | None = None
        self._big_client: Client | None = None
        self._big_expected: dict[str, int] = {}
        self._clients: list[Client] = []
        self.pull_samples: list[float] = []
        self.pull_reports: list[str] = []
        self.pull_phases: list[dict[str, float]] = []
        self.upstream_count: Stat | None = None

    # -- shared fixtures -----------------------------------------------------------------------

    def home(self, name: str) -> Path:
        path = self.opts.workdir / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    def connect(self, user: User, home: Path, offline: bool = False) -> Client:
        client = balsam_sync.connect(user.api_root, user.token, home=str(home), offline=offline)
        self._clients.append(client)
        return client

    def dataset(self) -> Dataset:
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

    def synced(self) -> Client:
        """A client whose fresh mirror was filled by one ``pull()`` (timed: a P4 sample)."""
        if self._synced is None:
            data = self.dataset()
            client = self.connect(data.user, self.home("synced"))
            log("initial pull() into a fresh mirror ...")
            seconds, report, phases = timed_pull(client)
            self.pull_samples.append(seconds)
            self.pull_reports.append(str(report))
            self.pull_phases.append(phases)
            log(f"  {report} in {seconds:.2f} s ({fmt_phases(phases)})")
            self._synced = client
        return self._synced

    def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()

    # -- running -------------------------------------------------------------------------------

    def wanted(self, *ids: str) -> bool:
        return not self.opts.only or any(i in self.opts.only for i in ids)

    def run(self) -> None:
        steps: list[tuple[tuple[str, ...], Callable[[], None]]] = [
            (("P1",), self.p1),
            (("P4",), self.p4),
            (("P5",), self.p5),
            (("P6",), self.p6),
            (("P7",), self.p7),
            (("P2", "P3"), self.p2_p3),
            (("P8",), partial(bench_p8.into, self, Row, Stat)),
            *bench_pulls.steps(self),
        ]
        for ids, step in steps:
            if not self.wanted(*ids):
                continue
            log(f"== {'/'.join(ids)}")
            try:
                step()
            except Exception as exc:
                traceback.print_exc()
                self.rows.append(Row(ids[0], "(failed)", error=f"{type(exc).__name__}: {exc}"))
        if self.opts.profile:
            self.profile_missed()

    # -- P1 ------------------------------------------------------------------------------------

    def p1(self) -> None:
        data = self.dataset()
        client = self.synced()
        job = client.Job

        def query(policy: str) -> Any:
            q = job.objects.filter(state="FAILED", tags={"exp": "p1"}).order_by("-last_update")
            if policy == "offline":
                q = q.offline()
            elif policy == "online":
                q = q.online()
            return q[0:P1_SLICE]

        def evaluate(policy: str) -> Callable[[], tuple[list[Any], Any]]:
            def run() -> tuple[list[Any], Any]:
                q = query(policy)
                return list(q), q

            return run

        def evaluate_and_read(policy: str) -> Callable[[], list[tuple[Any, ...]]]:
            # Rows are unpacked when a field is first read: this is what a loop over them costs.
            def run() -> list[tuple[Any, ...]]:
                return [(j.id, j.workdir, j.state, j.tags) for j in query(policy)]

            return run

        cached_t: list[float] = []
        online_t: list[float] = []
        default_t: list[float] = []
        read_cached_t: list[float] = []
        read_online_t: list[float] = []
        n_fast = max(7, self.opts.reps_fast)
        n_online = max(7, self.opts.reps_slow)
        evaluate("offline")()  # warm-up
        evaluate("online")()
        cached_items: list[Any] = []
        online_items: list[Any] = []
        for i in range(n_fast):  # interleaved, so drift hits both sides alike
            seconds, (cached_items, q_cached) = timed(evaluate("offline"))
            cached_t.append(seconds)
            seconds, read_cached = timed(evaluate_and_read("offline"))
            read_cached_t.append(seconds)
            if i < n_online:
                seconds, (online_items, q_online) = timed(evaluate("online"))
                online_t.append(seconds)
                seconds, read_online = timed(evaluate_and_read("online"))
                read_online_t.append(seconds)
        # Default policy right after a pull (fresh for max_age, 30 s): must answer from the
        # mirror. One more (incremental) pull, then the samples in one block within that time.
        client.pull()
        _, (_, q_default) = timed(evaluate("default"))
        default_source = q_default.source
        default_t.extend(timed(evaluate("default"))[0] for _ in range(n_fast))
        cached_ids = [j.id for j in cached_items]
        online_ids = [j.id for j in online_items]
        expected = min(P1_SLICE, data.failed_p1)
        notes = [
            f"{len(cached_ids)} jobs (expected {expected}); sources: offline="
            f"{q_cached.source}, online={q_online.source}, default policy={default_source}",
            "same ids and order as the server: "
            + ("yes" if cached_ids == online_ids else "NO (cached answer differs!)"),
        ]
        log("  upstream balsam.api P1 ...")
        upstream: Stat | None = None
        try:
            up = run_upstream(data.user, self.opts.workdir, "p1", self.opts.reps_upstream)
            upstream = Stat(up["times"])
            self.upstream_count = Stat(up["count_times"])
            notes.append(
                "upstream answer identical: " + ("yes" if up["ids"] == online_ids else "NO")
            )
        except Exception as exc:
            notes.append(f"upstream failed: {exc}")
        cached = Stat(cached_t)
        self.rows.append(
            speedup(
                Row(
                    "P1",
                    f"cached query (.offline(), after pull) vs .online(), [0:{P1_SLICE}] "
                    "of FAILED p1 jobs",
                    cached,
                    "cached",
                    Stat(online_t),
                    "ours .online()",
                    notes=notes,
                ),
                50,
            )
        )
        if upstream is not None:
            row = speedup(
                Row(
                    "P1",
                    "cached query vs upstream balsam.api",
                    cached,
                    "cached",
                    upstream,
                    "upstream balsam.api",
                ),
                50,
            )
            row.target += " (anchors)"
            self.rows.append(row)
            self.rows.append(
                fraction(
                    Row(
                        "P1",
                        "our .online() vs upstream balsam.api (info)",
                        Stat(online_t),
                        "ours .online()",
                        upstream,
                        "upstream balsam.api",
                    ),
                    None,
                )
            )
        self.rows.append(
            speedup(
                Row(
                    "P1",
                    f"default policy right after pull (source={default_source}) vs .online()",
                    Stat(default_t),
                    "default policy",
                    Stat(online_t),
                    "ours .online()",
                ),
                50,
            )
        )
        self.rows.append(
            speedup(
                Row(
                    "P1",
                    "the same, reading id, workdir, state and tags of every job (info)",
                    Stat(read_cached_t),
                    "cached + reads",
                    Stat(read_online_t),
                    "ours .online() + reads",
                    notes=["same values read: " + ("yes" if read_cached == read_online else "NO")],
                ),
                None,
            )
        )
        self.info["P1"] = {"cached_ids_equal_online": cached_ids == online_ids}

        def prep_cached() -> Callable[[], object]:
            return lambda: [list(query("offline")) for _ in range(50)]

        def prep_online() -> Callable[[], object]:
            return lambda: [list(query("online")) for _ in range(5)]

        self.profiles["P1"] = prep_cached
        self.profiles["P1-online"] = prep_online

    # -- P4 ------------------------------------------------------------------------------------

    def p4(self) -> None:
        data = self.dataset()
        self.synced()  # its pull is the first sample
        reps = self.opts.reps_slow
        online_t: list[float] = []
        for _ in range(reps):
            if len(self.pull_samples) < reps:
                home = self.home("pull")
                client = self.connect(data.user, home)
                seconds, report, phases = timed_pull(client)
                self.pull_samples.append(seconds)
                self.pull_reports.append(str(report))
                self.pull_phases.append(phases)
                log(f"  pull: {report} in {seconds:.2f} s ({fmt_phases(phases)})")
                client.close()
                shutil.rmtree(home, ignore_errors=True)
            home = self.home("online-all")
            client = self.connect(data.user, home)
            seconds, jobs = timed(partial(online_all, client))
            online_t.append(seconds)
            log(f"  ours list(online().all()): {len(jobs)} jobs in {seconds:.2f} s")
            if len(jobs) != data.n_jobs:
                raise RuntimeError(f"online all() returned {len(jobs)} of {data.n_jobs} jobs")
            del jobs
            client.close()
            shutil.rmtree(home, ignore_errors=True)
        pulls = Stat(self.pull_samples)
        job_phase = Stat([p.get("Job", 0.0) for p in self.pull_phases])
        event_phase = Stat([p.get("EventLog", 0.0) for p in self.pull_phases])
        notes = [
            f"pull reports: {self.pull_reports[0]}",
            f"time per phase (from the pull's progress callback): up to the last Job page "
            f"{job_phase}, then the deletion check and every EventLog page {event_phase}",
        ]
        self.info["P4_pull_phases"] = self.pull_phases
        self.rows.append(
            fraction(
                Row(
                    "P4",
                    f"initial pull() of {data.n_jobs} jobs (+ their events) vs ours "
                    "list(Job.objects.online().all())",
                    pulls,
                    "pull()",
                    Stat(online_t),
                    "ours online all()",
                    notes=notes,
                ),
                None,
            )
        )
        if self.opts.upstream_all:
            log("  upstream list(Job.objects.all()) ...")
            try:
                up = run_upstream(data.user, self.opts.workdir, "all", reps)
                upstream = Stat(up["times"])
                row = fraction(
                    Row(
                        "P4",
                        "initial pull() vs upstream list(Job.objects.all())",
                        pulls,
                        "pull()",
                        upstream,
                        "upstream all()",
                    ),
                    0.4,
                )
                row.target += " (anchors)"
                self.rows.append(row)
                self.rows.append(
                    fraction(
                        Row(
                            "P4",
                            "Job phase of the initial pull() alone vs upstream list(all()) (info)",
                            job_phase,
                            "pull(), Job phase",
                            upstream,
                            "upstream all()",
                        ),
                        None,
                    )
                )
                self.rows.append(
                    fraction(
                        Row(
                            "P4",
                            "ours online all() vs upstream list(all()) (info)",
                            Stat(online_t),
                            "ours online all()",
                            upstream,
                            "upstream all()",
                        ),
                        None,
                    )
                )
            except Exception as exc:
                self.rows.append(Row("P4", "upstream list(all())", error=str(exc)))

        def prep_pull() -> Callable[[], object]:
            client = self.connect(data.user, self.home("profile-pull"))
            return client.pull

        self.profiles["P4"] = prep_pull

    # -- P5 ------------------------------------------------------------------------------------

    def p5(self) -> None:
        data = self.dataset()
        client = self.synced()
        other = Api(data.user)
        rng = random.Random(5)
        reps = self.opts.reps_slow
        incr_t: list[float] = []
        full_t: list[float] = []
        fetched: list[int] = []
        checks: list[bool] = []
        # Untimed: a pull re-reads what changed within max_request_seconds before the previous
        # one, which after the data set was just made is all of it; this one moves past that.
        client.pull()
        for rep in range(reps):
            ids = rng.sample(data.ids["p2"], 100)
            nodes = 2 + rep
            other.call("PATCH", "/jobs/", json=[{"id": i, "num_nodes": nodes} for i in ids])
            seconds, report, _ = timed_pull(client)
            incr_t.append(seconds)
            fetched.append(report.fetched.get("Job", 0))
            seen = client.Job.objects.filter(id=ids).offline()
            checks.append(sorted(j.num_nodes for j in seen) == [nodes] * 100)
            log(f"  incremental: {report} in {seconds:.3f} s")
            seconds, report, phases = timed_pull(client, full=True)
            full_t.append(seconds)
            log(f"  full: {report} in {seconds:.2f} s ({fmt_phases(phases)})")
        self.rows.append(
            fraction(
                Row(
                    "P5",
                    "incremental pull() after 100 job changes vs pull(full=True)",
                    Stat(incr_t),
                    "incremental",
                    Stat(full_t),
                    "full",
                    notes=[
                        f"jobs fetched by the incremental pulls: {fetched}",
                        "changes visible in the mirror: " + ("yes" if all(checks) else "NO"),
                    ],
                ),
                0.05,
                percent=True,
            )
        )

        def prep_incremental() -> Callable[[], object]:
            ids = rng.sample(data.ids["p2"], 100)
            other.call("PATCH", "/jobs/", json=[{"id": i, "num_nodes": 9} for i in ids])
            return client.pull

        self.profiles["P5"] = prep_incremental

    # -- P6 ------------------------------------------------------------------------------------

    def template(self) -> tuple[User, dict[str, Any]]:
        """A real job row from the server (of a small user of its own), in canonical form."""
        if self._template is None:
            user = register_user(self.opts.api_root, "bench-big")
            api = Api(user)
            _, app_id = api.site_and_app()
            api.call(
                "POST", "/jobs/", json=[{"workdir": "t/0", "app_id": app_id, "tags": {"exp": "p1"}}]
            )
            raw = api.call("GET", "/jobs/", params=[("limit", "1")])["results"][0]
            self._template = (user, normalize_row(RESOURCES["Job"], raw))
        return self._template

    def big_mirror(self) -> tuple[User, Path]:
        """A mirror of ``--big`` synthetic job rows written straight into the store."""
        user, template = self.template()
        if self._big_home is not None:
            return user, self._big_home
        home = self.home("big")
        client = self.connect(user, home, offline=True)
        store = client.mirror.store
        rng = random.Random(6)
        names = [s for s, _ in BIG_STATES]
        weights = [w for _, w in BIG_STATES]
        base = datetime(2025, 1, 1, tzinfo=timezone.utc)
        expected: dict[str, int] = {}
        n = self.opts.big
        upsert_t: list[float] = []
        log(f"  writing {n} synthetic job rows in chunks of {BIG_CHUNK} ...")
        for start in range(0, n, BIG_CHUNK):
            stop = min(n, start + BIG_CHUNK)
            states = rng.choices(names, weights, k=stop - start)
            rows = []
            for i, state in zip(range(start, stop), states, strict=True):
                tag = "p1" if i % 2 else "p2"
                row = dict(template)
                row["id"] = 1_000_000_000 + i
                row["workdir"] = f"big/{i}"
                row["state"] = state
                row["tags"] = {"exp": tag, "shard": str(i % 64)}
                row["last_update"] = (base + timedelta(seconds=i, microseconds=i % 997)).isoformat(
                    timespec="microseconds"
                )
                rows.append(row)
                expected[state] = expected.get(state, 0) + 1
                if state == "FAILED":
                    expected[f"FAILED:{tag}"] = expected.get(f"FAILED:{tag}", 0) + 1
            expected[f"tag:{'p1'}"] = expected.get("tag:p1", 0) + sum(
                1 for i in range(start, stop) if i % 2
            )
            seconds, _ = timed(partial(store.upsert, "Job", rows))
            upsert_t.append(seconds)
        total = sum(upsert_t)
        log(f"  {n} rows upserted in {total:.1f} s ({n / total:,.0f} rows/s)")
        client.mirror.coverage.mark_full_sync("Job", datetime.now(timezone.utc))  # as a pull
        self.info["big_mirror"] = {
            "rows": n,
            "upsert_seconds": total,
            "rows_per_second": n / total,
            "file_mb": sum(p.stat().st_size for p in home.rglob("*.sqlite3*")) / MB,
        }
        self._big_expected = expected
        self._big_home = home
        self._big_client = client
        return user, home

    def big_client(self) -> Client:
        self.big_mirror()
        assert self._big_client is not None
        return self._big_client

    def p6(self) -> None:
        client = self.big_client()
        expected = self._big_expected
        variants: list[tuple[str, dict[str, Any], int]] = [
            ('state="FAILED"', {"state": "FAILED"}, expected.get("FAILED", 0)),
            (
                'state="FAILED", tags={"exp": "p1"}',
                {"state": "FAILED", "tags": {"exp": "p1"}},
                expected.get("FAILED:p1", 0),
            ),
            ('tags={"exp": "p1"}', {"tags": {"exp": "p1"}}, expected.get("tag:p1", 0)),
        ]
        samples: dict[str, list[float]] = {label: [] for label, _, _ in variants}
        answers: dict[str, int] = {}

        def counter(filters: dict[str, Any]) -> Callable[[], int]:
            return lambda: int(client.Job.objects.filter(**filters).offline().count())

        for _, filters, _ in variants:
            counter(filters)()  # warm-up (page cache)
        for _ in range(max(7, self.opts.reps_fast)):
            for label, filters, _ in variants:
                seconds, n = timed(counter(filters))
                samples[label].append(seconds)
                answers[label] = n
        for label, _, want in variants:
            row = Row(
                "P6",
                f"offline count({label}) on a {self.opts.big:,}-job mirror",
                Stat(samples[label]),
                "ours offline count()",
                notes=[
                    f"answer {answers[label]} (expected {want}): "
                    + ("ok" if answers[label] == want else "WRONG")
                ],
            )
            if label == 'state="FAILED"' and self.upstream_count is not None:
                row.ref = self.upstream_count
                row.ref_label = f"upstream count(state) on the {self.opts.jobs:,}-job server"
                row.ratio = self.upstream_count.median / row.ours.median if row.ours else None
                row.ratio_text = f"{row.ratio:.1f}x faster" if row.ratio else "—"
            row.target = "< 50 ms"
            row.met = row.ours is not None and row.ours.median < 0.050
            self.rows.append(row)

        def prep_count() -> Callable[[], object]:
            return lambda: [counter(f)() for _ in range(5) for _, f, _ in variants]

        self.profiles["P6"] = prep_count

    # -- P7 ------------------------------------------------------------------------------------

    def p7(self) -> None:
        user, home = self.big_mirror()
        env = {
            **os.environ,
            "BALSAM_SYNC_API_ROOT": user.api_root,
            "BALSAM_SYNC_TOKEN": user.token,
            "BALSAM_SYNC_HOME": str(home),
            "BALSAM_SYNC_OFFLINE": "1",
        }
        here = str(Path(__file__).resolve())
        run_child([sys.executable, here, "--child-open"], env, "P7 mirror open")
        child = [sys.executable, "-c", TRAMPOLINE, sys.executable, here, "--child-p7"]
        results = []
        for _ in range(max(1, self.opts.reps_mem)):
            results.append(last_json(run_child(child, env, "P7 child")))
            log(f"  child: {results[-1]}")
        peak = Stat([r["peak_mb"] for r in results], "MB")
        baseline = Stat([r["baseline_mb"] for r in results], "MB")
        seconds = Stat([r["seconds"] for r in results])
        counted = results[-1]["rows"]
        row = Row(
            "P7",
            f"peak RSS iterating {self.opts.big:,} cached jobs with "
            "Job.objects.offline().all().iterator()",
            peak,
            "peak RSS",
            baseline,
            "baseline RSS (after import + open)",
            ratio=peak.median - baseline.median,
            ratio_text=f"+{peak.median - baseline.median:.0f} MB",
            target="< 200 MB",
            met=peak.median < 200,
            notes=[
                f"rows iterated: {counted} (expected {self.opts.big}); iteration took {seconds}"
                f" ({counted / seconds.median:,.0f} rows/s)",
                f"cross-check from /proc: VmHWM {results[-1]['peak_vmhwm_mb']:.0f} MB peak, "
                f"VmRSS {results[-1]['baseline_vmrss_mb']:.0f} MB before iterating (child started "
                "through a small trampoline so ru_maxrss does not inherit the bench's own peak)",
            ],
        )
        self.rows.append(row)
        client = self.big_client()

        def prep_iter() -> Callable[[], object]:
            def op() -> int:
                n = 0
                for job in client.Job.objects.offline().all().iterator():
                    _ = job.state
                    n += 1
                    if n >= 200_000:
                        break
                return n

            return op

        self.profiles["P7"] = prep_iter

    # -- P2 / P3 -------------------------------------------------------------------------------

    def p2_p3(self) -> None:
        n = self.opts.creates
        reps = self.opts.reps_slow
        offline_t: list[float] = []
        sqlite_t: list[float] = []
        push_t: list[float] = []
        direct_t: list[float] = []
        notes2: list[str] = []
        notes3: list[str] = []
        sqlite_utils: Any = importlib.import_module("sqlite_utils")
        sent: list[str] = []

        def record(method: str, url: str) -> None:
            sent.append(f"{method} {url}")

        def build(client: Client, app_id: int, tag: str) -> list[Any]:
            return [
                client.Job(workdir=f"{tag}/{i}", app_id=app_id, tags={"exp": tag}) for i in range(n)
            ]

        for rep in range(reps):
            # P2: queue n creates offline.
            user = register_user(self.opts.api_root, "bench-p2")
            api = Api(user)
            _, app_id = api.site_and_app()
            home = self.home("p2")
            client = self.connect(user, home, offline=True)
            if not client.gateway.offline and rep == 0:
                notes2.append(
                    "BUG: connect(..., offline=True) leaves client.gateway.offline False "
                    "(Client.__init__ does not pass settings.offline to Gateway), so writes are "
                    "sent at once; the bench sets client.gateway.offline = True to measure queueing"
                )
            client.gateway.offline = True
            sent.clear()
            client.transport.on_request.append(record)
            _ = client.mirror  # open (create, migrate) outside the timing
            jobs = build(client, app_id, "p2")
            rows = [dict(job._data) for job in jobs]
            seconds, _ = timed(partial(client.Job.objects.bulk_create, jobs))
            offline_t.append(seconds)
            provisional = all(job.id is not None and job.id < 0 for job in jobs)
            if rep == 0:
                notes2.append(
                    f"requests sent during the offline bulk_create: {len(sent)}; "
                    f"provisional negative ids: {'yes' if provisional else 'NO'}"
                )
            client.close()
            # reference: the same rows with sqlite-utils into a fresh file
            db = sqlite_utils.Database(str(self.home("sqlite-utils") / "raw.db"))
            seconds, _ = timed(partial(db["jobs"].insert_all, rows))
            sqlite_t.append(seconds)
            db.close()
            log(
                f"  P2 rep {rep}: offline bulk_create {offline_t[-1]:.3f} s, "
                f"sqlite-utils {sqlite_t[-1]:.3f} s"
            )
            # P3: replay them with the server reachable.
            client = self.connect(user, home)
            _ = client.mirror
            seconds, report = timed(client.push)
            push_t.append(seconds)
            on_server = api.count("/jobs/", [])
            if rep == 0:
                notes3.append(f"push report: {report}; jobs on the server: {on_server} of {n}")
            client.close()
            # reference: a direct online bulk_create on a fresh user
            user = register_user(self.opts.api_root, "bench-p3")
            api = Api(user)
            _, app_id = api.site_and_app()
            client = self.connect(user, self.home("p3"))
            _ = client.mirror
            jobs = build(client, app_id, "p3")
            seconds, _ = timed(partial(client.Job.objects.bulk_create, jobs))
            direct_t.append(seconds)
            if rep == 0:
                real = all(job.id is not None and job.id > 0 for job in jobs)
                notes3.append(
                    f"direct bulk_create: server ids on every instance: {'yes' if real else 'NO'};"
                    f" jobs on the server: {api.count('/jobs/', [])} of {n}"
                )
            client.close()
            log(f"  P3 rep {rep}: push {push_t[-1]:.2f} s, direct bulk_create {direct_t[-1]:.2f} s")
        if self.wanted("P2"):
            self.rows.append(
                fraction(
                    Row(
                        "P2",
                        f"offline Job.objects.bulk_create of {n:,} jobs vs sqlite-utils "
                        "insert_all of the same rows",
                        Stat(offline_t),
                        "offline bulk_create",
                        Stat(sqlite_t),
                        "sqlite-utils insert_all",
                        notes=notes2,
                    ),
                    3.0,
                )
            )
        if self.wanted("P3"):
            self.rows.append(
                fraction(
                    Row(
                        "P3",
                        f"replay of {n:,} queued creates (push()) vs direct online bulk_create",
                        Stat(push_t),
                        "push()",
                        Stat(direct_t),
                        "direct bulk_create",
                        notes=notes3,
                    ),
                    1.1,
                )
            )

        def prep_offline() -> Callable[[], object]:
            user = register_user(self.opts.api_root, "bench-prof")
            _, app_id = Api(user).site_and_app()
            client = self.connect(user, self.home("prof-p2"), offline=True)
            client.gateway.offline = True
            _ = client.mirror
            jobs = build(client, app_id, "p2")
            return lambda: client.Job.objects.bulk_create(jobs)

        self.profiles["P2"] = prep_offline

        def prep_push() -> Callable[[], object]:
            user = register_user(self.opts.api_root, "bench-prof")
            _, app_id = Api(user).site_and_app()
            home = self.home("prof-p3")
            client = self.connect(user, home, offline=True)
            client.gateway.offline = True
            client.Job.objects.bulk_create(build(client, app_id, "p2"))
            client.close()
            online = self.connect(user, home)
            _ = online.mirror
            return online.push

        self.profiles["P3"] = prep_push

    # -- profiles ------------------------------------------------------------------------------

    def profile_missed(self) -> None:
        try:
            pyinstrument: Any = importlib.import_module("pyinstrument")
        except ImportError:
            log("--profile: pyinstrument is not installed (pip install pyinstrument)")
            return
        missed = sorted({r.id for r in self.rows if r.met is False})
        for pid in missed:
            prepare = self.profiles.get(pid)
            if prepare is None:
                continue
            log(f"profiling {pid} ...")
            op = prepare()
            profiler = pyinstrument.Profiler(interval=0.0005)
            profiler.start()
            op()
            profiler.stop()
            text: str = profiler.output_text(unicode=False, color=False)
            text = text.replace(str(ROOT) + "/", "")  # results name no machine paths
            path = self.opts.out / f"profile-{pid}.txt"
            path.write_text(text)
            log(f"  wrote {path}")


def _portable(value: Any) -> str:
    """An option value as text, with paths inside the project made relative to it."""
    text = str(value)
    return text.replace(str(ROOT) + "/", "") if isinstance(value, Path) else text


def source_digest() -> str:
    """A digest of the balsam_sync sources: the package is edited while benchmarks run."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "balsam_sync").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def fmt_phases(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())


def online_all(client: Client) -> list[Any]:
    return list(client.Job.objects.online().all())


# -- P7 child ----------------------------------------------------------------------------------


def rss_mb() -> float:
    """Peak RSS of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak of this address space) from /proc/self/status, in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_open() -> None:
    """Open the mirror once (applying any pending migration), so P7 measures no migration."""
    client = balsam_sync.connect()
    _ = client.mirror
    client.close()


def child_p7() -> None:
    client = balsam_sync.connect()
    _ = client.mirror
    gc.collect()
    baseline = rss_mb()
    baseline_now = proc_status_mb("VmRSS")
    start = time.perf_counter()
    n = 0
    for job in client.Job.objects.offline().all().iterator():
        _ = job.state
        n += 1
    seconds = time.perf_counter() - start
    result = {
        "baseline_mb": baseline,
        "baseline_vmrss_mb": baseline_now,
        "peak_mb": rss_mb(),
        "peak_vmhwm_mb": proc_status_mb("VmHWM"),
        "rows": n,
        "seconds": seconds,
    }
    print(json.dumps(result))


# On Linux, ru_maxrss survives fork + exec: a child of this (large) process would start with
# our high-water mark. A small trampoline process in between starts the child from a ~10 MB
# address space, so the child's ru_maxrss is its own.
TRAMPOLINE = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


# -- output ------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    head = "| id | what | ours | reference | ratio | target | met? |\n|---|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        if r.error:
            lines.append(f"| {r.id} | {r.what} | ERROR: {r.error[:200]} | | | | ✗ |")
            continue
        ours = f"{r.ours_label}: {r.ours}" if r.ours else "—"
        ref = f"{r.ref_label}: {r.ref}" if r.ref else "—"
        met = "—" if r.met is None else ("✓ yes" if r.met else "✗ NO")
        lines.append(
            f"| {r.id} | {r.what} | {ours} | {ref} | {r.ratio_text} | {r.target} | {met} |"
        )
    return "\n".join(lines)


def write_results(bench: Bench, started: datetime, seconds: float) -> str:
    out = bench.opts.out
    out.mkdir(parents=True, exist_ok=True)
    text = table(bench.rows)
    notes = [f"- **{r.id}** {r.what}: {n}" for r in bench.rows for n in r.notes]
    opts = bench.opts
    header = (
        f"# balsam_sync benchmarks\n\n"
        f"Run {started.isoformat(timespec='seconds')} against {opts.api_root} "
        f"({platform.python_version()}, {os.cpu_count()} cores), {seconds:.0f} s in all. "
        f"Sizes: {opts.jobs:,} server jobs, {opts.big:,}-job mirror, {opts.creates:,} creates. "
        f"Medians of n repetitions [min-max]; ratios use medians. "
        f"balsam_sync sources: {bench.info.get('balsam_sync_sources_at_start')}.\n\n"
    )
    if "WARNING" in bench.info:
        header += f"**WARNING: {bench.info['WARNING']}**\n\n"
    extra = ""
    if bench.info:
        extra = "\n\n## Set-up\n\n```json\n" + json.dumps(bench.info, indent=2) + "\n```\n"
    (out / "bench.md").write_text(
        header + text + "\n\n## Notes\n\n" + "\n".join(notes) + extra + "\n"
    )
    (out / "bench.json").write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "seconds": seconds,
                "options": {k: _portable(v) for k, v in vars(opts).items()},
                "python": platform.python_version(),
                "cores": os.cpu_count(),
                "rows": [r.as_json() for r in bench.rows],
                "info": bench.info,
            },
            indent=2,
        )
    )
    plot(bench.rows, out / "bench.png")
    return text + "\n\nNotes:\n" + "\n".join(notes)


def plot(rows: list[Row], path: Path) -> None:
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        log("matplotlib is not installed: no plot")
        return
    try:
        timing = [r for r in rows if r.ours and r.ours.unit == "s"]
        memory = [r for r in rows if r.ours and r.ours.unit == "MB"]
        fig, axes = plt.subplots(
            1,
            2,
            figsize=(15, 0.55 * max(4, len(timing)) + 1.5),
            gridspec_kw={"width_ratios": [4, 1]},
        )
        ax = axes[0]
        labels = [f"{r.id}: {r.what[:60]}" for r in timing]
        ys = list(range(len(timing)))
        ours = [r.ours.median * 1000 if r.ours else 0 for r in timing]
        refs = [r.ref.median * 1000 if r.ref else 0 for r in timing]
        colors = [
            "tab:green" if r.met else "tab:red" if r.met is False else "tab:blue" for r in timing
        ]
        ax.barh([y - 0.2 for y in ys], ours, height=0.4, color=colors, label="ours")
        ax.barh([y + 0.2 for y in ys], refs, height=0.4, color="tab:gray", label="reference")
        for y, r, value in zip(ys, timing, ours, strict=True):
            note = r.ratio_text if r.ratio is not None else r.target
            ax.text(value, y - 0.2, f" {note}", va="center", fontsize=7)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("median time, ms (log); green: target met, red: missed")
        ax.legend(loc="lower right", fontsize=8)
        ax = axes[1]
        if memory:
            r = memory[0]
            vals = [r.ref.median if r.ref else 0, r.ours.median if r.ours else 0]
            ax.bar(
                ["baseline", "peak"], vals, color=["tab:gray", "tab:green" if r.met else "tab:red"]
            )
            ax.axhline(200, color="black", linestyle="--", linewidth=1)
            ax.set_ylabel("RSS, MB (P7; dashed: 200 MB target)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    except Exception as exc:
        log(f"plot failed: {exc}")


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark balsam_sync against the local real Balsam server "
        "(P1-P7, side by side in one run; see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--api-root", default=DEFAULT_API_ROOT, help="the real server")
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs created on the server")
    parser.add_argument("--big", type=int, default=1_000_000, help="jobs in the P6/P7 mirror")
    parser.add_argument("--creates", type=int, default=10_000, help="P2/P3 bulk_create size")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a smoke test (5000 jobs, 50000-job mirror, "
        "2000 creates, fewer repetitions)",
    )
    parser.add_argument("--only", default="", help="comma-separated selection, e.g. P1,P6")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="output folder")
    parser.add_argument(
        "--reps-fast",
        type=int,
        default=15,
        help="repetitions of fast operations (P1, P6; at least 7)",
    )
    parser.add_argument(
        "--reps-slow", type=int, default=3, help="repetitions of pulls, online all(), P2/P3"
    )
    parser.add_argument(
        "--reps-upstream", type=int, default=5, help="repetitions of the upstream P1 query"
    )
    parser.add_argument("--reps-mem", type=int, default=1, help="P7 subprocess runs")
    parser.add_argument(
        "--no-upstream-all",
        action="store_true",
        help="skip upstream list(Job.objects.all()) in P4 (~14 s per rep)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile (pyinstrument) our side of every missed target into OUT/profile-<id>.txt",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where mirrors go (when not given: a temporary folder, removed at the end)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--child-p7", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-open", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"jobs": 100_000, "big": 1_000_000, "creates": 10_000}
        quick = {"jobs": 5_000, "big": 50_000, "creates": 2_000}
        for key, value in quick.items():
            if getattr(args, key) == defaults[key]:
                setattr(args, key, value)
        args.reps_slow = min(args.reps_slow, 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_p7:
        child_p7()
        return 0
    if args.child_open:
        child_open()
        return 0
    for name in (
        "BALSAM_SYNC_OFFLINE",
        "BALSAM_SYNC_API_ROOT",
        "BALSAM_SYNC_TOKEN",
        "BALSAM_SYNC_HOME",
    ):
        os.environ.pop(name, None)
    try:
        requests.get(f"{args.api_root}/auth/how", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        print(
            f"the real Balsam server does not answer at {args.api_root}: {exc}\n"
            "start it with scripts/real-balsam-server.sh start",
            file=sys.stderr,
        )
        return 2
    only = {p.strip().upper() for p in args.only.split(",") if p.strip()}
    unknown = only - {"P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", *bench_pulls.IDS}
    if unknown:
        print(f"--only: unknown benchmark(s) {sorted(unknown)}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="balsam-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    opts = Options(
        api_root=args.api_root.rstrip("/"),
        jobs=args.jobs,
        big=args.big,
        creates=args.creates,
        reps_fast=max(7, args.reps_fast),
        reps_slow=max(1, args.reps_slow),
        reps_upstream=max(1, args.reps_upstream),
        reps_mem=max(1, args.reps_mem),
        upstream_all=not args.no_upstream_all,
        profile=args.profile,
        out=args.out,
        only=only,
        workdir=workdir,
    )
    opts.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    bench = Bench(opts)
    bench.info["balsam_sync_sources_at_start"] = source_digest()
    try:
        bench.run()
    finally:
        bench.close()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    bench.info["balsam_sync_sources_at_end"] = end = source_digest()
    if end != bench.info["balsam_sync_sources_at_start"]:
        bench.info["WARNING"] = (
            "balsam_sync changed during this run: figures mix code versions (P7 and the "
            "upstream/child processes import the newer code); run again for consistent figures"
        )
        log(f"WARNING: {bench.info['WARNING']}")
    text = write_results(bench, started, time.perf_counter() - t0)
    print(text)
    print(f"\nwrote {opts.out / 'bench.md'}, {opts.out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The jobs data sets: 100k jobs on the real server (P1, P4, P5) and a 1M-job mirror (P6, P7).

The server set: a freshly registered user's jobs, POSTed 5000 at a time, half tagged
``exp:p1`` and half ``exp:p2``, then states set by query updates on id lists (``STATE_PLAN``).
The mirror: synthetic rows made from one real server row, written straight into the store.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

from balsam_sync.remote.rest import normalize_row
from balsam_sync.resources import RESOURCES

from .harness import log, timed
from .server import Api, User, register_user

POST_CHUNK = 5000
BIG_CHUNK = 50_000

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
    last_write: float  # time.monotonic() of the last change


def create_dataset(api_root: str, n_jobs: int) -> Dataset:
    """``n_jobs`` jobs of a new user on the server, in the states of ``STATE_PLAN``."""
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
    counts = set_states(api, ids, n_jobs)
    t2 = time.perf_counter()
    failed_p1 = api.count("/jobs/", [("state", "FAILED"), ("tags", "exp:p1")])
    if failed_p1 != counts["p1:FAILED"]:
        raise RuntimeError(f"server has {failed_p1} FAILED p1 jobs, expected {counts['p1:FAILED']}")
    return Dataset(
        user, site_id, app_id, n_jobs, ids, counts, failed_p1, t1 - t0, t2 - t1, time.monotonic()
    )


def set_states(api: Api, ids: dict[str, list[int]], n_jobs: int) -> dict[str, int]:
    """Move random jobs of each tag into the states of ``STATE_PLAN``; return the counts."""
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
    return counts


def template_row(api_root: str) -> tuple[User, dict[str, Any]]:
    """A real job row from the server (of a small user of its own), in canonical form."""
    user = register_user(api_root, "bench-big")
    api = Api(user)
    _, app_id = api.site_and_app()
    api.call("POST", "/jobs/", json=[{"workdir": "t/0", "app_id": app_id, "tags": {"exp": "p1"}}])
    raw = api.call("GET", "/jobs/", params=[("limit", "1")])["results"][0]
    return user, normalize_row(RESOURCES["Job"], raw)


def big_rows(
    template: dict[str, Any], start: int, stop: int, rng: random.Random, expected: dict[str, int]
) -> list[dict[str, Any]]:
    """Synthetic jobs ``start``..``stop`` of the big mirror; counts them into ``expected``
    (per state, per ``FAILED:<tag>`` and ``tag:p1``)."""
    names = [s for s, _ in BIG_STATES]
    weights = [w for _, w in BIG_STATES]
    base = datetime(2025, 1, 1, tzinfo=timezone.utc)
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
    expected["tag:p1"] = expected.get("tag:p1", 0) + sum(1 for i in range(start, stop) if i % 2)
    return rows


def fill_big_mirror(
    upsert: Callable[[list[dict[str, Any]]], object], template: dict[str, Any], n: int
) -> tuple[dict[str, int], float]:
    """Write ``n`` synthetic job rows through ``upsert`` in chunks; return the expected
    counts and the seconds the writes took."""
    rng = random.Random(6)
    expected: dict[str, int] = {}
    total = 0.0
    log(f"  writing {n} synthetic job rows in chunks of {BIG_CHUNK} ...")
    for start in range(0, n, BIG_CHUNK):
        rows = big_rows(template, start, min(n, start + BIG_CHUNK), rng, expected)
        seconds, _ = timed(partial(upsert, rows))
        total += seconds
    log(f"  {n} rows upserted in {total:.1f} s ({n / total:,.0f} rows/s)")
    return expected, total

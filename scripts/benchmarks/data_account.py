"""A benchmark data set shaped like a real account (its figures: A1-A7 and P9).

The account (built through the real server with plain REST calls, as a site agent makes them):
one Site with a transfer location, one App with a stage-in and a stage-out slot, ``n`` jobs
each with both transfers (2n TransferItems), one BatchJob per 50 jobs. 95 % of the jobs (70 %
for P9) went the whole way (stage-in done, pre-processed, run in their batch job,
post-processed, stage-out done: seven events each) and their batch jobs finished; the others
stopped somewhere along the way, with their transfers pending, active or waiting for the
job, and their batch jobs queued or running.

Each job leaves the trail of events the real site agent leaves: its creation (READY), the
stage-in completing (STAGED_IN, logged by the server), PREPROCESSED, RUNNING, RUN_DONE and
POSTPROCESSED as the launcher reports them (each job with its own ``state_timestamp``, the
moment its state changed since the previous report, and the launcher's ``state_data``), and the
stage-out completing (JOB_FINISHED): about 137,000 events for 20,000 jobs. Events of different
jobs interleave in time, as a launcher running many jobs side by side makes them.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .harness import log
from .server import Api, User, register_user

IN_SLOT = "stage_in"
OUT_SLOT = "stage_out"
JOBS_PER_BATCH_JOB = 50
FINISHED_SHARE = 0.95
CHUNK = 5000

# Where the unfinished jobs stopped: (stage index, weight). Stages: see STAGES.
IN_FLIGHT_STOPS: tuple[tuple[int, int], ...] = (
    (0, 10),
    (1, 10),
    (2, 10),
    (3, 10),
    (4, 30),
    (5, 10),
    (6, 10),
    (7, 10),
)
LAUNCHER_DATA: dict[str, dict[str, Any]] = {"RUNNING": {"num_nodes": 1.0}}
"""What the launcher reports with a state (the job's own ``state_data`` otherwise: empty)."""
STAGES = (
    "created: READY, stage-in pending",
    "stage-in active",
    "stage-in done: STAGED_IN",
    "PREPROCESSED",
    "RUNNING in its batch job",
    "RUN_DONE",
    "POSTPROCESSED: stage-out pending",
    "stage-out active",
    "stage-out done: JOB_FINISHED",
)


@dataclass
class Account:
    """What was built, and what the server should now hold."""

    user: User
    site_id: int
    app_id: int
    job_ids: list[int]
    items: dict[int, tuple[int, int]]  # job id -> (stage-in item id, stage-out item id)
    batch_jobs: list[int]
    stops: dict[int, int]  # job id -> index of the last stage it went through
    seconds: float = 0.0
    last_write: float = 0.0  # time.monotonic() of the last change
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def in_flight(self) -> list[int]:
        return [j for j, stop in self.stops.items() if stop < len(STAGES) - 1]


def _chunks(items: list[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Builder:
    """Builds an account on the real server with the calls a site agent makes."""

    def __init__(
        self, api_root: str, n_jobs: int, seed: int = 9, finished_share: float = FINISHED_SHARE
    ) -> None:
        self.user = register_user(api_root, "bench-acct")
        self.api = Api(self.user)
        self.n_jobs = n_jobs
        self.rng = random.Random(seed)
        self.finished_share = finished_share

    def build(self) -> Account:
        t0 = time.perf_counter()
        site_id, app_id = self._site_and_app()
        batch_jobs = self._batch_jobs(site_id)
        job_ids = self._jobs(app_id)
        items = self._items()
        stops = self._stops(job_ids)
        account = Account(self.user, site_id, app_id, job_ids, items, batch_jobs, stops)
        self._move(account)
        self._finish_batch_jobs(account)
        account.seconds = time.perf_counter() - t0
        account.last_write = time.monotonic()
        account.counts = {
            path: self.api.count(path, [])
            for path in ("/sites/", "/apps/", "/jobs/", "/batch-jobs/", "/transfers/", "/events/")
        }
        return account

    def _site_and_app(self) -> tuple[int, int]:
        site = self.api.call(
            "POST",
            "/sites/",
            json={
                "name": f"acct-{uuid.uuid4().hex[:6]}",
                "path": "/projects/acct",
                "transfer_locations": {"remote": f"globus://{uuid.uuid4()}"},
                "allowed_projects": ["datascience"],
            },
        )
        slot = {"required": True, "description": "", "recursive": False}
        app = self.api.call(
            "POST",
            "/apps/",
            json={
                "site_id": site["id"],
                "name": "Simulation",
                "serialized_class": "txt",
                "source_code": "class Simulation(ApplicationDefinition): pass",
                "transfers": {
                    IN_SLOT: {**slot, "direction": "in", "local_path": "input.dat"},
                    OUT_SLOT: {**slot, "direction": "out", "local_path": "output.dat"},
                },
            },
        )
        return int(site["id"]), int(app["id"])

    def _batch_jobs(self, site_id: int) -> list[int]:
        ids = []
        for _ in range(max(1, self.n_jobs // JOBS_PER_BATCH_JOB)):
            bj = self.api.call(
                "POST",
                "/batch-jobs/",
                json={
                    "site_id": site_id,
                    "project": "datascience",
                    "queue": "prod",
                    "num_nodes": 8,
                    "wall_time_min": 60,
                    "job_mode": "mpi",
                    "filter_tags": {"exp": "acct"},
                },
            )
            ids.append(int(bj["id"]))
        return ids

    def _jobs(self, app_id: int) -> list[int]:
        ids: list[int] = []
        for chunk in _chunks(list(range(self.n_jobs))):
            payload = [
                {
                    "workdir": f"acct/{i}",
                    "app_id": app_id,
                    "tags": {"exp": "acct", "shard": str(i % 16)},
                    "num_nodes": 1,
                    "transfers": {
                        IN_SLOT: {"location_alias": "remote", "path": f"/data/in/{i}.dat"},
                        OUT_SLOT: {"location_alias": "remote", "path": f"/data/out/{i}.dat"},
                    },
                }
                for i in chunk
            ]
            ids.extend(int(job["id"]) for job in self.api.call("POST", "/jobs/", json=payload))
            log(f"  account: created {len(ids)}/{self.n_jobs} jobs")
        return ids

    def _items(self) -> dict[int, tuple[int, int]]:
        found: dict[int, dict[str, int]] = {}
        offset = 0
        while True:
            page = self.api.call(
                "GET", "/transfers/", params=[("limit", "20000"), ("offset", str(offset))]
            )
            for item in page["results"]:
                found.setdefault(int(item["job_id"]), {})[item["direction"]] = int(item["id"])
            offset += len(page["results"])
            if not page["results"] or offset >= int(page["count"]):
                break
        return {job: (d["in"], d["out"]) for job, d in found.items()}

    def _stops(self, job_ids: list[int]) -> dict[int, int]:
        """The oldest ``finished_share`` (95 %) went the whole way; the newest stopped along it."""
        last = len(STAGES) - 1
        stages = [s for s, _ in IN_FLIGHT_STOPS]
        weights = [w for _, w in IN_FLIGHT_STOPS]
        finished = round(len(job_ids) * self.finished_share)
        stops = {job: last for job in job_ids[:finished]}
        for job in job_ids[finished:]:
            stops[job] = self.rng.choices(stages, weights)[0]
        return stops

    def _move(self, acct: Account) -> None:
        """Take every job through the stages up to its stop, one bulk call per 5000."""
        since = datetime.now(timezone.utc)
        for stage in range(1, len(STAGES)):
            jobs = [j for j, stop in acct.stops.items() if stop >= stage]
            if not jobs:
                continue
            self._apply(acct, stage, jobs, since)
            since = datetime.now(timezone.utc)
            log(f"  account: {len(jobs)} jobs reached '{STAGES[stage]}'")

    def _when(self, since: datetime) -> str:
        """When one job's state changed, as its launcher reports it: some moment between the
        previous report and now (each job its own)."""
        window = (datetime.now(timezone.utc) - since).total_seconds()
        moment = since + timedelta(seconds=self.rng.uniform(0.0, max(window, 0.0)))
        return moment.replace(tzinfo=None).isoformat()

    def _apply(self, acct: Account, stage: int, jobs: list[int], since: datetime) -> None:
        bj_of = {
            j: acct.batch_jobs[i // JOBS_PER_BATCH_JOB % len(acct.batch_jobs)]
            for i, j in enumerate(acct.job_ids)
        }
        for chunk in _chunks(jobs):
            if stage in (1, 7):
                side = 0 if stage == 1 else 1
                self.api.call(
                    "PATCH",
                    "/transfers/",
                    json=[
                        {"id": acct.items[j][side], "state": "active", "task_id": str(uuid.uuid4())}
                        for j in chunk
                    ],
                )
            elif stage in (2, 8):
                side = 0 if stage == 2 else 1
                self.api.call(
                    "PATCH",
                    "/transfers/",
                    json=[
                        {
                            "id": acct.items[j][side],
                            "state": "done",
                            "transfer_info": {"bytes": 1048576},
                        }
                        for j in chunk
                    ],
                )
            else:
                state = {3: "PREPROCESSED", 4: "RUNNING", 5: "RUN_DONE", 6: "POSTPROCESSED"}[stage]
                data = LAUNCHER_DATA.get(state, {})
                patch = [
                    {
                        "id": j,
                        "state": state,
                        "state_timestamp": self._when(since),
                        "state_data": data,
                    }
                    for j in chunk
                ]
                if stage == 4:
                    for item in patch:
                        item["batch_job_id"] = bj_of[int(item["id"])]
                self.api.call("PATCH", "/jobs/", json=patch)

    def _finish_batch_jobs(self, acct: Account) -> None:
        """Batch jobs whose jobs all finished are finished; the others queued or running."""
        bj_of = batch_job_of(acct)
        busy = {bj_of[j] for j in acct.in_flight}
        patch: list[dict[str, Any]] = []
        for n, bj in enumerate(acct.batch_jobs):
            item: dict[str, Any] = {"id": bj, "scheduler_id": 10_000 + n}
            if bj in busy:
                item.update(state="running" if n % 2 else "queued", status_info={})
            else:
                item.update(
                    state="finished",
                    status_info={"exit": "0"},
                    start_time="2025-01-01T00:00:00",
                    end_time="2025-01-01T01:00:00",
                )
            patch.append(item)
        for key in {frozenset(p) for p in patch}:
            self.api.call("PATCH", "/batch-jobs/", json=[p for p in patch if frozenset(p) == key])


def batch_job_of(acct: Account) -> dict[int, int]:
    """One batch job per 50 jobs, in creation order."""
    return {
        job: acct.batch_jobs[min(i // JOBS_PER_BATCH_JOB, len(acct.batch_jobs) - 1)]
        for i, job in enumerate(acct.job_ids)
    }

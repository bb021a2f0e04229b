"""A simulated site agent: plain REST calls, as the real one makes them (for tests).

It moves jobs along the pipeline with bulk PATCHes (with ``state_timestamp`` in the past and
``state_data``, as a launcher reports), moves transfer items (pending -> active -> done, which
the server turns into job state changes when a direction completes), moves batch jobs
(queued -> running -> finished), creates and deletes jobs, and deletes batch jobs.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import requests

Row = dict[str, Any]

IN_SLOT, OUT_SLOT = "stage_in", "stage_out"
NEXT_STATE = {
    "STAGED_IN": "PREPROCESSED",
    "PREPROCESSED": "RUNNING",
    "RUNNING": "RUN_DONE",
    "RUN_DONE": "POSTPROCESSED",
    "RUN_ERROR": "RESTART_READY",
    "RESTART_READY": "RUNNING",
}


class Rest:
    """The REST API of one user with plain ``requests`` (one session per thread)."""

    def __init__(self, api_root: str, token: str) -> None:
        self.root = api_root
        self.token = token
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        found: requests.Session | None = getattr(self._local, "session", None)
        if found is None:
            found = self._local.session = requests.Session()
            found.headers["Authorization"] = f"Bearer {self.token}"
        return found

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Connection": "close"} if method == "DELETE" else {}
        reply = self.session.request(
            method, self.root + path, timeout=120, headers=headers, **kwargs
        )
        if reply.status_code >= 400:
            raise AssertionError(f"{method} {path}: {reply.status_code} {reply.text[:300]}")
        return reply.json() if reply.content else None

    def rows(self, path: str, params: list[tuple[str, str]] | None = None) -> list[Row]:
        body = self.call("GET", path, params=[*(params or []), ("limit", "100000")])
        rows: list[Row] = body["results"]
        return rows


def make_account(rest: Rest, n_jobs: int, n_batch_jobs: int) -> tuple[int, int]:
    """A site with a transfer location, an app with a stage-in and a stage-out slot, jobs with
    both transfers, and batch jobs; return (site id, app id)."""
    site = rest.call(
        "POST",
        "/sites/",
        json={
            "name": f"agent-{uuid.uuid4().hex[:6]}",
            "path": "/projects/agent",
            "transfer_locations": {"remote": f"globus://{uuid.uuid4()}"},
        },
    )
    slot = {"required": True, "description": "", "recursive": False}
    app = rest.call(
        "POST",
        "/apps/",
        json={
            "site_id": site["id"],
            "name": "Sim",
            "serialized_class": "txt",
            "source_code": "pass",
            "transfers": {
                IN_SLOT: {**slot, "direction": "in", "local_path": "in.dat"},
                OUT_SLOT: {**slot, "direction": "out", "local_path": "out.dat"},
            },
        },
    )
    for _ in range(n_batch_jobs):
        create_batch_job(rest, site["id"])
    create_jobs(rest, app["id"], n_jobs)
    return int(site["id"]), int(app["id"])


def create_batch_job(rest: Rest, site_id: int) -> Row:
    body = {
        "site_id": site_id,
        "project": "p",
        "queue": "q",
        "num_nodes": 2,
        "wall_time_min": 30,
        "job_mode": "mpi",
    }
    row: Row = rest.call("POST", "/batch-jobs/", json=body)
    return row


def create_jobs(rest: Rest, app_id: int, n: int, tag: str = "agent") -> list[Row]:
    payload = []
    for _ in range(n):
        name = uuid.uuid4().hex[:10]
        payload.append(
            {
                "workdir": f"agent/{name}",
                "app_id": app_id,
                "tags": {"by": tag},
                "transfers": {
                    IN_SLOT: {"location_alias": "remote", "path": f"/in/{name}"},
                    OUT_SLOT: {"location_alias": "remote", "path": f"/out/{name}"},
                },
            }
        )
    rows: list[Row] = rest.call("POST", "/jobs/", json=payload) if payload else []
    return rows


class SiteAgent:
    """Runs the steps of a site agent at random until told to stop."""

    def __init__(self, rest: Rest, site_id: int, app_id: int, seed: int) -> None:
        self.rest = rest
        self.site_id = site_id
        self.app_id = app_id
        self.rng = random.Random(seed)
        self.steps = 0
        self.longest = 0.0
        self.calm = threading.Event()
        """Set: no more creations and deletions (the counts of jobs stay put)."""

    def run(self, stop: threading.Event) -> None:
        actions = [
            (self.advance_jobs, 30),
            (self.move_transfers, 25),
            (self.move_batch_jobs, 10),
            (self.create, 8),
            (self.delete_jobs, 8),
            (self.replace_batch_job, 3),
        ]
        while not stop.is_set():
            allowed = actions[:3] if self.calm.is_set() else actions
            funcs = [f for f, _ in allowed]
            weights = [w for _, w in allowed]
            action = self.rng.choices(funcs, weights)[0]
            started = time.monotonic()
            action()
            self.longest = max(self.longest, time.monotonic() - started)
            self.steps += 1

    def _past(self) -> str:
        # A launcher reports when a state was reached, which is earlier than the report.
        when = datetime.now(timezone.utc) - timedelta(seconds=self.rng.randint(1, 3600))
        return when.replace(tzinfo=None).isoformat()

    def advance_jobs(self) -> None:
        state = self.rng.choice(sorted(NEXT_STATE))
        jobs = self.rest.rows("/jobs/", [("state", state)])[: self.rng.randint(1, 40)]
        if not jobs:
            return
        bjs = [b["id"] for b in self.rest.rows("/batch-jobs/", [("state", "running")])]
        patch = []
        for job in jobs:
            item: Row = {
                "id": job["id"],
                "state": NEXT_STATE[state],
                "state_timestamp": self._past(),
                "state_data": {"message": f"step {self.steps}"},
            }
            if NEXT_STATE[state] == "RUNNING":
                item["batch_job_id"] = self.rng.choice(bjs) if bjs else None
            patch.append(item)
        # The server needs the same keys on every item of one PATCH.
        keys = {frozenset(p) for p in patch}
        for key in keys:
            self.rest.call("PATCH", "/jobs/", json=[p for p in patch if frozenset(p) == key])

    def move_transfers(self) -> None:
        source, target = self.rng.choice([("pending", "active"), ("active", "done")])
        items = self.rest.rows("/transfers/", [("state", source)])[: self.rng.randint(1, 40)]
        if not items:
            return
        patch = [
            {"id": i["id"], "state": target, "task_id": f"t-{self.steps}", "transfer_info": {}}
            for i in items
        ]
        self.rest.call("PATCH", "/transfers/", json=patch)

    def move_batch_jobs(self) -> None:
        source, target = self.rng.choice(
            [("pending_submission", "queued"), ("queued", "running"), ("running", "finished")]
        )
        bjs = self.rest.rows("/batch-jobs/", [("state", source)])[:3]
        patch = [
            {
                "id": b["id"],
                "state": target,
                "scheduler_id": 100 + b["id"],
                "status_info": {"step": str(self.steps)},
            }
            for b in bjs
        ]
        if patch:
            self.rest.call("PATCH", "/batch-jobs/", json=patch)

    def create(self) -> None:
        create_jobs(self.rest, self.app_id, self.rng.randint(1, 10))

    def delete_jobs(self) -> None:
        jobs = self.rest.rows("/jobs/", [("state", "JOB_FINISHED")])
        if jobs:
            doomed = self.rng.sample(jobs, min(len(jobs), self.rng.randint(1, 3)))
            self.rest.call("DELETE", "/jobs/", params=[("id", str(j["id"])) for j in doomed])

    def replace_batch_job(self) -> None:
        finished = self.rest.rows("/batch-jobs/", [("state", "finished")])
        if finished:
            self.rest.call("DELETE", f"/batch-jobs/{self.rng.choice(finished)['id']}")
        create_batch_job(self.rest, self.site_id)


class BulkWriter:
    """Updates many quiet jobs in one PATCH again and again: each takes long enough that
    faster requests commit newer stamps meanwhile (the late commits a pull must not skip).
    Each round updates the next group, so a round a pull skipped is not soon written over."""

    def __init__(self, rest: Rest, job_ids: list[int], groups: int = 4) -> None:
        self.rest = rest
        self.job_ids = job_ids
        self.groups = [job_ids[g::groups] for g in range(groups)]
        self.rounds = 0
        self.longest = 0.0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            group = self.groups[self.rounds % len(self.groups)]
            self.rounds += 1
            started = time.monotonic()
            patch = [{"id": i, "data": {"round": self.rounds}} for i in group]
            self.rest.call("PATCH", "/jobs/", json=patch)
            self.longest = max(self.longest, time.monotonic() - started)

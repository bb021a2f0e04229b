"""One varied Balsam dataset on the real server, for the mirror-vs-server conformance tests.

The data is written with plain HTTP (``requests``), not through ``balsam_sync``: the tests
compare the package's two read paths, so building the data must not depend on its write path.
Everything is derived from a fixed seed, so a failing example replays on the same shapes
(ids and timestamps differ between runs, the structure does not).

What the data is made to contain (balsam-api.md §1, §2.1, §4):

* sites whose names and paths hold ``%``, ``_``, ``\\``, GLOB specials and mixed case;
* apps with the same name at several sites, some with transfer slots;
* ~150 jobs in a three-level DAG, bulk-created in several calls (so ``last_update`` ties
  exist), workdirs with LIKE wildcards, backslashes, GLOB specials and case variants, tags with
  several keys, overlapping values, values and keys containing ``:`` and empty values;
* jobs moved through many states (including the server's rewrites of READY/POSTPROCESSED/
  STAGED_OUT and the promotion of children), batch job assignments, cleared
  ``pending_file_cleanup``, transfer item state changes;
* events with ``data`` of several shapes (strings with ``:``, ints, bools, lists, nested dicts)
  and client timestamps in the past, out of order and tied;
* batch jobs with filter tags, scheduler ids, start/end times (some tied, some NULL), states.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import requests

Row = dict[str, Any]

SEED = 20240501

SLOTS = {
    "in_slot": {
        "required": False,
        "direction": "in",
        "local_path": "in.dat",
        "description": "",
        "recursive": False,
    },
    "out_slot": {
        "required": False,
        "direction": "out",
        "local_path": "out.dat",
        "description": "",
        "recursive": False,
    },
}

SITES: list[Row] = [
    {
        "name": "Alpha_Site%1",
        "path": "/projects/Alpha_1/data%dir/run_x",
        "transfer_locations": {"loc": "globus://abc", "other": "rsync://u@h"},
    },
    {
        "name": "alpha_site_1",
        "path": "/projects/alpha%1/DATA_dir/back\\slash",
        "transfer_locations": {"loc": "globus://def"},
    },
    {
        "name": "GAMMA [c]*",
        "path": "/scratch/Gamma*/q?/[br]/\u00fcn\u00ef_end\\",
        "transfer_locations": {},
    },
]

# (site index, app name, with transfer slots)
APPS: list[tuple[int, str, bool]] = [
    (0, "Hello", False),
    (0, "hello", False),
    (0, "Sim_1", True),
    (1, "Hello", False),
    (1, "Sim_1", True),
    (2, "Hello", False),
    (2, "Other", False),
]

WORKDIR_FRAGMENTS = [
    "run_1",
    "run%1",
    "RUN_1",
    "Run-1",
    "runx1",
    "back\\slash",
    "back\\\\double",
    "trail\\",
    "pct%",
    "pct\\%lit",
    "under_score",
    "underxscore",
    "bra[ck]et",
    "star*",
    "q?mark",
    "\u00fcn\u00ef",
    "UN\u00cf",
    "plain",
    "a_b",
    "a%b",
    "axb",
    "A_B",
    "x\\_y",
    "x%y",
    "dup",
]

TAG_CHOICES: list[tuple[str, list[str]]] = [
    ("exp", ["e1", "e2", "E1"]),
    ("grp", ["g:1", "g:2", "g", "g:1:x"]),
    ("k", ["v", "v:w:x", "V"]),
    ("num", ["1", "1.0"]),
    ("pct", ["50%", "5_0"]),
    ("Case", ["Upper"]),
    ("case", ["upper", "Upper"]),
]

EVENT_DATA: list[Row] = [
    {"message": "x"},
    {"message": "OK: done!"},
    {"message": "OK: done!", "n": 1},
    {"message": "x", "extra": "y:z"},
    {"flag": True, "message": "X"},
    {"list": ["a", "b"], "message": "x"},
    {"nested": {"a": "b"}},
    {"n": "1"},
    {"empty": ""},
    {},
]

BATCH_STATES = ["queued", "running", "finished", "submit_failed", "pending_deletion"]


@dataclass
class Dataset:
    """What was built, read back from the server after the last write."""

    base: datetime
    sites: list[Row] = field(default_factory=list)
    apps: list[Row] = field(default_factory=list)
    jobs: list[Row] = field(default_factory=list)
    batch_jobs: list[Row] = field(default_factory=list)
    transfers: list[Row] = field(default_factory=list)
    events: list[Row] = field(default_factory=list)

    def rows(self, resource: str) -> list[Row]:
        return {
            "Site": self.sites,
            "App": self.apps,
            "Job": self.jobs,
            "BatchJob": self.batch_jobs,
            "TransferItem": self.transfers,
            "EventLog": self.events,
        }[resource]


class Api:
    """Just enough raw HTTP to build the data and to ask the server directly."""

    def __init__(self, api_root: str, token: str) -> None:
        self.root = api_root.rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None, params: Any = None) -> Any:
        reply = self.http.request(
            method, f"{self.root}{path}", json=body, params=params, timeout=120
        )
        if reply.status_code >= 400:
            raise AssertionError(f"{method} {path} -> {reply.status_code}: {reply.text[:2000]}")
        return reply.json() if reply.content else None

    def rows(self, path: str, params: list[tuple[str, str]] | None = None) -> tuple[list[Row], int]:
        body = self.call("GET", path, params=params or [])
        return body["results"], body["count"]

    def patch_jobs(self, items: list[Row]) -> None:
        """PATCH /jobs/ grouped by key set (the server's executemany needs uniform keys)."""
        groups: dict[tuple[str, ...], list[Row]] = {}
        for item in items:
            groups.setdefault(tuple(sorted(item)), []).append(item)
        for group in groups.values():
            self.call("PATCH", "/jobs/", group)


def _naive(stamp: datetime) -> str:
    return stamp.astimezone(timezone.utc).replace(tzinfo=None).isoformat()


def _tags(rng: random.Random, i: int) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key, values in TAG_CHOICES:
        if rng.random() < 0.45:
            tags[key] = rng.choice(values)
    if i % 11 == 0:
        tags["x:y"] = "z"
    if i % 13 == 0:
        tags["x"] = "y:z"
    if i % 17 == 0:
        tags["empty"] = ""
    return tags


def _workdir(rng: random.Random, i: int, level: int) -> str:
    frag = WORKDIR_FRAGMENTS[i % len(WORKDIR_FRAGMENTS)]
    if frag == "dup":
        return "dup/same"  # the same workdir in several create calls
    prefix = rng.choice(["", "Grp/", "grp/", "g_1/", "g%1/"])
    return f"{prefix}{frag}/L{level}_{i}"


def build_dataset(api_root: str, token: str) -> Dataset:
    """Create the dataset for a brand-new user and return it as the server now holds it."""
    rng = random.Random(SEED)
    api = Api(api_root, token)
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=30)
    data = Dataset(base=base)

    sites = [api.call("POST", "/sites/", s) for s in SITES]
    apps = []
    for site_index, name, with_slots in APPS:
        apps.append(
            api.call(
                "POST",
                "/apps/",
                {
                    "site_id": sites[site_index]["id"],
                    "name": name,
                    "serialized_class": "txt",
                    "source_code": "print('hi')",
                    "transfers": SLOTS if with_slots else {},
                },
            )
        )
    site_of_app = {a["id"]: a["site_id"] for a in apps}
    slot_apps = [a for a, (_, _, slots) in zip(apps, APPS, strict=True) if slots]

    def job_spec(i: int, level: int, parents: list[int]) -> Row:
        app = rng.choice(slot_apps) if rng.random() < 0.4 else rng.choice(apps)
        spec: Row = {
            "workdir": _workdir(rng, i, level),
            "app_id": app["id"],
            "tags": _tags(rng, i),
            "parent_ids": parents,
            "num_nodes": rng.choice([1, 1, 2, 4]),
        }
        if app in slot_apps:
            choice = rng.random()
            transfers: Row = {}
            if choice < 0.7:
                transfers["in_slot"] = {"location_alias": "loc", "path": f"/abs/in_{i}.dat"}
            if choice > 0.3:
                transfers["out_slot"] = {"location_alias": "loc", "path": f"/abs/out_{i}.dat"}
            spec["transfers"] = transfers
        return spec

    jobs: list[Row] = []
    i = 0
    # Level 0: four create calls, so there are four last_update values shared by many jobs.
    for size in (32, 24, 16, 10):
        specs = [job_spec(i + n, 0, []) for n in range(size)]
        i += size
        jobs += api.call("POST", "/jobs/", specs)
    level0 = [j["id"] for j in jobs]

    # Move jobs through states, with client timestamps in the past (out of order, some tied).
    def states_round(ids: list[int], state: str, day: float, data_choices: list[Row]) -> None:
        items = []
        tied = _naive(base + timedelta(days=day))
        for n, job_id in enumerate(ids):
            stamp = tied if n % 3 == 0 else _naive(base + timedelta(days=day, minutes=-7 * n))
            items.append(
                {
                    "id": job_id,
                    "state": state,
                    "state_timestamp": stamp,
                    "state_data": dict(rng.choice(data_choices)),
                }
            )
        api.patch_jobs(items)

    def current(ids: list[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        for start in range(0, len(ids), 400):
            chunk = ids[start : start + 400]
            rows, _ = api.rows("/jobs/", [("id", str(x)) for x in chunk])
            found.update((r["id"], r["state"]) for r in rows)
        return found

    shuffled = list(level0)
    rng.shuffle(shuffled)
    finished_parents = shuffled[:25]
    failed = shuffled[25:35]
    running = shuffled[35:45]
    restart = shuffled[45:55]
    misc = shuffled[55:70]
    preprocessed = shuffled[70:75]

    states_round(finished_parents + failed + running + restart, "PREPROCESSED", 5, EVENT_DATA)
    states_round(finished_parents + failed + running + restart, "RUNNING", 3, EVENT_DATA)
    states_round(finished_parents[:15], "RUN_DONE", 6, EVENT_DATA)
    states_round(failed, "RUN_ERROR", 6, EVENT_DATA)
    states_round(restart, "RUN_TIMEOUT", 4, EVENT_DATA)
    states_round(finished_parents[:15], "POSTPROCESSED", 7, EVENT_DATA)  # → JOB_FINISHED (some)
    states_round(finished_parents[15:], "STAGED_OUT", 2, EVENT_DATA)  # → always JOB_FINISHED
    states_round(failed[3:], "FAILED", 8, EVENT_DATA)  # failed[:3] stay RUN_ERROR
    states_round(restart[3:], "RESTART_READY", 1, EVENT_DATA)  # restart[:3] stay RUN_TIMEOUT
    states_round(preprocessed, "PREPROCESSED", 4.5, EVENT_DATA)
    states_round(misc[:5], "READY", 9, EVENT_DATA)  # → STAGED_IN unless stage-in pending
    states_round(misc[5:10], "RUN_DONE", 9.5, EVENT_DATA)
    states_round(misc[10:], "JOB_FINISHED", 0.5, EVENT_DATA)

    # Level 1 children: parents drawn from level 0 (finished or not), two create calls.
    now_states = current(level0)
    done0 = [x for x in level0 if now_states[x] == "JOB_FINISHED"]
    for size in (28, 20):
        specs = []
        for n in range(size):
            pool = done0 if (n % 3 == 0 and done0) else level0
            specs.append(job_spec(i + n, 1, sorted(set(rng.sample(pool, rng.randint(1, 3))))))
        i += size
        jobs += api.call("POST", "/jobs/", specs)
    level1 = [j["id"] for j in jobs if j["id"] not in set(level0)]

    # Finish more level-0 parents now: the server promotes children (events "All parents
    # finished" at the server's now).
    remaining = [x for x in level0 if now_states[x] not in ("JOB_FINISHED", "FAILED")]
    rng.shuffle(remaining)
    states_round(remaining[:12], "JOB_FINISHED", 10, EVENT_DATA)

    # Level 2 grandchildren: parents from level 1 and level 0.
    specs = []
    for n in range(24):
        parents = rng.sample(level1, rng.randint(1, 2))
        if n % 4 == 0:
            parents.append(rng.choice(level0))
        specs.append(job_spec(i + n, 2, sorted(set(parents))))
    i += 24
    jobs += api.call("POST", "/jobs/", specs)
    all_ids = [j["id"] for j in jobs]

    # A few more state changes on children, without a timestamp (the server's now).
    states_round(level1[:8], "FAILED", 11, EVENT_DATA)
    api.patch_jobs(
        [{"id": x, "state": "RUNNING", "state_data": {"message": "now"}} for x in level1[8:14]]
    )

    # Batch jobs, with scheduler ids, times (ties and NULLs) and states.
    bj_specs = [
        (0, "debug", {"exp": "e1"}),
        (0, "prod", {"exp": "e1", "grp": "g:1"}),
        (0, "debug", {}),
        (1, "Debug", {"k": "v:w:x"}),
        (1, "prod", {"exp": "E1"}),
        (2, "debug", {"x": "y:z"}),
        (2, "prod", {"x:y": "z"}),
    ]
    batch_jobs = []
    for site_index, queue, ftags in bj_specs:
        batch_jobs.append(
            api.call(
                "POST",
                "/batch-jobs/",
                {
                    "site_id": sites[site_index]["id"],
                    "project": "proj",
                    "queue": queue,
                    "num_nodes": 2,
                    "wall_time_min": 30,
                    "job_mode": "mpi",
                    "filter_tags": ftags,
                },
            )
        )
    t = base + timedelta(days=2, hours=3)
    bj_updates: list[Row] = [
        {"scheduler_id": 101, "state": "running", "start_time": _naive(t)},
        {"scheduler_id": 102, "state": "finished", "start_time": _naive(t), "end_time": _naive(t)},
        {"scheduler_id": 101, "state": "queued"},
        {
            "scheduler_id": 103,
            "state": "finished",
            "start_time": _naive(t - timedelta(hours=5)),
            "end_time": _naive(t + timedelta(hours=1)),
        },
        {"state": "submit_failed"},
        {"scheduler_id": 104, "start_time": _naive(t + timedelta(microseconds=1))},
        {},
    ]
    for bj, upd in zip(batch_jobs, bj_updates, strict=True):
        if upd:
            api.call("PUT", f"/batch-jobs/{bj['id']}", upd)
    api.call("PUT", f"/batch-jobs/{batch_jobs[4]['id']}", {"state": "pending_deletion"})

    # Assign jobs to batch jobs of their own site (and a few to another site's batch job).
    bj_by_site: dict[int, list[int]] = {}
    for bj in batch_jobs:
        bj_by_site.setdefault(bj["site_id"], []).append(bj["id"])
    assign = []
    for job in jobs:
        if rng.random() < 0.45:
            own = bj_by_site[site_of_app[job["app_id"]]]
            pool = own if rng.random() < 0.85 else [b["id"] for b in batch_jobs]
            assign.append({"id": job["id"], "batch_job_id": rng.choice(pool)})
    api.patch_jobs(assign)

    # Clear pending_file_cleanup on some jobs.
    cleanup = rng.sample(all_ids, len(all_ids) // 3)
    api.patch_jobs([{"id": x, "pending_file_cleanup": False} for x in cleanup])

    # A few single updates, so last_update values spread out.
    for x in rng.sample(all_ids, 6):
        api.call("PUT", f"/jobs/{x}", {"data": {"touched": True}})

    # Transfer items: some done (READY jobs whose stage-in completes become STAGED_IN),
    # some active/inactive/error.
    items, _ = api.rows("/transfers/")
    rng.shuffle(items)
    moves = ["done", "done", "done", "active", "inactive", "error"]
    patch = [{"id": it["id"], "state": moves[n % len(moves)]} for n, it in enumerate(items[:40])]
    if patch:
        api.call("PATCH", "/transfers/", patch)

    # One site is refreshed later than the others.
    api.call("PUT", f"/sites/{sites[1]['id']}", {"allowed_projects": ["proj"]})

    data.sites = api.rows("/sites/")[0]
    data.apps = api.rows("/apps/")[0]
    data.jobs = api.rows("/jobs/")[0]
    data.batch_jobs = api.rows("/batch-jobs/")[0]
    data.transfers = api.rows("/transfers/")[0]
    data.events = api.rows("/events/")[0]
    return data

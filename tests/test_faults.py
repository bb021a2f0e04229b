"""No mutation lost or duplicated on a flaky link, and refusals end in dead letters (R1, R5).

A seeded fault proxy sits between the client and the real server. ``BALSAM_SYNC_FULL=1`` runs
the full counts (R1: 10,000 mutations); CI runs a smaller seeded sample of the same mix. The
faults are those a real deployment produces (``outcomes.py`` says what each one means):
refusals and resets before the request is read, 5xx answered without forwarding (500 included:
before the commit), 5xx answered after the server committed, lost replies, replies that never
come, and requests that reach the server only after the client gave up waiting.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.cache import EntryState
from balsam_sync.client import Client
from balsam_sync.errors import NoEvidence, ServerError
from balsam_sync.remote.outcomes import RetryPolicy
from balsam_sync.resources import MARKER_KEY
from balsam_sync.testing.faultproxy import FaultPlan, FaultProxy
from tests.conftest import User, server_jobs
from tests.mirror_view import held

FULL = os.environ.get("BALSAM_SYNC_FULL") == "1"
R1_MUTATIONS = 10_000 if FULL else 1_200
R1_FLAKY_PUSHES = 200 if FULL else 40
QUICK = RetryPolicy(attempts=3, max_seconds=3, initial_wait=0.01, max_wait=0.05)
FLAKY = FaultPlan(
    refuse=0.08,
    reset_before=0.04,
    timeout=0.04,
    lost_reply=0.08,
    http_5xx=0.05,
    http_5xx_after=0.06,
    hang_after=0.04,
    delay=0.04,
    delay_seconds=1.5,  # longer than the read timeout: the request commits after we gave up
    hang_seconds=1.5,
    status_codes=(500, 502, 503, 504),
    after_status_codes=(500, 502, 504),
)


@pytest.fixture
def link(balsam_server: str) -> Iterator[FaultProxy]:
    with FaultProxy(balsam_server, seed=20261126) as proxy:
        yield proxy


def flaky_client(user: User, proxy: FaultProxy, home: Path) -> Client:
    # No back-off after a failure, so that every write meets the faults; a request may take
    # the server up to 4 s (a late commit arrives 1.5 s after it was sent).
    return balsam_sync.connect(
        proxy.url,
        user.token,
        home=str(home),
        retry=QUICK,
        read_timeout=1.0,
        connect_timeout=1.0,
        retry_backoff=0.0,
        max_request_seconds=4.0,
    )


def drain(client: Client, proxy: FaultProxy, flaky_pushes: int = 0) -> int:
    """Push on the flaky link ``flaky_pushes`` times (or until the outbox is empty), then heal
    the link and push until it is; return how many flaky pushes it took."""
    for done in range(flaky_pushes):
        if client.push().remaining == 0:
            return done + 1
    proxy.plan = FaultPlan()
    for _ in range(20):
        report = client.push()
        if report.remaining == 0:
            return flaky_pushes
    raise AssertionError(f"outbox not drained: {client.status(check_server=False)}")


def test_r1_mixed_mutations_on_a_flaky_link_end_as_intended(
    user: User, link: FaultProxy, tmp_path: Path
) -> None:
    rng = random.Random(1126)
    setup = flaky_client(user, link, tmp_path / "setup")
    site = setup.Site.objects.create(name="r1", path="/r1")
    app = setup.App.objects.create(
        site_id=site.id, name="R1", serialized_class="-", source_code="-"
    )
    setup.close()

    client = flaky_client(user, link, tmp_path / "home")
    link.plan = FLAKY
    Job = client.Job
    intent: dict[str, dict[str, Any]] = {}  # workdir -> expected fields; absent = deleted
    live: list[Any] = []
    done = Counter[str]()
    while sum(done.values()) < R1_MUTATIONS:
        kind = rng.choices(["create", "dag", "update", "query", "delete"], [5, 1, 3, 1, 1])[0]
        if kind in ("create", "dag") or len(live) < 20:
            parents = [rng.choice(live)] if kind == "dag" and live else []
            batch = [
                Job(
                    workdir=f"r1/{uuid.uuid4().hex[:10]}",
                    app_id=app.id,
                    tags={"grp": str(rng.randrange(10))},
                    parent_ids=[p.id for p in parents],
                )
                for _ in range(rng.randint(1, 40))
            ]
            Job.objects.bulk_create(batch)
            for job in batch:
                intent[str(job.workdir)] = {
                    "num_nodes": 1,
                    "grp": job.tags["grp"],
                    "parents": parents,
                }
            live += batch
            done["create"] += len(batch)
        elif kind == "update":
            job = rng.choice(live)
            job.num_nodes = rng.randint(2, 64)
            job.save()
            intent[str(job.workdir)]["num_nodes"] = job.num_nodes
            done["update"] += 1
        elif kind == "query":
            grp = str(rng.randrange(10))
            try:
                n = Job.objects.filter(tags={"grp": grp}).update(state="RESTART_READY")
            except (NoEvidence, ServerError):
                # The server could not say which jobs match (its read failed) and the mirror
                # cannot tell either: the call raised and queued nothing (checked below).
                done["query_refused"] += 1
                continue
            for fields in intent.values():
                if fields["grp"] == grp:
                    fields["state"] = "RESTART_READY"
            done["query_update"] += n
        else:
            job = live.pop(rng.randrange(len(live)))
            intent.pop(str(job.workdir))
            job.delete()
            done["delete"] += 1

    # Writes queue while a create's outcome is unknown (up to max_request_seconds), so most
    # of the replay happens here: explicit pushes, still on the flaky link.
    pushes = drain(client, link, flaky_pushes=R1_FLAKY_PUSHES)
    rows = server_jobs(user)
    by_workdir = Counter(r["workdir"] for r in rows)
    by_marker = Counter(r["tags"].get(MARKER_KEY) for r in rows)
    duplicates = sum(n - 1 for n in by_workdir.values() if n > 1)
    print(
        f"\nR1: {sum(done.values())} mutations {dict(done)}; {pushes} pushes on the flaky link; "
        f"faults {link.stats.faults}; "
        f"server jobs {len(rows)}, intended {len(intent)}, duplicates {duplicates}"
    )
    faults = link.stats.faults
    kinds = ("lost_reply", "refuse", "http_5xx", "http_5xx_after", "hang_after", "delay")
    assert all(faults[kind] > 0 for kind in kinds), faults
    assert duplicates == 0
    # Once settled, a push takes the creation tag off: upstream's tools see the user's tags.
    assert set(by_marker) == {None}
    assert set(by_workdir) == set(intent), "lost or resurrected jobs"
    server = {r["workdir"]: r for r in rows}
    for workdir, fields in intent.items():
        row = server[workdir]
        assert row["num_nodes"] == fields["num_nodes"], workdir
        assert row["tags"]["grp"] == fields["grp"], workdir
        if "state" not in fields:
            assert row["state"] != "RESTART_READY", (workdir, "a refused update was applied")
        if "state" in fields:
            local = client.Job.objects.offline().filter(workdir__contains=workdir)
            assert row["state"] == "RESTART_READY", (
                workdir,
                row,
                [j.to_dict() for j in local],
                fields,
            )
        parent_ids = {
            server[str(p.workdir)]["id"] for p in fields["parents"] if str(p.workdir) in server
        }
        assert parent_ids <= set(row["parent_ids"]), workdir
    dead = [(d.resource, d.op.value, d.status, d.error) for d in client.dead_letters()]
    assert dead == []
    client.close()


def test_r5_a_refusal_becomes_a_dead_letter_and_later_work_goes_on(
    user: User, link: FaultProxy, tmp_path: Path, app: Any
) -> None:
    client = flaky_client(user, link, tmp_path / "home")
    kept = client.Job.objects.create(workdir="r5/kept", app_id=app.id)
    link.set_down(True)
    kept.num_nodes = 8
    kept.save()  # queued
    doomed = client.Job(workdir="r5/doomed", app_id=app.id)
    doomed.save()  # queued; its App will be gone when it is replayed
    doomed_site = client.Site.objects.create(name="r5-dup", path="/r5")  # queued
    later = client.Job(workdir="r5/later", app_id=kept.app_id)
    later.save()
    assert doomed.id < 0 and later.id < 0 and doomed_site.id < 0

    # Meanwhile, elsewhere: the App of the doomed job is replaced, and the site name taken.
    other = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "other"))
    other.Site.objects.create(name="r5-dup", path="/elsewhere")
    link.set_down(False)
    report = client.push()
    assert report.dead == 1, report
    dead = client.dead_letters()
    assert [(d.resource, d.op.value) for d in dead] == [("Site", "create")]
    assert dead[0].status == 400 and "already exists" in (dead[0].error or "")
    # later, independent entries were delivered
    assert later.id > 0 and kept.num_nodes == 8
    on_server = {r["workdir"]: r for r in server_jobs(user)}
    assert on_server["r5/kept"]["num_nodes"] == 8 and "r5/later" in on_server
    # the mirror holds the server's truth: the refused site's provisional row is gone
    assert all(s.id > 0 for s in held(client.Site.objects.all()))
    client.transport.timeout = (1.0, 60.0)  # a pull's large pages may take a loaded server >1 s
    client.pull()
    names = sorted(s.name for s in client.Site.objects.offline())
    assert names == sorted(s.name for s in other.Site.objects.online())
    assert client.discard_dead(dead[0].seq)
    assert client.status(check_server=False).dead == 0
    assert client.mirror.queued([EntryState.DEAD]) == []
    other.close()
    client.close()

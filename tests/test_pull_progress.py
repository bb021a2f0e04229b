"""Progress that tells the truth: every phase of a pull reports a total, and what syncing cost.

A first pull of an account whose jobs are mostly unfinished lists every transfer item and
event: their totals come from the server's count, asked before the rows. An incremental pull
reads the children of the changed jobs by job: that phase counts jobs, out of a known total.
The daemon logs what each round cost (requests, bytes, server time), and a push counts its
requests and bytes as a pull does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.cli.progress import Bars
from balsam_sync.client import Client
from balsam_sync.sync.children import JOBS_PHASE
from tests.conftest import FAST_RETRY, User
from tests.site_agent import Rest, make_account

Call = tuple[str, int, int | None]


def recorded_pull(client: Client, **options: Any) -> tuple[Any, list[Call]]:
    calls: list[Call] = []
    report = client.pull(progress=lambda r, n, t: calls.append((r, n, t)), **options)
    return report, calls


def of(calls: list[Call], name: str) -> list[Call]:
    return [c for c in calls if c[0] == name]


@pytest.fixture
def account(user: User, tmp_path: Path) -> tuple[Client, Rest, int]:
    """A fresh client and an account of 40 unfinished jobs, each with two transfer items."""
    rest = Rest(user.api_root, user.token)
    _, app_id = make_account(rest, n_jobs=40, n_batch_jobs=2)
    c = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "m"), retry=FAST_RETRY)
    return c, rest, app_id


def test_every_phase_of_a_first_pull_has_a_total_asked_before_its_rows(
    account: tuple[Client, Rest, int],
) -> None:
    client, rest, _ = account
    server = {
        "TransferItem": len(rest.rows("/transfers/")),
        "EventLog": len(rest.rows("/events/")),
    }
    assert server["TransferItem"] == 80 and server["EventLog"] >= 40
    _, calls = recorded_pull(client)
    for name in ("Job", "Site", "App", "BatchJob", "TransferItem", "EventLog"):
        seen = of(calls, name)
        assert seen and all(total is not None for _, _, total in seen), (name, seen)
    assert of(calls, "Job")[-1] == ("Job", 40, 40)
    for name, total in server.items():
        seen = of(calls, name)
        assert seen[0] == (name, 0, total)  # the count came first: a total before any row
        assert seen[-1] == (name, total, total)
    client.close()


def test_an_incremental_pull_counts_the_changed_jobs_it_reads_the_children_of(
    account: tuple[Client, Rest, int],
) -> None:
    client, rest, _ = account
    client.pull()
    jobs = rest.rows("/jobs/")
    changed = [j["id"] for j in jobs[:7]]
    rest.call("PATCH", "/jobs/", json=[{"id": i, "data": {"v": 1}} for i in changed])
    _, calls = recorded_pull(client)
    listed = of(calls, "Job")  # the jobs stamped since the watermark (its overlap included)
    assert listed and all(t is not None for _, _, t in listed) and listed[-1][1] == listed[-1][2]
    phase = of(calls, JOBS_PHASE)
    assert phase and all(total is not None for _, _, total in phase)
    assert phase[-1][1:] == (len(changed), len(changed))
    client.close()


def test_reports_say_what_a_pull_and_a_push_cost(user: User, tmp_path: Path) -> None:
    c = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "m"), retry=FAST_RETRY)
    try:
        site = c.Site.objects.create(name=f"cost-{tmp_path.name[-6:]}", path="/projects/cost")
        pulled = c.pull()
        assert pulled.requests >= 3 and pulled.bytes > 0 and pulled.seconds > 0
        offline = balsam_sync.connect(
            user.api_root, user.token, home=str(tmp_path / "m"), offline=True
        )
        app = offline.App(site_id=site.id, name="Queued", serialized_class="t", source_code="x")
        app.save()
        offline.close()
        pushed = c.push()
        assert pushed.sent == 1
        assert pushed.requests >= 1 and pushed.bytes > 0 and pushed.seconds > 0
    finally:
        c.close()


def test_the_daemon_logs_what_each_round_cost(
    user: User, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "m"), retry=FAST_RETRY)
    try:
        with caplog.at_level(logging.INFO, logger="balsam_sync.sync.daemon"):
            c.daemon().round()
    finally:
        c.close()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("round ")]
    assert "requests" in line and "bytes" in line and "server time" in line, line
    requests = int(line.split(" requests")[0].rsplit(" ", 1)[-1])
    assert requests >= 3, line  # an idle pull asks for several resources


def test_bars_show_totals_and_the_jobs_phase_in_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    with Bars(True) as bars:
        bars("Job", 0, 30)
        bars("Job", 12, 30)
        bars("TransferItem", 5, None)
        bars(JOBS_PHASE, 3, 8)
        bars("Job", 30, 30)
        bars("TransferItem", 9, None)  # a bar opened earlier still counts
    shown = capsys.readouterr().err.replace("\r", "\n")
    assert "pulling Job" in shown and "30/30" in shown
    by_job = [line for line in shown.splitlines() if "by job" in line]
    assert "3/8 [" in by_job[-1] and "jobs/s" in by_job[-1]  # a total, a rate, time left
    items = [line for line in shown.splitlines() if "pulling TransferItem:" in line]
    assert "9 rows" in items[-1]

"""Several processes on one mirror lose nothing: writers, the daemon, CLI pulls, a kill -9.

Writers (tests/stress_writer.py) create jobs and change them many times; some rounds run
offline, so the daemon sends their creates while the writer keeps saving the same objects
under their provisional ids, then the writer goes online with them. The daemon runs at 1 s,
``balsam-sync pull`` runs every few seconds from a shell loop, and one writer is killed -9 in
the middle of a round and started again at once. Afterwards every intended value must be on
the server, each job once, with no dead letter and no object reverted after a ``save()``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from tests.conftest import FAST_RETRY, User, server_jobs
from tests.test_crash import FULL, env_for

WRITERS = 4
ROUNDS = 3
JOBS = 40 if FULL else 16
SAVES = 250 if FULL else 100


def _writer(env: dict[str, str], name: str, app_id: int, seed: int, log: Path) -> Any:
    args = [name, str(ROUNDS), str(JOBS), str(SAVES), str(app_id), str(seed), str(log)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stress_writer", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _intended(logs: list[Path]) -> tuple[dict[str, set[int]], set[str], set[str], list[str]]:
    """From the writers' logs: the values each job may end with, the workdirs certainly and
    possibly created, and the reverted objects.

    A call that returned fixes the value (later calls replace it); a call cut short by the
    kill may or may not have been applied, so its value is allowed too.
    """
    allowed: dict[str, set[int]] = {}
    created: set[str] = set()
    maybe: set[str] = set()
    reverted: list[str] = []
    for log in logs:
        last_done: dict[str, int] = {}
        open_call: dict[str, int] = {}
        for line in log.read_text().splitlines():
            if not line.endswith("}"):
                continue  # the line the kill cut short: that call was never made
            rec = json.loads(line)
            if rec["op"] == "create":
                (created if rec["done"] else maybe).update(rec["workdirs"])
                for w in rec["workdirs"]:
                    last_done.setdefault(w, 1)
            elif rec["op"] == "save" and rec["done"]:
                last_done[rec["workdir"]] = rec["value"]
                open_call.pop(rec["workdir"], None)
            elif rec["op"] == "save":
                open_call[rec["workdir"]] = rec["value"]
            elif rec["op"] == "reverted":
                reverted.append(line)
        for workdir, value in last_done.items():
            allowed[workdir] = {value} | ({open_call[workdir]} if workdir in open_call else set())
    return allowed, created, maybe - created, reverted


def audit(
    user: User, logs: list[Path], dead: list[Any], still_queued: Any
) -> tuple[dict[str, Any], str]:
    """What went wrong, by kind, comparing the server's jobs with what the writers' logs say
    was intended; and a one-line summary for the test's output."""
    allowed, created, maybe, reverted = _intended(logs)
    rows = server_jobs(user)
    on_server: dict[str, list[int]] = {}
    for row in rows:
        on_server.setdefault(row["workdir"], []).append(row["num_nodes"])
    wrong = {w: (v[0], sorted(allowed[w])) for w, v in on_server.items() if v[0] not in allowed[w]}
    problems = {
        "dead letters": dead,
        "still queued": still_queued,
        "reverted after save()": reverted,
        "duplicated": {w: v for w, v in on_server.items() if len(v) > 1},
        "lost": sorted(created - set(on_server)),
        "never intended": sorted(set(on_server) - created - maybe),
        "wrong final value (server, allowed)": wrong,
    }
    summary = f"{len(created)} jobs created, {len(rows)} on the server, {len(reverted)} reverted"
    return problems, summary


def _wait_for_lines(log: Path, n: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("\n") >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"{log} did not reach {n} lines")


@pytest.mark.slow
def test_writers_daemon_and_cli_pulls_on_one_mirror_lose_nothing(
    user: User, app: Any, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = {**env_for(user, home), "BALSAM_SYNC_MAX_REQUEST_SECONDS": "10"}
    rng = random.Random(16)
    daemon_log = tmp_path / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "balsam_sync.cli", "daemon", "--interval", "1"]
        + ["--log-file", str(daemon_log)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pulls = subprocess.Popen(
        ["bash", "-c", f"while true; do {sys.executable} -m balsam_sync.cli pull; sleep 3; done"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    logs = [tmp_path / f"w{k}.log" for k in range(WRITERS)]
    writers = [_writer(env, f"w{k}", app.id, k, logs[k]) for k in range(WRITERS)]
    try:
        # Kill one writer in the middle of its work, then start it again at once (a new name:
        # its killed round's objects are judged by the first log).
        _wait_for_lines(logs[0], rng.randint(ROUNDS * SAVES // 3, ROUNDS * SAVES))
        writers[0].send_signal(signal.SIGKILL)
        writers[0].wait(timeout=30)
        logs.append(tmp_path / "w0b.log")
        writers[0] = _writer(env, "w0b", app.id, 100, logs[-1])
        for w in writers:
            _out, err = w.communicate(timeout=900)
            assert w.returncode == 0, err.decode()[-3000:]
    finally:
        os.killpg(pulls.pid, signal.SIGKILL)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    client = balsam_sync.connect(
        user.api_root, user.token, home=str(home), retry=FAST_RETRY, max_request_seconds=10
    )
    report = client.push()
    status = client.status(check_server=False)
    dead = [(e.resource, e.op.value, e.obj_id, e.error) for e in client.dead_letters()]
    client.close()
    problems, summary = audit(user, logs, dead, status.pending + report.remaining)
    print(f"\nstress: {summary}, push {report}")
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}

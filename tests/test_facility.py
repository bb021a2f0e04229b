"""A facility's login nodes on one machine: the queue follows the user through all of it.

Three "nodes" (each its own node-local folder and name) share one home folder. Writer
processes run on every node at once (tests/stress_writer.py: creates, then many changes, some
rounds offline), the daemon runs on one node, ``balsam-sync pull`` loops on another and
``balsam-sync push`` on the third; the daemon is killed -9 in the middle and started again,
and one node's local folder is deleted while its writers run (a purge). Afterwards every
intended value is on the server, once, and every node's ``status`` says nothing is left.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import User
from tests.test_nodes import node, node_env
from tests.test_stress import _wait_for_lines, audit

NODES = ("login-a", "login-b", "login-c")
ROUNDS, JOBS, SAVES = 2, 12, 60


def _writer(env: dict[str, str], name: str, app_id: int, seed: int, log: Path) -> Any:
    args = [name, str(ROUNDS), str(JOBS), str(SAVES), str(app_id), str(seed), str(log)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stress_writer", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _cli_loop(env: dict[str, str], command: str, pause: float) -> Any:
    python = sys.executable
    return subprocess.Popen(
        [
            "bash",
            "-c",
            f"while true; do {python} -m balsam_sync.cli {command}; sleep {pause}; done",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _daemon(env: dict[str, str], log: Path) -> Any:
    return subprocess.Popen(
        [sys.executable, "-m", "balsam_sync.cli", "daemon", "--interval", "1"]
        + ["--log-file", str(log)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_writers_on_three_nodes_a_purge_and_a_killed_daemon_lose_nothing(
    user: User, app: Any, tmp_path: Path
) -> None:
    rng = random.Random(20)
    envs = {n: node_env(user, tmp_path, n, BALSAM_SYNC_MAX_REQUEST_SECONDS="10") for n in NODES}
    envs["login-a"]["BALSAM_SYNC_LEASE_SECONDS"] = "6"
    logs: list[Path] = []
    writers = []
    for i, n in enumerate(NODES):
        for k in range(2):
            logs.append(tmp_path / f"{n}-w{k}.log")
            writers.append(_writer(envs[n], f"{n}/w{k}", app.id, 10 * i + k, logs[-1]))
    daemon = _daemon(envs["login-a"], tmp_path / "daemon.log")
    loops = [
        _cli_loop(envs["login-b"], "pull", 3),
        _cli_loop(envs["login-c"], "push", 2),
    ]
    try:
        _wait_for_lines(logs[0], rng.randint(SAVES // 2, SAVES))
        daemon.send_signal(signal.SIGKILL)  # a sender killed mid-round
        daemon.wait(timeout=30)
        daemon = _daemon(envs["login-a"], tmp_path / "daemon.log")
        _wait_for_lines(logs[4], rng.randint(SAVES // 2, SAVES))
        shutil.rmtree(tmp_path / "login-c", ignore_errors=True)  # the node's scratch is purged
        for w in writers:
            _out, err = w.communicate(timeout=900)
            assert w.returncode == 0, err.decode()[-3000:]
    finally:
        for loop in loops:
            os.killpg(loop.pid, signal.SIGKILL)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    final = node(user, tmp_path, "login-b", max_request_seconds=10)
    report = final.push()
    dead = [(e.resource, e.op.value, e.obj_id, e.error) for e in final.dead_letters()]
    final.close()
    pending = {}
    for n in NODES:
        c = node(user, tmp_path, n, offline=True)
        pending[n] = c.status(check_server=False).pending
        c.close()
    still_queued = {n: p for n, p in pending.items() if p}
    problems, summary = audit(user, logs, dead, still_queued)
    print(f"\nfacility: {summary} on {len(NODES)} nodes, final push {report}")
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}

"""Crashes and concurrency: kill -9 of the daemon mid-replay (R2); writers + daemon (R3).

R2 also kills a pusher right after its POST reached the server (0-500 ms later, while the
server is still creating the jobs) and pushes again at once: the second push must wait for
the first POST's outcome instead of sending the jobs a second time.

``BALSAM_SYNC_FULL=1`` runs the full counts (R2: 50 rounds + 20 kills after sending; R3: 4
writers x 500 jobs); CI runs the same seeded scenario with fewer rounds and jobs.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.testing.faultproxy import FaultProxy
from tests.conftest import FAST_RETRY, User, server_jobs

FULL = os.environ.get("BALSAM_SYNC_FULL") == "1"
R2_ROUNDS = 50 if FULL else 5  # each round kills a daemon mid-replay
R2_JOBS = 3000 if FULL else 600
R2_SEND_ROUNDS = 20 if FULL else 5
R2_SEND_JOBS = 2500
R3_WRITERS = 4
R3_JOBS = 500 if FULL else 60
ROOT = Path(__file__).resolve().parents[1]


def env_for(user: User, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALSAM_SYNC")}
    env.update(
        BALSAM_SYNC_API_ROOT=user.api_root,
        BALSAM_SYNC_TOKEN=user.token,
        BALSAM_SYNC_HOME=str(home),
        PYTHONPATH=str(ROOT),
    )
    return env


def server_workdirs(user: User) -> Counter[str]:
    return Counter(r["workdir"] for r in server_jobs(user))


def daemon(env: dict[str, str], log: Path, batch: int) -> subprocess.Popen[bytes]:
    """Start ``balsam-sync daemon`` and return once it runs its loop (its log says so)."""
    before = log.read_text().count("daemon started") if log.exists() else 0
    cmd = [sys.executable, "-m", "balsam_sync.cli", "daemon", "--interval", "0.1"]
    cmd += ["--batch-size", str(batch), "--log-file", str(log)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("daemon started") > before:
            return proc
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"daemon exited with {proc.returncode}: {err}")
        time.sleep(0.02)
    raise AssertionError("daemon did not start within 60 s")


def pending(home: Path, user: User) -> int:
    c = balsam_sync.connect(user.api_root, user.token, home=str(home), offline=True)
    try:
        return c.status(check_server=False).pending
    finally:
        c.close()


def wait_for_progress(home: Path, user: User, below: int) -> None:
    """Return once at most ``below`` changes (at least one) are left unacknowledged."""
    watcher = balsam_sync.connect(user.api_root, user.token, home=str(home), offline=True)
    try:
        deadline = time.monotonic() + 60
        while watcher.status(check_server=False).pending > max(below, 1):
            assert time.monotonic() < deadline, "the daemon made no progress within 60 s"
            time.sleep(0.005)
    finally:
        watcher.close()


def test_r2_kill_9_during_replay_loses_and_duplicates_nothing(
    user: User, app: Any, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    offline = balsam_sync.connect(user.api_root, user.token, home=str(home), offline=True)
    jobs = [offline.Job(workdir=f"r2/{i}", app_id=app.id) for i in range(R2_JOBS)]
    offline.Job.objects.bulk_create(jobs)
    offline.close()
    rng = random.Random(2026)
    # Batches of at most 25 jobs commit within a second: a create in flight when its daemon
    # was killed is resent after 10 s, not the default 120 s (what the final push waits).
    env = {**env_for(user, home), "BALSAM_SYNC_MAX_REQUEST_SECONDS": "10"}
    kills, progress = 0, [R2_JOBS]
    for _ in range(R2_ROUNDS):
        batch = rng.choice([5, 10, 25])
        proc = daemon(env, tmp_path / "daemon.log", batch=batch)
        # Killed once the server has acknowledged 1-3 of its batches, however fast this
        # machine is: the daemon dies with the queue half sent (a fixed delay let a fast
        # daemon finish first).
        wait_for_progress(home, user, below=progress[-1] - rng.randint(1, 3) * batch)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        progress.append(pending(home, user))
    client = balsam_sync.connect(
        user.api_root, user.token, home=str(home), retry=FAST_RETRY, max_request_seconds=10
    )
    report = client.push()
    seen = server_workdirs(user)
    print(
        f"\nR2: {R2_ROUNDS} rounds, {kills} kill -9 (pending after each: {progress}), "
        f"final push {report}, jobs {sum(seen.values())}"
    )
    assert report.remaining == 0 and client.status(check_server=False).dead == 0
    assert sum(seen.values()) == R2_JOBS, "lost or duplicated jobs"
    assert set(seen) == {f"r2/{i}" for i in range(R2_JOBS)}
    assert max(seen.values()) == 1
    assert kills >= R2_ROUNDS // 2
    killed_mid_replay = sum(1 for a, b in itertools.pairwise(progress) if 0 < b < a)
    assert killed_mid_replay >= 2, progress  # the daemon died with work half done, repeatedly
    client.close()


PUSHER = "import balsam_sync; balsam_sync.connect().push()"


def test_r2_kill_9_right_after_the_post_reached_the_server_duplicates_nothing(
    user: User, app: Any, tmp_path: Path
) -> None:
    rng = random.Random(8)
    home = tmp_path / "home"
    before_commit, delays = 0, []
    with FaultProxy(user.api_root) as proxy:
        env = {**env_for(user, home), "BALSAM_SYNC_API_ROOT": proxy.url}
        for r in range(R2_SEND_ROUNDS):
            queued = balsam_sync.connect(proxy.url, user.token, home=str(home), offline=True)
            jobs = [queued.Job(workdir=f"k{r}/{i}", app_id=app.id) for i in range(R2_SEND_JOBS)]
            queued.Job.objects.bulk_create(jobs)
            queued.close()
            proxy.reset_stats()
            pusher = subprocess.Popen([sys.executable, "-c", PUSHER], env=env)
            assert proxy.wait_forwarded("POST", "/jobs/", timeout=60), "the POST never left"
            delays.append(round(rng.uniform(0.0, 0.5), 3))
            time.sleep(delays[-1])
            pusher.send_signal(signal.SIGKILL)
            pusher.wait(timeout=30)
            before_commit += sum(1 for w in server_workdirs(user) if w.startswith(f"k{r}/")) == 0
            again = balsam_sync.connect(
                proxy.url, user.token, home=str(home), retry=FAST_RETRY, max_request_seconds=60
            )
            report = again.push()  # at once: the killed POST may still be running
            again.close()
            assert report.remaining == 0 and report.dead == 0, report
            seen = Counter(w for w in server_workdirs(user).elements() if w.startswith(f"k{r}/"))
            assert seen == Counter({f"k{r}/{i}": 1 for i in range(R2_SEND_JOBS)}), (r, report)
    print(
        f"\nR2 kills right after sending: {R2_SEND_ROUNDS} rounds of {R2_SEND_JOBS} jobs, killed "
        f"{delays} s after the POST reached the server; {before_commit} before the server "
        f"had committed; no job lost or duplicated"
    )
    assert before_commit >= 1  # the race the settling exists for did happen


WRITER = textwrap.dedent(
    """
    import sys, balsam_sync
    from balsam_sync.remote.retry import RetryPolicy
    name, n, app_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    c = balsam_sync.connect(retry=RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05))
    for i in range(n):
        job = c.Job.objects.create(workdir=f"r3/{name}/{i}", app_id=app_id)
        if i % 3 == 0:
            job.num_nodes = 2
            job.save()
        if i % 10 == 0:
            c.Job.objects.filter(workdir__contains=f"r3/{name}/").count()
    print("ok", name)
    """
)


def test_r3_writers_and_a_daemon_share_one_mirror_without_lock_errors(
    user: User, app: Any, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = env_for(user, home)
    proc = daemon(env, tmp_path / "daemon.log", batch=20)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, f"w{k}", str(R3_JOBS), str(app.id)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(R3_WRITERS)
    ]
    outputs = [w.communicate(timeout=600) for w in writers]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    for w, (_out, err) in zip(writers, outputs, strict=True):
        assert w.returncode == 0, err[-3000:]
        assert "locked" not in err.lower(), err[-3000:]
    client = balsam_sync.connect(user.api_root, user.token, home=str(home), retry=FAST_RETRY)
    assert client.push().remaining == 0
    seen = server_workdirs(user)
    expected = {f"r3/w{k}/{i}" for k in range(R3_WRITERS) for i in range(R3_JOBS)}
    print(f"\nR3: {R3_WRITERS} writers x {R3_JOBS} jobs + daemon: {sum(seen.values())} on server")
    assert set(seen) == expected and max(seen.values()) == 1
    nodes = {str(j.workdir): j.num_nodes for j in client.Job.objects.online()}
    assert all(nodes[f"r3/w{k}/{i}"] == 2 for k in range(R3_WRITERS) for i in range(0, R3_JOBS, 3))
    client.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_daemon_exits_cleanly(user: User, app: Any, tmp_path: Path, signum: int) -> None:
    env = env_for(user, tmp_path / "home")
    proc = daemon(env, tmp_path / "daemon.log", batch=10)
    time.sleep(0.3)
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == 0
    assert b"Traceback" not in (proc.stderr.read() if proc.stderr else b"")

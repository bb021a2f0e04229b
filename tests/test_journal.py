"""The user's queue folder on its own (no server): records, their order, id blocks, the lease.

Several journals on one folder stand for several login nodes sharing a home folder.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from balsam_sync.cache.journal import Journal, SenderLock, _Lease
from balsam_sync.cache.lock import FileLock


def test_a_record_is_whole_once_published_and_read_back_in_order(tmp_path: Path) -> None:
    a, b = Journal(tmp_path / "q", "login-a"), Journal(tmp_path / "q", "login-b")
    first = a.publish("queued", {"entries": [{"obj": -1}]})
    second = b.publish("state", {"to": "done", "uids": [f"{first}#0"]})
    assert a.names() == [first, second] == b.names()
    rec = b.read(first)
    assert rec is not None and (rec.kind, rec.node, rec.body) == (
        "queued",
        "login-a",
        {"entries": [{"obj": -1}]},
    )
    assert list((tmp_path / "q" / "tmp").iterdir()) == []  # nothing half-written is left


def test_a_change_made_after_another_was_seen_sorts_after_it_whatever_the_clocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ahead = Journal(tmp_path / "q", "login-a")
    first = ahead.publish("queued", {"entries": []})
    behind = Journal(tmp_path / "q", "login-b")
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() - 3600 * 10**9)  # an hour behind
    assert behind.read(first) is not None  # B sees A's change...
    later = behind.publish("queued", {"entries": []})
    assert behind.names() == [first, later]  # ...so its own sorts after it


def test_records_that_are_not_whole_are_skipped_not_fatal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "q", "login-a")
    good = journal.publish("queued", {"entries": []})
    bad = good.replace(journal.node, "login-x")
    (tmp_path / "q" / "new" / bad).write_text('{"kind": "que')  # another writer's damage
    (tmp_path / "q" / "new" / "notes.txt").write_text("not a record")
    assert set(journal.names()) == {good, bad}
    assert journal.read(bad) is None and journal.read(good) is not None


def test_provisional_id_blocks_are_never_shared_by_two_mirrors(tmp_path: Path) -> None:
    journals = [Journal(tmp_path / "q", f"login-{i}") for i in range(8)]
    taken: list[int] = []
    lock = threading.Lock()

    def take(j: Journal) -> None:
        for _ in range(5):
            block = j.take_id_block()
            with lock:
                taken.append(block)

    threads = [threading.Thread(target=take, args=(j,)) for j in journals]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == list(range(40))


def _sender(tmp: Path, node: str) -> tuple[Journal, SenderLock]:
    journal = Journal(tmp / "q", node)
    return journal, journal.sender(FileLock(tmp / f"{node}.replay.lock"))


def test_one_node_sends_at_a_time(tmp_path: Path) -> None:
    _, a = _sender(tmp_path, "login-a")
    _, b = _sender(tmp_path, "login-b")
    assert a.acquire(1.0)
    assert not b.acquire(0.3)
    assert a.still_held()
    a.release()
    assert b.acquire(1.0)
    b.release()


def _plant_lease(tmp: Path, holder: str, age: float) -> Path:
    lease = tmp / "q" / "lease"
    lease.write_text(holder)
    then = time.time() - age
    os.utime(lease, (then, then))
    return lease


def test_a_lease_whose_process_died_on_this_node_is_taken_over_at_once(tmp_path: Path) -> None:
    _, a = _sender(tmp_path, "login-a")
    _plant_lease(tmp_path, "login-a 999999999 deadbeef", age=0)  # no such process
    assert a.acquire(0.5)
    a.release()


def test_another_nodes_lease_is_taken_over_only_once_stale_by_the_file_servers_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BALSAM_SYNC_LEASE_SECONDS", "5")
    _, b = _sender(tmp_path, "login-b")
    _plant_lease(tmp_path, "login-a 1 fresh", age=1)  # renewed a second ago, on another node
    assert not b.acquire(0.5)
    lease = _plant_lease(tmp_path, "login-a 1 gone", age=30)  # not renewed for 30 s
    assert b.acquire(0.5)
    assert "login-b" in lease.read_text()
    b.release()
    assert not lease.exists()


def test_a_taker_that_finds_a_fresh_lease_puts_it_back(tmp_path: Path) -> None:
    journal, _ = _sender(tmp_path, "login-b")
    lease = _plant_lease(tmp_path, "login-c 1 fresh", age=0)
    late = _Lease(journal)
    late._take_over("login-a 1 gone")  # judged stale a moment ago, replaced since
    assert lease.read_text() == "login-c 1 fresh"


def test_a_published_queue_records_only_what_it_is_given(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "q", "login-a")
    name = journal.publish("queued", {"entries": [{"payload": {"k": "v"}}]})
    raw = json.loads((tmp_path / "q" / "new" / name).read_text())
    assert raw == {"kind": "queued", "node": "login-a", "entries": [{"payload": {"k": "v"}}]}
    assert oct((tmp_path / "q" / "new" / name).stat().st_mode & 0o777) == "0o600"

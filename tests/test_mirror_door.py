"""The mirror's front door, against a throw-away mirror (no server).

Callers tell the mirror what happened — the server answered these rows, the user created,
changed or deleted these objects, the server confirmed or refused a queued change, withdraw
this change, revive this dead letter — and it applies every consequence in one transaction:
rows, the overlay of changes still queued, coverage, provisional ids. These tests say what
happened through ``balsam_sync.cache.Mirror`` and look only at what it answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from balsam_sync.cache import EntryState, Identity, Mirror, Op, QueueCounts, open_mirror
from balsam_sync.errors import NoEvidence
from balsam_sync.resources import RESOURCES, Row
from balsam_sync.spec import QuerySpec
from tests.server_rows import server_row

IDENTITY = Identity("http://127.0.0.1:9", "alice")
T1 = "2025-05-01T12:00:00.000000+00:00"
T2 = "2025-05-01T12:00:05.000000+00:00"
T3 = "2025-05-01T12:00:09.000000+00:00"
PENDING = [EntryState.PENDING]


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    m = open_mirror(tmp_path / "home", IDENTITY)
    yield m
    m.close()


@pytest.fixture
def account(mirror: Mirror) -> Mirror:
    """A site (1) with an app (2), jobs 3 and 4 of that app, an event and a transfer item of
    job 3, and a batch job (5) job 4 ran in: as a pull leaves them."""
    mirror.server_rows("Site", [server_row("Site", id=1, name="s", path="/projects/s")])
    mirror.server_rows("App", [server_row("App", id=2, site_id=1)])
    mirror.server_rows("BatchJob", [server_row("BatchJob", id=5, site_id=1)])
    mirror.server_rows(
        "Job",
        [
            server_row("Job", id=3, app_id=2, workdir="w/3", last_update=T1),
            server_row("Job", id=4, app_id=2, workdir="w/4", last_update=T1, batch_job_id=5),
        ],
    )
    mirror.server_rows("EventLog", [server_row("EventLog", id=6, job_id=3)])
    mirror.server_rows("TransferItem", [server_row("TransferItem", id=7, job_id=3)])
    return mirror


def payload(resource: str, **fields: Any) -> Row:
    """A create payload as a model sends it (validated by the wire schema)."""
    schema = RESOURCES[resource].create
    assert schema is not None
    wire: Row = schema.model_validate(fields).model_dump(mode="json")
    return wire


def one(mirror: Mirror, resource: str, obj_id: int) -> Row | None:
    (row,) = mirror.current(resource, [obj_id])
    return row


def pending(mirror: Mirror) -> list[tuple[str, Op, int, Row]]:
    return [(e.resource, e.op, e.obj_id, e.payload) for e in mirror.queued(PENDING)]


def ids(mirror: Mirror, resource: str, **filters: Any) -> list[int]:
    return mirror.ids(QuerySpec(resource).with_filters(filters))


# -- what the user changed -------------------------------------------------------------------


def test_a_created_object_shows_at_once_with_a_provisional_id_and_is_queued(
    account: Mirror,
) -> None:
    made = account.user_created("Job", [payload("Job", workdir="w/new", app_id=2)])
    (temp,) = made.ids
    assert temp < 0
    row = one(account, "Job", temp)
    assert row is not None and row["workdir"] == "w/new" and row["app_id"] == 2
    assert row["state"] == "CREATED"  # a state the server never stores, until it answers
    assert pending(account) == [("Job", Op.CREATE, temp, payload("Job", workdir="w/new", app_id=2))]
    assert account.queue_counts().pending == 1


def test_provisional_ids_are_never_reused(account: Mirror) -> None:
    first = account.user_created("Site", [payload("Site", name="a", path="/a")]).ids
    account.withdraw(account.user_created("Site", [payload("Site", name="b", path="/b")]))
    third = account.user_created("Site", [payload("Site", name="c", path="/c")]).ids
    assert len({*first, *third}) == 2 and max(third) < min(first) < 0


def test_an_update_shows_at_once_and_is_queued_with_the_row_before(account: Mirror) -> None:
    change = account.user_updated("Job", [(3, {"num_nodes": 8, "tags": {"k": "v"}})])
    row = one(account, "Job", 3)
    assert row is not None and row["num_nodes"] == 8 and row["tags"] == {"k": "v"}
    assert change.before[3] is not None and change.before[3]["num_nodes"] == 1
    assert pending(account) == [("Job", Op.UPDATE, 3, {"num_nodes": 8, "tags": {"k": "v"}})]
    assert ids(account, "Job", tags={"k": "v"}) == [3]  # the tag index follows the row


def test_a_deleted_job_takes_its_events_and_transfer_items_along(account: Mirror) -> None:
    account.user_deleted("Job", [3])
    assert one(account, "Job", 3) is None
    assert ids(account, "EventLog", job_id=[3]) == []
    assert ids(account, "TransferItem", job_id=[3]) == []
    assert ids(account, "Job", id=[4]) == [4]
    assert pending(account) == [("Job", Op.DELETE, 3, {})]


def test_a_deleted_site_takes_what_the_server_would_delete_with_it(account: Mirror) -> None:
    account.user_deleted("Site", [1])
    for resource in ("App", "BatchJob", "Job", "EventLog", "TransferItem"):
        assert ids(account, resource) == [], resource
    assert [(r, op) for r, op, _, _ in pending(account)] == [("Site", Op.DELETE)]


def test_a_deleted_batch_job_leaves_its_jobs_without_one(account: Mirror) -> None:
    account.user_deleted("BatchJob", [5])
    row = one(account, "Job", 4)
    assert row is not None and row["batch_job_id"] is None


# -- withdraw --------------------------------------------------------------------------------


def test_withdrawing_a_create_leaves_no_trace(account: Mirror) -> None:
    change = account.user_created("Job", [payload("Job", workdir="w/x", app_id=2)])
    assert account.withdraw(change) == 1
    assert one(account, "Job", change.ids[0]) is None
    assert account.queue_counts().pending == 0


def test_withdrawing_an_update_puts_the_row_back(account: Mirror) -> None:
    change = account.user_updated("Job", [(3, {"num_nodes": 8})])
    assert account.withdraw(change) == 1
    row = one(account, "Job", 3)
    assert row is not None and row["num_nodes"] == 1
    assert account.queue_counts().pending == 0


def test_withdrawing_a_delete_brings_the_object_back(account: Mirror) -> None:
    change = account.user_deleted("Job", [4])
    assert account.withdraw(change) == 1
    row = one(account, "Job", 4)
    assert row is not None and row["workdir"] == "w/4"
    assert account.queue_counts().pending == 0


def test_withdrawing_keeps_a_change_already_sent(account: Mirror) -> None:
    change = account.user_updated("Job", [(3, {"num_nodes": 8})])
    account.sending(change.seqs)  # it may have reached the server
    assert account.withdraw(change) == 0
    counts = account.queue_counts()
    assert (counts.pending, counts.in_flight) == (0, 1)
    row = one(account, "Job", 3)
    assert row is not None and row["num_nodes"] == 8


def test_withdrawing_keeps_a_later_change_of_the_same_object(account: Mirror) -> None:
    first = account.user_updated("Job", [(3, {"num_nodes": 8})])
    account.user_updated("Job", [(3, {"state": "RESTART_READY"})])
    assert account.withdraw(first) == 1
    row = one(account, "Job", 3)
    assert row is not None and row["state"] == "RESTART_READY"
    assert pending(account) == [("Job", Op.UPDATE, 3, {"state": "RESTART_READY"})]


# -- what the server said --------------------------------------------------------------------


def test_server_rows_keep_the_queued_changes_on_top(account: Mirror) -> None:
    account.user_updated("Job", [(3, {"num_nodes": 8})])
    account.server_rows("Job", [server_row("Job", id=3, app_id=2, last_update=T2, state="RUNNING")])
    row = one(account, "Job", 3)
    assert row is not None
    assert row["num_nodes"] == 8  # ours, still queued
    assert row["state"] == "RUNNING"  # the server's


def test_a_server_row_never_replaces_a_newer_copy(account: Mirror) -> None:
    account.server_rows("Job", [server_row("Job", id=3, app_id=2, last_update=T2, num_nodes=2)])
    late = server_row("Job", id=3, app_id=2, last_update=T1, num_nodes=1)  # read earlier
    account.server_rows("Job", [late])
    account.server_rows("Job", [late], merge=True)
    row = one(account, "Job", 3)
    assert row is not None and (row["num_nodes"], row["last_update"]) == (2, T2)
    account.server_rows("Job", [server_row("Job", id=3, app_id=2, last_update=T3, num_nodes=3)])
    row = one(account, "Job", 3)
    assert row is not None and (row["num_nodes"], row["last_update"]) == (3, T3)


def test_a_listing_read_before_a_write_committed_cannot_revert_it(account: Mirror) -> None:
    listed = server_row("Job", id=3, app_id=2, last_update=T1)  # read by a pull...
    change = account.user_updated("Job", [(3, {"num_nodes": 8})])  # ...then a save()
    confirmed = server_row("Job", id=3, app_id=2, last_update=T2, num_nodes=8)
    account.confirmed("Job", change.seqs, [confirmed])
    account.server_rows("Job", [listed], merge=True)  # ...stores what it read
    row = one(account, "Job", 3)
    assert row is not None and (row["num_nodes"], row["last_update"]) == (8, T2)


def test_a_confirmed_change_leaves_the_queue(account: Mirror) -> None:
    change = account.user_updated("Job", [(3, {"num_nodes": 8})])
    account.sending(change.seqs)
    stored = server_row("Job", id=3, app_id=2, last_update=T2, num_nodes=8)
    account.confirmed("Job", change.seqs, [stored])
    counts = account.queue_counts()
    assert (counts.pending, counts.in_flight, counts.dead) == (0, 0, 0)
    row = one(account, "Job", 3)
    assert row is not None and (row["num_nodes"], row["last_update"]) == (8, T2)


def test_gone_from_the_server_is_gone_with_what_cascades(account: Mirror) -> None:
    account.server_gone("App", [2])
    assert ids(account, "App") == [] and ids(account, "Job") == []
    assert ids(account, "EventLog") == [] and ids(account, "Site") == [1]


# -- provisional ids -------------------------------------------------------------------------


def test_a_created_object_takes_the_servers_id_everywhere(account: Mirror) -> None:
    app = account.user_created(
        "App", [payload("App", site_id=1, name="New", serialized_class="t", source_code="x")]
    )
    (app_temp,) = app.ids
    job = account.user_created("Job", [payload("Job", workdir="w/n", app_id=app_temp)])
    (job_temp,) = job.ids
    (entry,) = account.queued(PENDING, limit=1)
    account.sending([entry.seq])
    made = server_row("App", id=50, site_id=1, name="New", serialized_class="t", source_code="x")
    account.created("App", [(entry, made)])
    assert account.real_id(app_temp) == 50
    assert one(account, "App", app_temp) == one(account, "App", 50)
    row = one(account, "Job", job_temp)
    assert row is not None and row["app_id"] == 50
    assert pending(account) == [
        ("Job", Op.CREATE, job_temp, payload("Job", workdir="w/n", app_id=50))
    ]


def test_a_provisional_id_another_process_sent_resolves_in_a_change_naming_it(
    tmp_path: Path,
) -> None:
    """The script holds job -1; the daemon (another connection to the same file) sends its
    create; the script's next change of -1, and a child naming it, go to the server's id."""
    script = open_mirror(tmp_path / "home", IDENTITY)
    daemon = open_mirror(tmp_path / "home", IDENTITY)
    try:
        script.server_rows("App", [server_row("App", id=2, site_id=1)])
        (temp,) = script.user_created("Job", [payload("Job", workdir="w/p", app_id=2)]).ids
        (entry,) = daemon.queued(PENDING)
        daemon.sending([entry.seq])
        daemon.created("Job", [(entry, server_row("Job", id=70, app_id=2, workdir="w/p"))])

        update = script.user_updated("Job", [(temp, {"num_nodes": 4})])
        child = script.user_created(
            "Job", [payload("Job", workdir="w/c", app_id=2, parent_ids=[temp])]
        )
        assert update.ids == [70]
        queued = {e.op: e for e in script.queued(PENDING)}
        assert queued[Op.UPDATE].obj_id == 70
        assert queued[Op.CREATE].payload["parent_ids"] == [70]
        assert queued[Op.CREATE].obj_id == child.ids[0]
        row = one(daemon, "Job", 70)
        assert row is not None and row["num_nodes"] == 4
    finally:
        script.close()
        daemon.close()


# -- refusals and dead letters ---------------------------------------------------------------


def test_a_refused_change_becomes_a_dead_letter_and_the_row_the_servers_truth(
    account: Mirror,
) -> None:
    account.user_updated("Job", [(3, {"num_nodes": 8})])
    (entry,) = account.queued(PENDING)
    truth = server_row("Job", id=3, app_id=2, last_update=T2)
    account.refused(entry, 400, "num_nodes: too many", [truth], own=False)
    counts = account.queue_counts()
    assert (counts.pending, counts.dead) == (0, 1)
    (dead,) = account.queued([EntryState.DEAD])
    assert (dead.status, dead.error) == (400, "num_nodes: too many")
    row = one(account, "Job", 3)
    assert row is not None and row["num_nodes"] == 1


def test_a_refusal_raised_to_the_caller_leaves_no_dead_letter(account: Mirror) -> None:
    change = account.user_created("Job", [payload("Job", workdir="w/x", app_id=2)])
    (entry,) = account.queued(PENDING)
    account.refused(entry, 404, "no such app", [], own=True)
    assert account.queue_counts() == QueueCounts(0, 0, 0, None, {})
    assert one(account, "Job", change.ids[0]) is None


def test_a_revived_dead_letter_is_queued_and_shown_again(account: Mirror) -> None:
    account.user_updated("Job", [(3, {"num_nodes": 8})])
    (entry,) = account.queued(PENDING)
    account.refused(entry, 400, "no", [server_row("Job", id=3, app_id=2)], own=False)
    assert account.revive(entry.seq) is True
    assert (account.queue_counts().pending, account.queue_counts().dead) == (1, 0)
    row = one(account, "Job", 3)
    assert row is not None and row["num_nodes"] == 8
    assert account.revive(entry.seq) is False  # not a dead letter any more


def test_a_revived_create_shows_its_object_again(account: Mirror) -> None:
    change = account.user_created("Job", [payload("Job", workdir="w/x", app_id=2)])
    (entry,) = account.queued(PENDING)
    account.refused(entry, 404, "no such app", [], own=False)
    assert one(account, "Job", change.ids[0]) is None
    assert account.revive(entry.seq)
    row = one(account, "Job", change.ids[0])
    assert row is not None and row["workdir"] == "w/x"


def test_discard_drops_only_a_dead_letter(account: Mirror) -> None:
    account.user_updated("Job", [(3, {"num_nodes": 8})])
    (entry,) = account.queued(PENDING)
    assert account.discard(entry.seq) is False  # still queued: not thrown away
    account.refused(entry, 400, "no", [server_row("Job", id=3, app_id=2)], own=False)
    assert account.discard(entry.seq) is True
    assert account.queue_counts().dead == 0


# -- coverage: what the mirror may answer alone ----------------------------------------------

NOW = datetime.now(timezone.utc)


def test_a_never_told_mirror_has_no_evidence(account: Mirror) -> None:
    with pytest.raises(NoEvidence):
        account.evidence(QuerySpec("Job").with_filters({"state": "RUNNING"}))
    by_id = account.evidence(QuerySpec("Job").with_filters({"id": [3, 4]}))
    assert by_id.partial  # ids it holds: its last word on them, marked stale


def test_an_unsliced_answer_covers_its_filters_and_survives_our_writes(account: Mirror) -> None:
    spec = QuerySpec("Job").with_filters({"app_id": 2})
    rows = [server_row("Job", id=i, app_id=2, workdir=f"w/{i}", last_update=T1) for i in (3, 4)]
    account.server_listed(spec, rows, len(rows), NOW, rechecked=([], []))
    covered = account.covered(spec.with_ordering("-last_update").with_window(0, 1))
    assert covered is not None and abs(covered.as_of - NOW) < timedelta(seconds=1)
    account.user_updated("Job", [(3, {"num_nodes": 8})])
    assert account.covered(spec) is not None  # our write went through to the rows it covers
    assert account.covered(QuerySpec("Job")) is None  # a broader query is not covered


def test_a_sliced_answer_and_a_count_are_dropped_by_a_write(account: Mirror) -> None:
    window = QuerySpec("Job").with_ordering("id").with_window(0, 1)
    account.server_listed(window, [server_row("Job", id=3, app_id=2)], 2, NOW, rechecked=None)
    account.server_counted(QuerySpec("Job"), 2, NOW)
    assert account.covered(window) is None  # nothing claimed: the rest was not checked
    account.server_listed(window, [server_row("Job", id=3, app_id=2)], 2, NOW, rechecked=([], []))
    assert account.covered(window) is not None
    assert account.covered(QuerySpec("Job"), count=True) is not None
    account.user_updated("Job", [(4, {"num_nodes": 2})])
    assert account.covered(window) is None
    assert account.covered(QuerySpec("Job"), count=True) is None


def test_an_unsliced_answer_drops_the_rows_the_server_no_longer_holds(account: Mirror) -> None:
    spec = QuerySpec("Job").with_filters({"app_id": 2})
    only_three = [server_row("Job", id=3, app_id=2)]
    account.server_listed(spec, only_three, 1, NOW, rechecked=([4], []))  # 4: asked, not there
    assert ids(account, "Job") == [3]
    assert ids(account, "Site") == [1]


def test_the_server_changing_a_resource_unseen_drops_what_was_claimed(account: Mirror) -> None:
    spec = QuerySpec("EventLog")
    account.server_listed(spec, [server_row("EventLog", id=6, job_id=3)], 1, NOW, ([], []))
    account.server_changed("EventLog")
    assert account.covered(spec) is None


def test_a_pull_marks_every_resource_fully_synced_as_of_its_start(account: Mirror) -> None:
    account.pull_done(NOW, T1, full=False, marks_checked=False)
    for resource in ("Site", "App", "BatchJob", "Job"):
        at = account.full_sync_at(resource)
        assert at is not None and abs(at - NOW) < timedelta(seconds=1), resource
    assert account.watermark("Job") == T1
    assert account.covered(QuerySpec("Job").with_filters({"state": "RUNNING"})) is not None

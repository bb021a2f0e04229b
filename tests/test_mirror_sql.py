"""The mirror's SQL answers queries as the real server does, on rows planted without a server.

Each case is a fact of the server's semantics (balsam-api.md §2.1; the differential test in
``test_conformance.py`` checks them against the real server on a large dataset): containment
of tags, LIKE patterns with PostgreSQL's wildcards and backslash escapes, inclusive time bounds,
the ``id`` tie-break and NULL placement of every ordering, windows, and the server's own quirks
that the mirror copies. Here they run in milliseconds against a throw-away mirror.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from balsam_sync.cache import Identity, Mirror, open_mirror
from balsam_sync.spec import QuerySpec
from tests.server_rows import server_row

T0 = datetime(2025, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="microseconds")


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    m = open_mirror(tmp_path / "home", Identity("http://127.0.0.1:9", "alice"))
    m.server_rows("Site", [server_row("Site", id=1, name="s1", path="/p/one%dir")])
    m.server_rows("Site", [server_row("Site", id=2, name="s2", path="/p/two")])
    m.server_rows("App", [server_row("App", id=10, site_id=1), server_row("App", id=20, site_id=2)])
    yield m
    m.close()


def jobs(mirror: Mirror, *specs: dict[str, Any]) -> None:
    """Plant jobs 1, 2, ... with these fields (app 10 unless given)."""
    rows = [server_row("Job", **{"id": i, "app_id": 10, **f}) for i, f in enumerate(specs, 1)]
    mirror.server_rows("Job", rows)


def ids(
    mirror: Mirror, resource: str, ordering: str | None = None, window: Any = None, **filters: Any
) -> list[int]:
    spec = QuerySpec(resource).with_filters(filters).with_ordering(ordering)
    if window is not None:
        spec = spec.with_window(window.start, window.stop)
    return mirror.ids(spec)


def count(mirror: Mirror, resource: str, **filters: Any) -> int:
    return mirror.count(QuerySpec(resource).with_filters(filters))


# -- key/value containment -------------------------------------------------------------------


def test_tags_match_by_containment_of_every_pair(mirror: Mirror) -> None:
    jobs(mirror, {"tags": {"a": "1", "b": "2"}}, {"tags": {"a": "1"}}, {"tags": {"a": "2"}}, {})
    assert ids(mirror, "Job", tags={"a": "1"}) == [1, 2]
    assert ids(mirror, "Job", tags={"a": "1", "b": "2"}) == [1]
    assert ids(mirror, "Job", tags=["a:1", "b:2"]) == [1]
    assert ids(mirror, "Job", tags={"a": "3"}) == []
    assert count(mirror, "Job", tags={"a": "1"}) == 2  # a count by tags alone takes a short cut
    assert count(mirror, "Job", tags={"a": "1", "b": "2"}) == 1


def test_a_tag_string_is_split_at_its_first_colon(mirror: Mirror) -> None:
    jobs(mirror, {"tags": {"g": "1:x"}}, {"tags": {"g:1": "x"}}, {"tags": {"g": "1"}})
    assert ids(mirror, "Job", tags=["g:1:x"]) == [1]
    assert ids(mirror, "Job", tags=["g:1"]) == [3]


def test_a_tag_value_is_text_compared_exactly(mirror: Mirror) -> None:
    jobs(mirror, {"tags": {"n": "1"}}, {"tags": {"n": "1.0"}}, {"tags": {"n": "N"}})
    assert ids(mirror, "Job", tags={"n": "1"}) == [1]
    assert ids(mirror, "Job", tags={"n": "n"}) == []  # case-sensitive


def test_tags_of_a_job_filter_its_transfer_items_and_events(mirror: Mirror) -> None:
    jobs(mirror, {"tags": {"exp": "x"}}, {"tags": {"exp": "y"}})
    mirror.server_rows("TransferItem", [server_row("TransferItem", id=i, job_id=i) for i in (1, 2)])
    mirror.server_rows("EventLog", [server_row("EventLog", id=i, job_id=i) for i in (1, 2)])
    assert ids(mirror, "TransferItem", tags={"exp": "x"}) == [1]
    assert ids(mirror, "EventLog", tags={"exp": "y"}) == [2]


def test_event_data_matches_by_containment_of_text_values(mirror: Mirror) -> None:
    jobs(mirror, {})
    mirror.server_rows(
        "EventLog",
        [
            server_row("EventLog", id=1, job_id=1, data={"k": "v", "m": "w"}),
            server_row("EventLog", id=2, job_id=1, data={"k": "v"}),
            server_row("EventLog", id=3, job_id=1, data={}),
        ],
    )
    assert sorted(ids(mirror, "EventLog", data={"k": "v"})) == [1, 2]
    assert ids(mirror, "EventLog", data={"k": "v", "m": "w"}) == [1]


# -- LIKE patterns ---------------------------------------------------------------------------

WORKDIRS = ["r/a_b", "r/axb", "r/ab", "r/RUN", "r/run", "r/50%", "r/[ck]", "r/c", "r/star*", "r/x"]
WORKDIRS += ["r/back\\slash", "r/trail%", "r/trail%/more", "r/trail"]


@pytest.mark.parametrize(
    ("value", "matches"),
    [
        ("a_b", ["r/a_b", "r/axb"]),  # "_" is the server's one-character wildcard
        ("a\\_b", ["r/a_b"]),  # ... unless escaped with a backslash
        ("a%b", ["r/a_b", "r/axb", "r/ab"]),  # "%" is its any-length wildcard
        ("50\\%", ["r/50%"]),
        ("RUN", ["r/RUN"]),  # case-sensitive
        ("[ck]", ["r/[ck]"]),  # GLOB's specials match themselves
        ("star*", ["r/star*"]),
        ("back\\\\slash", ["r/back\\slash"]),  # an escaped backslash is one backslash
        ("trail\\", ["r/trail%"]),  # a final backslash escapes the closing "%"
        ("nothing-like-this", []),
    ],
)
def test_workdir_contains_is_the_servers_like(
    mirror: Mirror, value: str, matches: list[str]
) -> None:
    jobs(mirror, *({"workdir": w} for w in WORKDIRS))
    found = [WORKDIRS[i - 1] for i in ids(mirror, "Job", workdir__contains=value)]
    assert found == matches


def test_a_site_path_filter_is_the_same_like(mirror: Mirror) -> None:
    assert ids(mirror, "Site", path="p/%o") == [1, 2]  # "%" is a wildcard...
    assert ids(mirror, "Site", path="p/\\%o") == []  # ...unless escaped
    assert ids(mirror, "Site", path="one\\%") == [1]
    assert ids(mirror, "App", site_path="two") == [20]


# -- comparisons, lists and the server's quirks ----------------------------------------------


def test_time_bounds_include_the_bound(mirror: Mirror) -> None:
    jobs(mirror, {"last_update": at(0)}, {"last_update": at(1)}, {"last_update": at(2)})
    bound = T0 + timedelta(seconds=1)
    assert ids(mirror, "Job", last_update_after=bound) == [2, 3]
    assert ids(mirror, "Job", last_update_before=bound) == [1, 2]
    shifted = bound.astimezone(timezone(timedelta(hours=-8)))  # the same instant elsewhere
    assert ids(mirror, "Job", last_update_after=shifted) == [2, 3]


def test_state_lists_and_exclusion(mirror: Mirror) -> None:
    jobs(mirror, {"state": "RUNNING"}, {"state": "FAILED"}, {"state": "JOB_FINISHED"})
    assert ids(mirror, "Job", state=["RUNNING", "FAILED"]) == [1, 2]
    assert ids(mirror, "Job", state__ne="FAILED") == [1, 3]


@pytest.mark.parametrize("n", [1, 3, 100])  # one value, a few, and more than inline parameters
def test_id_lists_of_any_length(mirror: Mirror, n: int) -> None:
    jobs(mirror, *({} for _ in range(120)))
    wanted = list(range(1, 2 * n + 1, 2))
    assert ids(mirror, "Job", id=wanted) == [i for i in wanted if i <= 120]


def test_parent_id_matches_a_child_of_any_of_the_parents(mirror: Mirror) -> None:
    jobs(mirror, {}, {}, {"parent_ids": [1]}, {"parent_ids": [1, 2]}, {"parent_ids": [2]}, {})
    assert ids(mirror, "Job", parent_id=[1]) == [3, 4]
    assert ids(mirror, "Job", parent_id=[1, 2]) == [3, 4, 5]


def test_site_id_of_jobs_goes_through_their_app(mirror: Mirror) -> None:
    jobs(mirror, {"app_id": 10}, {"app_id": 20})
    assert ids(mirror, "Job", site_id=[2]) == [2]


def test_batch_job_id_matches_every_job_at_the_batch_jobs_site(mirror: Mirror) -> None:
    """The server joins BatchJob through the Site, so this filter does not mean "ran in it"."""
    mirror.server_rows("BatchJob", [server_row("BatchJob", id=7, site_id=1)])
    jobs(mirror, {"batch_job_id": 7}, {"batch_job_id": None}, {"app_id": 20})
    assert ids(mirror, "Job", batch_job_id=7) == [1, 2]


# -- ordering and windows --------------------------------------------------------------------


def test_ties_are_broken_by_id_ascending_in_both_directions(mirror: Mirror) -> None:
    jobs(mirror, {"last_update": at(1)}, {"last_update": at(0)}, {"last_update": at(1)})
    assert ids(mirror, "Job", "last_update") == [2, 1, 3]
    assert ids(mirror, "Job", "-last_update") == [1, 3, 2]
    assert ids(mirror, "Job", "-id") == [3, 2, 1]


def test_nulls_come_last_ascending_and_first_descending(mirror: Mirror) -> None:
    starts = [at(5), None, at(1), None]
    mirror.server_rows(
        "BatchJob",
        [server_row("BatchJob", id=i, site_id=1, start_time=s) for i, s in enumerate(starts, 1)],
    )
    assert ids(mirror, "BatchJob", "start_time") == [3, 1, 2, 4]
    assert ids(mirror, "BatchJob", "-start_time") == [2, 4, 1, 3]


def test_events_are_newest_first_unless_asked(mirror: Mirror) -> None:
    jobs(mirror, {})
    stamps = [at(2), at(0), at(2), at(1)]
    mirror.server_rows(
        "EventLog",
        [server_row("EventLog", id=i, job_id=1, timestamp=t) for i, t in enumerate(stamps, 1)],
    )
    assert ids(mirror, "EventLog") == [1, 3, 4, 2]
    assert ids(mirror, "EventLog", "timestamp") == [2, 4, 1, 3]


def test_a_window_is_a_slice_of_the_ordered_answer_and_counts_ignore_it(mirror: Mirror) -> None:
    jobs(mirror, *({"last_update": at(-i)} for i in range(6)))
    ordered = ids(mirror, "Job", "last_update")
    assert ordered == [6, 5, 4, 3, 2, 1]
    assert ids(mirror, "Job", "last_update", window=slice(1, 4)) == ordered[1:4]
    spec = QuerySpec("Job").with_ordering("last_update").with_window(1, 4).with_window(1, None)
    assert mirror.ids(spec) == ordered[1:4][1:]
    assert mirror.count(spec) == 6

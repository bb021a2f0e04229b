"""What reading a field of a cached instance costs, as promises that need no clock.

A cached (mirror) instance reads ``id`` from its row without unpacking anything, unpacks the
rest of its row once (never into a dict of the row) when another field is first read, and
decodes a JSON field on its first read only. Values, conversions and change tracking are the
same as for any other instance.
"""

from __future__ import annotations

import itertools
import marshal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import balsam_sync.orm.access
from balsam_sync.cache.packing import SMALL_JSON
from balsam_sync.client import Client
from balsam_sync.freshness import RowLayout
from balsam_sync.orm.fields import to_path
from tests.conftest import User, server_jobs


def cached_jobs(client: Client, app: Any, n: int, **fields: Any) -> list[Any]:
    """``n`` new jobs (created through the server), read back from the mirror."""
    tag = uuid.uuid4().hex[:8]
    created = client.Job.objects.bulk_create(
        [client.Job(workdir=f"reads/{tag}/{i}", app_id=app.id, **fields) for i in range(n)]
    )
    jobs = list(client.Job.objects.filter(id=[j.id for j in created]).offline())
    assert len(jobs) == n and all(j.source == "cache" for j in jobs)
    return jobs


def counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Count the calls of ``owner.name`` (left working) in a one-item list."""
    calls = [0]
    original: Callable[..., Any] = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def test_reading_id_unpacks_no_cached_row(
    client: Client, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = cached_jobs(client, app, 5)
    unpacked = counting(monkeypatch, marshal, "loads")
    ids = [j.id for j in jobs]
    assert unpacked[0] == 0
    assert all(isinstance(i, int) and i > 0 for i in ids)
    # Any other field unpacks the row once, however many fields are read after it.
    for job in jobs:
        assert (job.workdir, job.state, job.tags, job.num_nodes) is not None
        assert (job.workdir, job.state, job.data, job.id) is not None
    assert unpacked[0] == len(jobs)


def test_field_reads_build_no_dict_of_the_cached_row(
    client: Client, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = cached_jobs(client, app, 3, tags={"k": "v"})
    as_dict = counting(monkeypatch, RowLayout, "as_dict")
    for job in jobs:
        assert job.tags == {"k": "v"}
        assert (job.id, job.workdir, job.state, job.last_update, job.parent_ids) is not None
    assert as_dict[0] == 0


def test_a_json_field_is_decoded_once_short_ones_with_the_row(
    client: Client, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = {"a": ["x" * 40] * (SMALL_JSON // 40)}  # JSON text longer than SMALL_JSON
    (job,) = cached_jobs(client, app, 1, tags={"k": "v"}, data=big)
    decodes = counting(monkeypatch, balsam_sync.orm.access, "decode_json")
    assert (job.id, job.workdir, job.state, job.num_nodes) is not None
    tags = job.tags  # short: unpacked with the row, decoded already
    assert job.tags is tags and tags == {"k": "v"}
    assert decodes[0] == 0
    data = job.data  # long: text until its first read
    assert decodes[0] == 1
    assert job.data is data and data == big
    assert decodes[0] == 1


def test_in_place_changes_and_assignments_to_a_cached_instance_are_all_saved(
    client: Client, app: Any, user: User
) -> None:
    alone, mixed = cached_jobs(client, app, 2, tags={"a": "1"}, data={"x": [1]})
    for job in (alone, mixed):
        job.tags["b"] = "2"  # changed in place while the instance still reads its packed row
        job.data["x"].append(2)
    mixed.num_nodes = 3  # an assignment: the instance leaves its packed row
    assert mixed.tags == {"a": "1", "b": "2"}
    alone.save()
    mixed.save()
    rows = {r["id"]: r for r in server_jobs(user)}
    for job, nodes in ((alone, 1), (mixed, 3)):
        row = rows[job.id]
        assert (row["tags"], row["data"], row["num_nodes"]) == (
            {"a": "1", "b": "2"},
            {"x": [1, 2]},
            nodes,
        )


def test_a_partly_read_cached_instance_equals_the_servers(client: Client, app: Any) -> None:
    (job,) = cached_jobs(client, app, 1, tags={"a": "1"}, data={"x": {"y": None}})
    assert job.tags == {"a": "1"}  # decoded; the other fields are still packed
    online = client.Job.objects.filter(id=[job.id]).online()[0]
    assert job.to_dict() == online.to_dict()
    assert job == online and repr(job) == repr(online)


def test_path_fields_are_built_exactly_as_pathlib_builds_them() -> None:
    pieces = ["a", "bc", ".", "..", "/", "", "x.y", "~", " "]
    for n in range(6):
        for combo in itertools.product(pieces, repeat=n):
            text = "".join(combo)
            ours, theirs = to_path(text), Path(text)
            assert type(ours) is type(theirs), text
            assert (ours, str(ours), ours.parts, hash(ours)) == (
                theirs,
                str(theirs),
                theirs.parts,
                hash(theirs),
            ), text
            assert ours / "z" == theirs / "z" and ours.parent == theirs.parent, text


RESOURCES = ("Site", "App", "Job", "BatchJob", "TransferItem", "EventLog")


def same(a: Any, b: Any) -> bool:
    """Equal values of the same type (an enum member is not its text, a Path not a str)."""
    return type(a) is type(b) and a == b


def test_every_field_of_every_resource_reads_the_same_through_the_compiled_path(
    client: Client, site: Any, app: Any
) -> None:
    site.transfer_locations = {"laptop": "globus://9f8e7d6c-1234-4bcd-8123-0a1b2c3d4e5f"}
    site.save()
    staged = client.App.objects.create(
        site_id=site.id,
        name="Staged",
        serialized_class="txt",
        source_code="pass",
        transfers={"input": {"required": True, "direction": "in", "local_path": "in.dat"}},
    )
    parent = client.Job.objects.create(workdir="fields/parent", app_id=app.id)
    client.Job.objects.create(
        workdir="fields/child",
        app_id=staged.id,
        tags={"k": "v"},
        data={"x": [1, {"y": None}]},
        parent_ids={parent.id},
        transfers={"input": "laptop:/data/in.dat"},
    )
    client.BatchJob.objects.create(
        num_nodes=1, wall_time_min=10, job_mode="serial", site_id=site.id, project="p", queue="q"
    )
    client.pull()
    for name in RESOURCES:
        model = getattr(client, name)
        server = {obj.id: obj for obj in model.objects.all().online()}
        cached = list(model.objects.all().offline())
        assert cached and all(obj.source == "cache" for obj in cached), name
        # The slow path: the same mirror rows, as dicts.
        answer = cached[0]._prov
        assert answer.layout is not None
        slow = [model._from_row(answer.layout.as_dict(row)) for row in answer.rows]
        for fast, dict_built in zip(cached, slow, strict=True):
            for field in sorted(model._fields):
                first, again = getattr(fast, field), getattr(fast, field)
                expected = getattr(dict_built, field)
                assert same(first, expected), (name, field, first, expected)
                assert same(again, expected), (name, field, again, expected)
                assert same(first, getattr(server[fast.id], field)), (name, field)
            assert fast._d is None, f"{name}: reads left the packed row"
            assert fast.to_dict() == dict_built.to_dict() == server[fast.id].to_dict(), name

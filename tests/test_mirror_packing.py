"""Packed rows read back exactly as their columns, whatever wrote them (no server).

Each mirror row is also kept packed in one blob, which a cached read unpacks instead of the
columns; it must hold exactly what SQLite holds in them (values and types), after the server's
rows, the user's changes, provisional ids becoming the server's, and an UPDATE that bypasses
the blob.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from balsam_sync.cache import EntryState, Identity, Mirror, open_mirror
from balsam_sync.resources import RESOURCES, Row
from balsam_sync.spec import QuerySpec
from tests.server_rows import server_row


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    m = open_mirror(tmp_path / "home", Identity("http://127.0.0.1:9", "alice"))
    yield m
    m.close()


def typed(row: Row) -> dict[str, tuple[type, Any]]:
    return {name: (type(value), value) for name, value in row.items()}


def json_fields(resource: str) -> set[str]:
    """The fields the server sends as JSON objects or arrays (kept as JSON text in columns)."""
    found = set()
    for name, info in RESOURCES[resource].out.model_fields.items():
        kinds = [info.annotation, *typing.get_args(info.annotation)]
        if any(typing.get_origin(k) in (dict, list, set) or k in (dict, list, set) for k in kinds):
            found.add(name)
    return found


def as_json(resource: str, row: Row) -> Row:
    """``row`` with the value of each JSON field decoded: a column holds JSON text, a packed
    row may hold the short ones decoded already (so a read need not decode them)."""
    out = dict(row)
    for name in json_fields(resource):
        if isinstance(out.get(name), str):
            out[name] = json.loads(out[name])
    return out


def assert_packed_rows_are_the_columns(mirror: Mirror) -> int:
    """Every resource's packed rows equal its columns, value and type; return how many."""
    seen = 0
    for resource in RESOURCES:
        spec = QuerySpec(resource)
        layout, packed = mirror.rows(spec)
        columns = mirror.dicts(spec)
        assert [p[0] for p in packed] == [c["id"] for c in columns], resource
        for blob, row in zip(packed, columns, strict=True):
            assert typed(as_json(resource, layout.as_dict(blob))) == typed(
                as_json(resource, row)
            ), f"{resource} {row['id']}"
            seen += 1
    return seen


def plant_everything(mirror: Mirror) -> None:
    wide = "é漢\U0001f600"
    mirror.server_rows(
        "Site",
        [server_row("Site", id=1, name=wide, path="/p", transfer_locations={"a": "globus://x"})],
    )
    mirror.server_rows("App", [server_row("App", id=2, site_id=1, description=wide)])
    mirror.server_rows("BatchJob", [server_row("BatchJob", id=5, site_id=1, scheduler_id=2**40)])
    mirror.server_rows(
        "Job",
        [
            server_row(
                "Job",
                id=3,
                app_id=2,
                tags={wide: wide, "k": "v"},
                data={"n": None, "l": [1, 2.5, True, {"x": "y"}]},
                gpus_per_rank=0,  # the server sends an int for this float column
                return_code=-9,
                pending_file_cleanup=False,
                batch_job_id=5,
            ),
            server_row("Job", id=4, app_id=2, parent_ids=[3], gpus_per_rank=1.5),
        ],
    )
    mirror.server_rows("TransferItem", [server_row("TransferItem", id=6, job_id=3)])
    mirror.server_rows("EventLog", [server_row("EventLog", id=7, job_id=3, data={"a": 1})])


def test_server_rows_of_every_resource_pack_exactly(mirror: Mirror) -> None:
    plant_everything(mirror)
    assert assert_packed_rows_are_the_columns(mirror) == 7
    layout, packed = mirror.rows(QuerySpec("Job").with_filters({"id": [3]}))
    assert layout.as_dict(packed[0])["gpus_per_rank"] == 0.0  # stored as SQLite stores it


def test_the_users_changes_and_the_servers_ids_pack_exactly(mirror: Mirror) -> None:
    plant_everything(mirror)
    create = RESOURCES["Job"].create
    assert create is not None
    wire = create.model_validate({"workdir": "w/n", "app_id": 2, "parent_ids": [3]})
    (temp,) = mirror.user_created("Job", [wire.model_dump(mode="json")]).ids
    mirror.user_updated("Job", [(4, {"num_nodes": 2, "tags": {"t": "1"}}), (temp, {"data": {}})])
    assert assert_packed_rows_are_the_columns(mirror) == 8
    entry = next(e for e in mirror.queued([EntryState.PENDING]) if e.obj_id == temp)
    mirror.sending([entry.seq])
    made = server_row("Job", id=40, app_id=2, workdir="w/n", parent_ids=[3], state="STAGED_IN")
    mirror.created("Job", [(entry, made)])  # the id changes everywhere
    assert assert_packed_rows_are_the_columns(mirror) == 8
    assert [r["id"] for r in mirror.dicts(QuerySpec("Job"))] == [3, 4, 40]


def test_an_update_that_bypasses_the_packed_copy_is_what_reads_see(mirror: Mirror) -> None:
    plant_everything(mirror)
    conn = mirror._store.conn  # as a migration or a hand edit would
    conn.execute("UPDATE jobs SET workdir = 'w/edited', num_nodes = 7 WHERE id = 3")
    layout, packed = mirror.rows(QuerySpec("Job").with_filters({"id": [3]}))
    row = layout.as_dict(packed[0])
    assert (row["workdir"], row["num_nodes"]) == ("w/edited", 7)
    assert_packed_rows_are_the_columns(mirror)

"""Values the server cannot store are refused at the call that would send them.

Text that is not valid UTF-8 (a lone surrogate, as a file name that is not UTF-8 decodes to),
a NUL character (PostgreSQL text cannot hold one) and text longer than the server's columns,
anywhere in a write (a field, a tag key or value, nested JSON in ``data``), raise
``UsageError`` naming the field: nothing is queued, nothing is sent. Filter values obey the
same rules. Every check happens before any I/O, so these tests use an offline client (or none)
and never need the server, except the one that shows what the server does with such a value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import balsam_sync
from balsam_sync.client import Client
from balsam_sync.errors import MirrorError, UsageError
from tests.conftest import RequestLog, User, fake_jwt, register_user

NOT_UTF8 = os.fsdecode(b"run-\xff")
"""A file name that is not UTF-8, as Python decodes it: 'run-\\udcff' (a lone surrogate)."""


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[Client]:
    """A client that never sends a request (queued writes stay in its own mirror)."""
    token = fake_jwt(sub=1, username="limits")
    c = balsam_sync.connect("http://127.0.0.1:9", token, home=str(tmp_path), offline=True)
    yield c
    c.close()


def _pending(c: Client) -> int:
    return c.status(check_server=False).pending


def _job(c: Client, **fields: Any) -> Any:
    return c.Job.objects.create(**{"workdir": "w/1", "app_id": 1, **fields})


CREATES: list[tuple[str, Callable[[Client], Any], str]] = [
    ("data value: lone surrogate", lambda c: _job(c, data={"k": "\ud800"}), r"Job\.data\['k'\]"),
    (
        "data nested key: lone surrogate",
        lambda c: _job(c, data={"a": [{"\udc80": 1}]}),
        r"Job\.data\['a'\]\[0\]: the key",
    ),
    ("data value: NUL", lambda c: _job(c, data={"k": "a\x00b"}), r"Job\.data\['k'\].*NUL"),
    ("tag key: lone surrogate", lambda c: _job(c, tags={"\ud800": "v"}), r"Job\.tags: the key"),
    ("tag value: lone surrogate", lambda c: _job(c, tags={"k": "\ud800"}), r"Job\.tags\['k'\]"),
    ("tag value: NUL", lambda c: _job(c, tags={"k": "a\x00"}), r"Job\.tags\['k'\].*NUL"),
    ("workdir: a non-UTF-8 file name", lambda c: _job(c, workdir=NOT_UTF8), r"Job\.workdir.*UTF-8"),
    ("workdir: NUL", lambda c: _job(c, workdir="a/\x00"), r"Job\.workdir.*NUL"),
    ("workdir: too long", lambda c: _job(c, workdir="w" * 257), r"Job\.workdir.*256"),
    (
        "transfer path: too long",
        lambda c: _job(c, transfers={"in": {"location_alias": "a", "path": "/" + "p" * 256}}),
        r"Job\.transfers\['in'\]\['path'\].*256",
    ),
    (
        "launch_params: NUL",
        lambda c: _job(c, launch_params={"cpu_bind": "\x00"}),
        r"Job\.launch_params\['cpu_bind'\]",
    ),
    ("site name: NUL", lambda c: c.Site.objects.create(name="s\x00", path="/p"), r"Site\.name"),
    (
        "site transfer location: lone surrogate",
        lambda c: c.Site.objects.create(name="s", path="/p", transfer_locations={"\udcff": "x"}),
        r"Site\.transfer_locations: the key",
    ),
    (
        "app parameter help: lone surrogate",
        lambda c: c.App.objects.create(
            site_id=1,
            name="A",
            serialized_class="x",
            source_code="x",
            parameters={"n": {"required": True, "help": "\ud800"}},
        ),
        r"App\.parameters\['n'\]\['help'\]",
    ),
    (
        "app transfer slot: too long for a transfer item",
        lambda c: c.App.objects.create(
            site_id=1,
            name="A",
            serialized_class="x",
            source_code="x",
            transfers={"in": {"required": True, "direction": "in", "local_path": "p" * 257}},
        ),
        r"App\.transfers\['in'\]\['local_path'\].*256",
    ),
    (
        "batch job project: too long",
        lambda c: c.BatchJob.objects.create(
            site_id=1, project="p" * 65, queue="q", num_nodes=1, wall_time_min=1, job_mode="mpi"
        ),
        r"BatchJob\.project.*64",
    ),
    (
        "batch job filter tag: NUL",
        lambda c: c.BatchJob.objects.create(
            site_id=1,
            project="p",
            queue="q",
            num_nodes=1,
            wall_time_min=1,
            job_mode="mpi",
            filter_tags={"k": "\x00"},
        ),
        r"BatchJob\.filter_tags\['k'\]",
    ),
]


@pytest.mark.parametrize(("case", "action", "match"), CREATES, ids=[c[0] for c in CREATES])
def test_a_create_the_server_cannot_store_is_refused_and_nothing_queued(
    offline: Client, case: str, action: Callable[[Client], Any], match: str
) -> None:
    with pytest.raises(UsageError, match=match):
        action(offline)
    assert _pending(offline) == 0


def test_a_value_changed_in_place_is_checked_at_save(offline: Client) -> None:
    job = _job(offline, data={"k": 1})
    assert _pending(offline) == 1
    job.data["k"] = "a\udcff"  # in place: no assignment to check it
    with pytest.raises(UsageError, match=r"Job\.data\['k'\]"):
        job.save()
    job.data["k"] = 1
    job.tags["x"] = "\x00"
    with pytest.raises(UsageError, match=r"Job\.tags\['x'\]"):
        offline.Job.objects.bulk_update([job])
    assert _pending(offline) == 1  # only the create


def test_an_unsaved_object_changed_in_place_is_checked_at_create(offline: Client) -> None:
    good = offline.Job(workdir="w/good", app_id=1)
    bad = offline.Job(workdir="w/bad", app_id=1, data={"k": 1})
    bad.data["k"] = "\ud800"
    with pytest.raises(UsageError, match=r"Job\.data\['k'\]"):
        offline.Job.objects.bulk_create([good, bad])
    with pytest.raises(UsageError, match=r"Job\.data\['k'\]"):
        bad.save()
    assert _pending(offline) == 0  # not even the good one: a batch is all or nothing


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"data": {"k": "\ud800"}}, r"Job\.data\['k'\]"),
        ({"tags": {"\x00": "v"}}, r"Job\.tags: the key"),
        ({"workdir": NOT_UTF8}, r"Job\.workdir"),
    ],
)
def test_an_update_the_server_cannot_store_is_refused(
    offline: Client, fields: dict[str, Any], match: str
) -> None:
    job = _job(offline)
    name, value = next(iter(fields.items()))
    with pytest.raises(UsageError, match=match):
        setattr(job, name, value)
    with pytest.raises(UsageError, match=match):
        offline.Job.objects.filter(id=[job.id]).update(**fields)
    item_update = offline.TransferItem.objects.filter(id=[1])
    with pytest.raises(UsageError, match=r"TransferItem\.task_id.*100"):
        item_update.update(task_id="t" * 101)
    assert _pending(offline) == 1  # only the create


@pytest.mark.parametrize(
    ("model", "filters", "match"),
    [
        ("Job", {"workdir__contains": "x" * 1_000_000}, r"workdir__contains.*256"),
        ("Job", {"workdir__contains": NOT_UTF8}, r"workdir__contains.*UTF-8"),
        ("Job", {"workdir__contains": "\x00"}, r"workdir__contains.*NUL"),
        ("Job", {"tags": {"k": "\ud800"}}, r"tags.*UTF-8"),
        ("Job", {"tags": ["\x00:v"]}, r"tags.*NUL"),
        ("EventLog", {"data": {"k": "\x00"}}, r"data.*NUL"),
        ("Site", {"name": "s" * 101}, r"name.*100"),
        ("App", {"site_path": "/" + "p" * 512}, r"site_path.*512"),
        ("BatchJob", {"queue": "\udcff"}, r"queue.*UTF-8"),
    ],
)
def test_a_filter_value_the_server_cannot_take_is_refused(
    offline: Client, model: str, filters: dict[str, Any], match: str
) -> None:
    manager = getattr(offline, model).objects
    with pytest.raises(UsageError, match=match) as caught:
        list(manager.filter(**filters).offline())
    assert not isinstance(caught.value, MirrorError)
    assert "salvage" not in str(caught.value)


def test_the_limits_leave_every_value_the_server_takes_alone(offline: Client) -> None:
    wide = "é漢\U0001f600"  # non-ASCII text, astral plane included, is fine
    job = _job(
        offline,
        workdir="w/" + "x" * 254,
        tags={wide: wide},
        data={"k": [wide, {"n": None}]},
        transfers={"in": {"location_alias": "a", "path": "/" + "p" * 255}},
    )
    job.data = {"k": wide * 1000}  # data has no length limit of its own
    job.save()
    assert _pending(offline) == 2
    offline.Job.objects.filter(workdir__contains="x" * 256, tags={wide: wide})  # no error


def test_the_server_fails_every_listing_after_a_lone_surrogate_so_it_never_leaves(
    client: Client, app: Any, sent: RequestLog, user: User
) -> None:
    """What the server does with such a value (sent here by hand, as another user): it stores
    it, then answers 500 to every job listing of the account."""
    other = register_user(user.api_root, "surrogate")
    auth = {"Authorization": f"Bearer {other.token}"}
    own_site = requests.post(
        f"{other.api_root}/sites/", json={"name": "s", "path": "/p"}, headers=auth, timeout=30
    ).json()
    own_app = requests.post(
        f"{other.api_root}/apps/",
        json={"site_id": own_site["id"], "name": "A", "serialized_class": "x", "source_code": "x"},
        headers=auth,
        timeout=30,
    ).json()
    body = f'[{{"workdir": "w", "app_id": {own_app["id"]}, "data": {{"k": "\\ud800"}}}}]'
    stored = requests.post(
        f"{other.api_root}/jobs/",
        data=body,
        headers={**auth, "Content-Type": "application/json"},
        timeout=30,
    )
    assert stored.status_code in (201, 500)  # stored, or refused while answering
    broken = requests.get(f"{other.api_root}/jobs/", headers=auth, timeout=30)
    assert broken.status_code == 500

    sent.clear()
    with pytest.raises(UsageError, match=r"Job\.data\['k'\]"):
        client.Job.objects.create(workdir="w/1", app_id=app.id, data={"k": "\ud800"})
    assert len(sent) == 0 and _pending(client) == 0
    client.Job.objects.create(workdir="w/2", app_id=app.id, data={"k": "fine"})
    listing = requests.get(
        f"{user.api_root}/jobs/", headers={"Authorization": f"Bearer {user.token}"}, timeout=30
    )
    assert listing.status_code == 200 and listing.json()["count"] == 1

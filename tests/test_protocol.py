"""A reply that breaks the API's protocol is an error, never data, and nothing from it is written.

The fault proxy sits between the client and the real server and rewrites its replies (or
answers in its place): malformed rows, bad JSON, repeated or empty pages, a huge body, an HTML
page, redirects. Each must end in one ``ProtocolError`` naming the resource, the field and the
request, with the mirror untouched by that reply; a redirect answering a write must leave the
change to be settled like a lost reply, then delivered exactly once, never a dead letter.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from balsam_sync import errors
from balsam_sync.resources import Row
from balsam_sync.testing.faultproxy import FaultProxy
from balsam_sync.testing.rewrite import Message, Request, redirect, reply
from tests.conftest import User, server_jobs, via
from tests.mirror_view import held
from tests.site_agent import Rest, create_jobs, make_account

PROXY_SEED = 3


@pytest.fixture
def account(user: User) -> tuple[Rest, int]:
    rest = Rest(user.api_root, user.token)
    _, app_id = make_account(rest, 0, 0)
    create_jobs(rest, app_id, 3)
    return rest, app_id


def job_listings(change: Callable[[list[Row]], None]) -> Callable[[Request, Message], Any]:
    """A rewrite that applies ``change`` to the rows of every non-empty job listing."""

    def lie(request: Request, message: Message) -> Message | None:
        if request.method != "GET" or request.path != "/jobs/" or message.status != 200:
            return None
        body = message.json()
        if not body.get("results"):
            return None
        change(body["results"])
        return message.with_json(body)

    return lie


def no_salvage_advice(exc: BaseException) -> None:
    assert "salvage" not in str(exc)
    assert not isinstance(exc, errors.MirrorError)


def set_field(name: str, value: Any) -> Callable[[list[Row]], None]:
    def change(rows: list[Row]) -> None:
        rows[-1][name] = value

    return change


def drop_field(name: str) -> Callable[[list[Row]], None]:
    def change(rows: list[Row]) -> None:
        del rows[-1][name]

    return change


def as_list(rows: list[Row]) -> None:
    rows[-1] = list(rows[-1].values())  # type: ignore[call-overload]


def id_as_text(rows: list[Row]) -> None:
    rows[-1]["id"] = str(rows[-1]["id"])


MALFORMED = {
    "missing last_update": (drop_field("last_update"), "results[2].last_update"),
    "bad isoformat": (set_field("last_update", "2026-13-45T99:00:00"), "results[2].last_update"),
    "a list instead of a dict": (as_list, "results[2]"),
    'id "abc"': (set_field("id", "abc"), "results[2].id"),
    'id "32" as text': (id_as_text, "results[2].id"),
    "a state the server does not have": (set_field("state", "DONE"), "results[2].state"),
    "tags that are not text": (set_field("tags", {"k": 1}), "results[2].tags.k"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_row_stops_the_pull_and_nothing_of_its_reply_is_written(
    case: str, proxy: FaultProxy, user: User, account: Any, tmp_path: Path
) -> None:
    change, field = MALFORMED[case]
    c = via(proxy, user, tmp_path / "h")
    proxy.rewrite(job_listings(change))
    with pytest.raises(errors.ProtocolError) as caught:
        c.pull()
    err = caught.value
    assert (err.resource, err.field, err.method) == ("Job", field, "GET")
    assert "/jobs/" in str(err) and field in str(err)
    no_salvage_advice(err)
    assert held(c.Job.objects.all()) == []  # not one row of that page
    proxy.rewrite(None)
    c.pull()
    assert len(held(c.Job.objects.all())) == 3
    c.close()


def test_a_reply_that_is_not_json_is_a_protocol_error(
    proxy: FaultProxy, user: User, account: Any, tmp_path: Path
) -> None:
    c = via(proxy, user, tmp_path / "h")
    proxy.rewrite(lambda request, m: m.with_body(m.body[:-7]) if request.path == "/jobs/" else None)  # type: ignore[index]
    with pytest.raises(errors.ProtocolError, match="Invalid JSON") as caught:
        c.Job.objects.online().count()
    assert caught.value.resource == "Job"
    no_salvage_advice(caught.value)
    c.close()


def test_a_login_page_answered_with_200_is_not_data(
    proxy: FaultProxy, user: User, account: Any, tmp_path: Path
) -> None:
    c = via(proxy, user, tmp_path / "h")
    page = b"<html><body>Please sign in</body></html>"
    proxy.intercept(
        lambda request: reply(200, page, "text/html") if request.method == "GET" else None
    )
    with pytest.raises(errors.ProtocolError, match="Job"):
        list(c.Job.objects.online())
    with pytest.raises(errors.ProtocolError, match="not JSON"):
        c.transport.request("GET", "/sessions/")  # a reply of no declared shape
    c.close()


def test_a_server_row_with_a_negative_id_never_touches_a_row_created_offline(
    proxy: FaultProxy, user: User, account: Any, tmp_path: Path
) -> None:
    _, app_id = account
    offline = via(proxy, user, tmp_path / "h", offline=True)
    mine = offline.Job.objects.create(workdir="mine/offline", app_id=app_id)
    assert mine.id == -1
    offline.close()
    c = via(proxy, user, tmp_path / "h")
    proxy.rewrite(job_listings(set_field("id", -1)))
    with pytest.raises(errors.ProtocolError, match="greater than 0") as caught:
        c.pull()
    assert caught.value.field == "results[2].id"
    kept = c.Job.objects.offline().get(id=-1)
    assert kept.workdir.as_posix() == "mine/offline"
    c.close()


def test_the_same_page_for_every_offset_stops_a_first_pull_within_a_few_requests(
    proxy: FaultProxy, user: User, account: Any, tmp_path: Path
) -> None:
    first: list[Row] = []

    def same_page(rows: list[Row]) -> None:
        first[:] = first or [dict(r) for r in rows]
        rows[:] = [dict(r) for r in first]

    def lie(request: Request, message: Message) -> Message | None:
        if request.path != "/jobs/" or "offset" not in request.query:
            return None
        body = message.json()
        if "limit=0" not in request.query:
            same_page(body["results"])
        body["count"] = 10**9
        return message.with_json(body)

    c = via(proxy, user, tmp_path / "h")
    proxy.rewrite(lie)
    with pytest.raises(errors.ProtocolError, match="repeated page"):
        c.pull()
    listings = [
        e
        for e in proxy.log
        if e.path.startswith("/jobs/?") and "offset" in e.path and "limit=0" not in e.path
    ]
    assert len(listings) <= 4, listings  # the first page, the same again, one read ahead
    c.close()


def test_an_empty_page_before_the_count_is_reached_is_an_error(
    proxy: FaultProxy, user: User, account: Any, tmp_path: Path
) -> None:
    def lie(request: Request, message: Message) -> Message | None:
        if request.path != "/jobs/" or "offset=2" not in request.query:
            return None
        return message.with_json({**message.json(), "results": []})

    c = via(proxy, user, tmp_path / "h")
    proxy.rewrite(lie)
    with pytest.raises(errors.ProtocolError, match="empty page at offset 2") as caught:
        list(c.Job.objects.online().iterator(chunk_size=2))
    assert caught.value.resource == "Job" and "offset=2" in str(caught.value)
    c.close()


def test_counts_that_grow_with_every_page_cannot_keep_a_listing_going(
    proxy: FaultProxy, user: User, account: Any, tmp_path: Path
) -> None:
    def lie(request: Request, message: Message) -> Message | None:
        if request.path != "/jobs/" or "offset=" not in request.query:
            return None
        offset = int(request.query.split("offset=")[1].split("&")[0])
        body = message.json()
        row = dict(body["results"][0] if body["results"] else made[0])
        made[:] = [row]
        row["id"] = 10_000_000 + offset  # a new row at every offset, and always more to come
        return message.with_json({"count": offset + 5, "results": [row]})

    made: list[Row] = []
    c = via(proxy, user, tmp_path / "h")
    proxy.rewrite(lie)
    with pytest.raises(errors.ProtocolError, match="first count") as caught:
        list(c.Job.objects.online().iterator(chunk_size=1))
    assert caught.value.resource == "Job"
    asked = [e for e in proxy.log if e.path.startswith("/jobs/?")]
    assert len(asked) <= 2 * 5 + 3, len(asked)
    c.close()


def test_a_reply_over_the_size_limit_is_refused_with_a_clear_message(
    proxy: FaultProxy, user: User, account: Any, tmp_path: Path
) -> None:
    c = via(proxy, user, tmp_path / "h")
    c.transport.max_reply_bytes = 1000  # three jobs (and their items, events) take more
    with pytest.raises(errors.ProtocolError, match="too large") as caught:
        c.pull()
    assert "the limit is 1000 bytes" in str(caught.value)
    assert held(c.Job.objects.all()) == []
    c.close()


def test_a_100_mb_reply_off_the_schema_ends_in_a_protocol_error(
    proxy: FaultProxy, user: User, account: Any, tmp_path: Path
) -> None:
    def huge() -> Iterator[bytes]:
        yield b'{"count": 1, "results": [{"id": 1, "pad": "'
        for _ in range(100):
            yield b"x" * 2**20
        yield b'"}]}'

    c = via(proxy, user, tmp_path / "h")
    proxy.intercept(lambda r: reply(200, huge()) if r.path == "/jobs/" else None)
    with pytest.raises(errors.ProtocolError) as caught:
        c.pull()
    assert caught.value.resource == "Job" and caught.value.field.startswith("results[0]")
    c.close()


# -- redirects answering writes ---------------------------------------------------------------


def workdirs(user: User, prefix: str) -> list[str]:
    return sorted(str(r["workdir"]) for r in server_jobs(user) if r["workdir"].startswith(prefix))


def test_a_redirect_answering_a_create_is_settled_like_a_lost_reply(
    proxy: FaultProxy, user: User, account: Any, tmp_path: Path
) -> None:
    _, app_id = account
    c = via(proxy, user, tmp_path / "h")
    # Were redirects followed, the POST would go on to the server itself (a duplicate).
    target = f"{user.api_root}/jobs/"
    proxy.intercept(lambda r: redirect(307, target) if r.method == "POST" else None)
    job = c.Job.objects.create(workdir="moved/1", app_id=app_id)
    assert job.id is not None and job.id < 0  # not delivered, as far as anyone knows
    assert workdirs(user, "moved/") == []
    proxy.intercept(None)
    report = c.push(lock_wait=5)  # waits out max_request_seconds, finds nothing, resends
    assert report.dead == 0 and report.remaining == 0, report
    assert workdirs(user, "moved/") == ["moved/1"]
    assert job.id > 0 and c.status(check_server=False).dead == 0
    c.close()


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_after_the_server_applied_a_create_is_adopted_not_duplicated(
    status: int, proxy: FaultProxy, user: User, account: Any, tmp_path: Path
) -> None:
    _, app_id = account
    c = via(proxy, user, tmp_path / "h")
    workdir = f"applied/{uuid.uuid4().hex[:6]}"

    def moved(request: Request, message: Message) -> Message | None:
        if request.method != "POST":
            return None
        return message.with_body(b"", status=status).with_header("location", "/elsewhere")

    proxy.rewrite(moved)
    job = c.Job.objects.create(workdir=workdir, app_id=app_id)  # settled: found by its marker
    proxy.rewrite(None)
    report = c.push(lock_wait=5)
    assert (report.dead, report.remaining) == (0, 0), report
    assert workdirs(user, "applied/") == [workdir]  # never sent again
    assert job.id is not None and job.id > 0
    c.close()


def test_a_redirect_answering_an_update_keeps_it_queued_and_it_is_applied_once(
    proxy: FaultProxy, user: User, account: Any, tmp_path: Path
) -> None:
    c = via(proxy, user, tmp_path / "h")
    job = c.Job.objects.online().order_by("id")[0]
    proxy.intercept(lambda r: redirect(302, "/login") if r.method in ("PUT", "PATCH") else None)
    job.num_nodes = 7
    job.save()  # returns: the change is queued, not a dead letter
    assert c.status(check_server=False).dead == 0
    assert next(r for r in server_jobs(user) if r["id"] == job.id)["num_nodes"] == 1
    proxy.intercept(None)
    report = c.push(lock_wait=5)
    assert (report.dead, report.remaining) == (0, 0), report
    assert next(r for r in server_jobs(user) if r["id"] == job.id)["num_nodes"] == 7
    c.close()

"""``Session``: a launcher's lease on jobs (create, acquire_jobs, tick, delete), online only.

A session locks jobs on the server for one launcher, and its heartbeat must reach the server:
there is nothing a mirror or an outbox could do for it. So sessions are never mirrored or
queued, and every Session call refuses at once, with ``OfflineError``, in offline mode. The
jobs a session acquires are written through to the mirror, like any other server answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, overload

from pydantic import ValidationError

from ..errors import NotOffered, OfflineError, UsageError, UsageTypeError
from ..orm.fields import parse_datetime
from ..orm.serializer import register_upstream_names
from ..remote.rest import normalize_row
from ..resources import EVENT_LOG, JOB
from ..schemas import SessionAcquire, SessionCreate, SessionOut
from ..schemas._enums import JobState
from ..utc import now
from .host import Host, default_client

if TYPE_CHECKING:
    from ..orm.job import Job

RUNNABLE = frozenset({JobState.preprocessed, JobState.restart_ready})
PATH = "/sessions/"


class SessionManager:
    """``Session.objects``: sessions of one client, straight from the server."""

    def __init__(self, model: type[Session], client: Host) -> None:
        self.model = model
        self.client = client

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        if self.client.gateway.offline:
            raise OfflineError(
                "Sessions lock jobs on the server and need it: they are not available offline "
                "(BALSAM_SYNC_OFFLINE=1)"
            )
        return self.client.transport.request(method, path, **kw)

    def create(self, site_id: int, batch_job_id: int | None = None) -> Session:
        """Open a session at a site (optionally for a batch job) and return it."""
        session = self.model(site_id, batch_job_id)
        session.save()
        return session

    def all(self) -> SessionQuery:
        """A lazy query over every session of this user."""
        return SessionQuery(self)

    def filter(self, id: int | list[int] | None = None) -> SessionQuery:
        """A lazy query over the sessions with these ids (a list of ids, or one)."""
        return self.all().filter(id=id)

    def get(self, id: int | list[int] | None = None) -> Session:
        """The one session with this id (``Session.DoesNotExist`` when there is none)."""
        return self.all().get(id=id)

    def count(self) -> int:
        return self.all().count()

    def first(self) -> Session:
        return self.all().first()

    def bulk_create(self, sessions: list[Session]) -> list[Session]:
        raise NotOffered("The Session API does not offer bulk_create")

    def bulk_update(self, sessions: list[Session]) -> None:
        raise NotOffered("The Session API does not offer bulk_update")

    def _list(self, ids: list[int] | None) -> list[Session]:
        """Sessions from the server: all of them, or those with ``ids`` (none when empty)."""
        if ids is not None and not ids:
            return []
        params = [("id", str(i)) for i in ids or []]
        body = self._request("GET", PATH, params=params)
        return [self.model._from_api(row) for row in body["results"]]

    def _save(self, session: Session) -> None:
        body = self._request("POST", PATH, json_body=session._payload)
        session._set(body)

    def _acquire(self, session: Session, acquire: dict[str, Any]) -> list[Job]:
        sent = now()
        rows = self._request("POST", f"{PATH}{session._saved_id()}", json_body=acquire)
        rows = [normalize_row(JOB, row) for row in rows or []]
        self.client.mirror.jobs_acquired(rows, read_at=sent)
        return [self.client.Job._from_row(row) for row in rows]  # type: ignore[misc]

    def _tick(self, session: Session) -> None:
        self._request("PUT", f"{PATH}{session._saved_id()}")

    def _delete(self, session: Session) -> None:
        self._request("DELETE", f"{PATH}{session._saved_id()}")
        # The server timed out the session's running jobs (and logged it): unseen changes.
        self.client.mirror.server_changed(JOB.name, EVENT_LOG.name)


class SessionQuery:
    """``Session.objects.all()`` / ``.filter(id=...)``: lazy, listed from the server once.

    Like upstream's query: ``len()``, iteration, indexing and slicing, ``count()``,
    ``first()``, ``get()``; sessions have no bulk update or delete (``NotOffered``, a
    ``NotImplementedError``). Offline, evaluating it raises ``OfflineError``.
    """

    def __init__(self, manager: SessionManager, ids: list[int] | None = None) -> None:
        self._manager = manager
        self._ids = ids
        self._cache: list[Session] | None = None

    def _fetch(self) -> list[Session]:
        if self._cache is None:
            self._cache = self._manager._list(self._ids)
        return self._cache

    def __repr__(self) -> str:
        return f"<SessionQuery {self._fetch()!r}>"

    def __len__(self) -> int:
        return len(self._fetch())

    def __bool__(self) -> bool:
        return bool(self._fetch())

    def __iter__(self) -> Iterator[Session]:
        return iter(self._fetch())

    @overload
    def __getitem__(self, k: int) -> Session: ...

    @overload
    def __getitem__(self, k: slice) -> list[Session]: ...

    def __getitem__(self, k: int | slice) -> Session | list[Session]:
        if not isinstance(k, int | slice):
            raise UsageTypeError(f"Query indices must be integers or slices, not {k!r}")
        return self._fetch()[k]

    def all(self) -> SessionQuery:
        return SessionQuery(self._manager, self._ids)

    def filter(self, id: int | list[int] | None = None) -> SessionQuery:
        """Narrow to the sessions with these ids (successive filters intersect)."""
        if id is None:
            return self.all()
        ids = [id] if isinstance(id, int) else list(id)
        if self._ids is not None:
            ids = [i for i in ids if i in self._ids]
        return SessionQuery(self._manager, ids)

    def count(self) -> int:
        return len(self._fetch())

    def first(self) -> Session:
        """The first session; IndexError when there is none (as upstream)."""
        return self[0]

    def get(self, id: int | list[int] | None = None) -> Session:
        """The one matching session (``Session.DoesNotExist``, ``MultipleObjectsReturned``)."""
        found = self.filter(id=id)._fetch()
        if not found:
            raise self._manager.model.DoesNotExist(f"No Session matched id={id}")
        if len(found) > 1:
            raise self._manager.model.MultipleObjectsReturned(f"{len(found)} Sessions matched")
        return found[0]

    def update(self, **fields: Any) -> None:
        raise NotOffered("The Session API does not offer bulk updates")

    def delete(self) -> None:
        raise NotOffered("The Session API does not offer bulk deletes; delete each session")


class _Access:
    def __get__(self, obj: Session | None, owner: type[Session]) -> SessionManager:
        client = owner._client
        if client is None:
            client = default_client()
        return SessionManager(owner, client)


class Session:
    """A launcher session at a Site: acquires runnable jobs and keeps them locked."""

    objects: ClassVar[_Access] = _Access()
    _client: ClassVar[Host | None] = None

    class DoesNotExist(UsageError):
        """No session has that id."""

    class MultipleObjectsReturned(UsageError):
        """Several sessions matched where one was expected."""

    id: int | None
    site_id: int
    batch_job_id: int | None
    heartbeat: datetime | None

    def __init__(self, site_id: int, batch_job_id: int | None = None, **kwargs: Any) -> None:
        try:
            checked = SessionCreate(site_id=site_id, batch_job_id=batch_job_id, **kwargs)
        except ValidationError as exc:
            raise UsageError(f"invalid Session: {exc.errors()[0]['msg']}") from exc
        self._payload = checked.model_dump(mode="json")
        self._state = "creating"
        self.id = None
        self.site_id = checked.site_id
        self.batch_job_id = checked.batch_job_id
        self.heartbeat = None

    @classmethod
    def _from_api(cls, row: dict[str, Any]) -> Session:
        session = cls.__new__(cls)
        session._payload = {}
        session._set(row)
        return session

    def _set(self, row: dict[str, Any]) -> None:
        out = SessionOut.model_validate(row)
        self.id, self.site_id, self.batch_job_id = out.id, out.site_id, out.batch_job_id
        self.heartbeat = parse_datetime(out.heartbeat)
        self._state = "clean"

    def _saved_id(self) -> int:
        if self.id is None:
            raise AttributeError("Cannot use a Session before it is saved")
        return self.id

    def __repr__(self) -> str:
        return (
            f"Session(id={self.id}, site_id={self.site_id}, batch_job_id={self.batch_job_id}, "
            f"heartbeat={self.heartbeat})"
        )

    def save(self) -> None:
        """Create the session on the server (sessions have no updatable fields)."""
        if self._state == "creating":
            type(self).objects._save(self)

    def acquire_jobs(
        self,
        max_num_jobs: int,
        max_wall_time_min: int | None = None,
        max_nodes_per_job: int | None = None,
        max_aggregate_nodes: float | None = None,
        serial_only: bool = False,
        sort_by: str | None = None,
        filter_tags: dict[str, str] | None = None,
        states: set[JobState] | set[str] = RUNNABLE,  # type: ignore[assignment]
        app_ids: set[int] | None = None,
    ) -> list[Job]:
        """Lock up to ``max_num_jobs`` runnable jobs to this session and return them."""
        fields = {k: v for k, v in locals().items() if k != "self"}
        fields["filter_tags"] = filter_tags or {}
        fields["app_ids"] = app_ids or set()
        try:
            body = SessionAcquire.model_validate(fields).model_dump(mode="json")
        except ValidationError as exc:
            raise UsageError(f"acquire_jobs: {exc.errors()[0]['msg']}") from exc
        return type(self).objects._acquire(self, body)

    def tick(self) -> None:
        """Send the heartbeat (a session without one for 5 minutes is swept by the server)."""
        type(self).objects._tick(self)

    def delete(self) -> None:
        """End the session: its jobs are unlocked (running ones become RUN_TIMEOUT)."""
        type(self).objects._delete(self)
        self.id = None

    def refresh_from_db(self) -> None:
        """Reload the session (its heartbeat) from the server."""
        fresh = type(self).objects.get(id=self._saved_id())
        self.site_id, self.batch_job_id, self.heartbeat = (
            fresh.site_id,
            fresh.batch_job_id,
            fresh.heartbeat,
        )


register_upstream_names("balsam._api.models", {"Session": Session})

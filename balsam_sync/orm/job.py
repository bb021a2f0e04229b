"""The Job class (fields, parameters, results, App resolution, transfer short forms) and
``Job.objects``: the common manager plus upstream's Job helpers (wait, as_completed)."""

from __future__ import annotations

import concurrent.futures
import posixpath
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from pydantic import BaseModel

from .. import resources
from ..errors import UsageError, UsageTypeError
from ..freshness import USE_CLIENT_DEFAULT, PolicyArg, ReadMode, ReadPolicy
from ..schemas import JobState
from ..schemas.attrs import JobAttrs
from ..spec import QuerySpec
from .manager import Manager, ManagerAccess
from .models import Model
from .records import App
from .serializer import deserialize, register_upstream_names, serialize_plain

if TYPE_CHECKING:
    from .query import Query

DONE_STATES = frozenset({JobState.job_finished, JobState.failed})
_CLIENT_ARGS = ("site_name", "parameters")
"""Constructor arguments that are not wire fields, placed where upstream's constructor has them:
after the fields every Job has, before ``parent_ids`` and ``transfers``."""


def _relative(value: Any) -> str | None:
    text = str(value)
    if posixpath.isabs(text):
        return f"must be relative to the site's data/ folder, got the absolute path {text!r}"
    return None if text and text != "." else "must not be empty"


def encode_parameters(params: dict[str, Any]) -> str:
    """Serialize a parameters dict the way upstream does (base64 of a dill pickle)."""
    if not isinstance(params, dict):
        raise UsageTypeError(f"Job parameters must be a dict, not {type(params).__name__}")
    return serialize_plain(params)


_DONE = frozenset({"JOB_FINISHED", "FAILED"})

_RECENT = ReadPolicy(ReadMode.FRESH)
"""How a constructor looks an App name up: the mirror when it (or an earlier answer to the
same name) was confirmed within the client's max_age, else the server. A loop building
thousands of jobs of one App asks the server once, not once per job as upstream does."""


class JobWaitResult(NamedTuple):
    done: list[Job]
    not_done: list[Job]


class JobManager(Manager["Job"]):
    """Manager of Job: queries and writes, plus the Future-like helpers of upstream."""

    def bulk_refresh(self, jobs: Sequence[Job]) -> None:
        """Reload every saved job of ``jobs`` from the server (the mirror when offline)."""
        by_id = {job.id: job for job in jobs if job.id is not None}
        if not by_id:
            return
        for fetched in self.filter(id=list(by_id)).fresh(0):
            assert fetched.id is not None
            by_id[fetched.id]._load(dict(fetched._decoded()))

    def wait(
        self,
        jobs: Sequence[Job],
        timeout: float | None = None,
        poll_interval: float = 1.0,
        return_when: str = "ALL_COMPLETED",
    ) -> JobWaitResult:
        """Poll until all jobs (or, ``FIRST_COMPLETED``, any) finished or failed, or timeout."""
        start = time.time()
        done = [job for job in jobs if job.state in _DONE]
        pending = [job for job in jobs if job.state not in _DONE]

        def finished() -> bool:
            late = timeout is not None and time.time() - start > timeout
            return late or (not pending if return_when == "ALL_COMPLETED" else bool(done))

        while not finished():
            time.sleep(poll_interval)
            self.bulk_refresh(pending)
            done.extend(job for job in pending if job.state in _DONE)
            pending[:] = [job for job in pending if job.state not in _DONE]
        return JobWaitResult(done=done, not_done=pending)

    def as_completed(
        self, jobs: Sequence[Job], timeout: float | None = None, poll_interval: float = 1.0
    ) -> Iterator[Job]:
        """Yield jobs as they finish or fail; ``TimeoutError`` after ``timeout`` seconds."""
        start = time.time()
        pending = []
        for job in jobs:
            if job.state in _DONE:
                yield job
            else:
                pending.append(job)
        while pending and (timeout is None or time.time() - start <= timeout):
            time.sleep(poll_interval)
            self.bulk_refresh(pending)
            yield from (job for job in pending if job.state in _DONE)
            pending = [job for job in pending if job.state not in _DONE]
        if pending:
            raise FuturesTimeout(f"{len(pending)} Jobs are still pending after {timeout} sec.")

    def _resolve_app_id(
        self, name: str, site_name: str | None, policy: PolicyArg = USE_CLIENT_DEFAULT
    ) -> int:
        """The id of the App named ``name`` (at the site named ``site_name``, when given).

        Raises:
            App.DoesNotExist: no such App (as upstream raises).
            App.MultipleObjectsReturned: Apps of that name at several sites, none chosen.
        """
        filters = {"name": name, **({"site_name": site_name} if site_name else {})}
        spec = QuerySpec(resources.APP.name).with_filters(filters)
        rows = self._gateway.fetch(resources.APP, spec, policy).dicts()
        where = f" at site {site_name!r}" if site_name else ""
        if not rows:
            raise App.DoesNotExist(f"no App named {name!r}{where}")
        if len(rows) > 1:
            raise App.MultipleObjectsReturned(
                f"App {name!r} exists at several sites: pass site_name= to choose"
            )
        app_id: int = rows[0]["id"]
        return app_id

    def _app_site_id(self, app_id: int) -> Any:
        spec = QuerySpec(resources.APP.name).with_filters({"id": [app_id]})
        rows = self._gateway.fetch(resources.APP, spec, USE_CLIENT_DEFAULT).dicts()
        if not rows:
            raise ValueError(f"no App with id {app_id}")
        return rows[0]["site_id"]


_app_loader: Callable[[int], type[Any]] | None = None


def set_app_loader(loader: Callable[[int], type[Any]]) -> None:
    """How ``job.app`` loads an ApplicationDefinition by App id (set by ``balsam_sync.client``:
    the compat layer, which builds Jobs, sits above this module)."""
    global _app_loader
    _app_loader = loader


class _JobManagerAccess(ManagerAccess):
    def __get__(self, obj: Any, owner: Any) -> JobManager:  # type: ignore[override]
        manager = super().__get__(obj, owner)
        assert isinstance(manager, JobManager)
        return manager


class Job(Model, JobAttrs):
    """A unit of work: one run of an App in its own working directory."""

    __slots__ = ("_app_name",)
    _resource = resources.JOB
    _manager_class = JobManager
    _client_only = frozenset(_CLIENT_ARGS)
    _hidden: ClassVar[dict[str, str]] = {"tags": resources.MARKER_KEY}
    _rules: ClassVar[dict[str, Any]] = {"workdir": _relative}
    objects: ClassVar[_JobManagerAccess] = _JobManagerAccess()
    _app_name: tuple[str, str | None] | None

    class NoResult(ValueError):
        """The Job has reported neither a return value nor an exception yet."""

    @classmethod
    def _constructor_order(cls, schema: type[BaseModel]) -> tuple[str, ...]:
        order = [n for n in super()._constructor_order(schema) if n != "serialized_parameters"]
        at = order.index("parent_ids")
        return (*order[:at], *_CLIENT_ARGS, *order[at:])

    def __init__(self, *args: Any, **fields: Any) -> None:
        """Build an unsaved Job; an App given by name is looked up now, as upstream does.

        Raises:
            App.DoesNotExist: no App of that name (at that site).
            App.MultipleObjectsReturned: Apps of that name at several sites, none chosen.
            NoEvidence: offline, and the mirror cannot tell (never pulled).
        """
        super().__init__(*args, **fields)
        if self._app_name is not None:
            name, site_name = self._app_name
            self._data["app_id"] = type(self).objects._resolve_app_id(name, site_name, _RECENT)
        self._app_name = None

    def _prepare_create(self, fields: dict[str, Any]) -> dict[str, Any]:
        params = fields.pop("parameters", None)
        site_name = fields.pop("site_name", None)
        fields["serialized_parameters"] = encode_parameters(params if params is not None else {})
        self._app_name = None
        app = fields.get("app_id")
        if isinstance(app, str):
            # Looked up once the other fields are checked (bad input fails before a request).
            self._app_name = (app, site_name)
            fields["app_id"] = 0
        elif isinstance(app, type):
            fields["app_id"] = _registered_id(app)
        transfers = fields.get("transfers")
        if isinstance(transfers, dict):
            fields["transfers"] = {k: _transfer_item(k, v) for k, v in transfers.items()}
        return fields

    def get_parameters(self) -> dict[str, Any]:
        """Return the job's parameters (unpickled: only for data you trust)."""
        raw = self._read("serialized_parameters")
        if not raw:
            return {}
        value = deserialize(raw)
        if not isinstance(value, dict):
            raise ValueError(
                f"Deserialized Job parameters are of type {type(value)}; must be dict."
            )
        return value

    def set_parameters(self, params: dict[str, Any]) -> None:
        """Replace the job's parameters (sent on the next save)."""
        self._write("serialized_parameters", encode_parameters(params))

    parameters = property(get_parameters, set_parameters, doc="The job's parameters dict.")

    def result_nowait(self) -> Any:
        """The value ``run()`` returned, or raise the exception it raised (``NoResult``: none)."""
        ret = self._read("serialized_return_value")
        exc = self._read("serialized_exception")
        if ret:
            return deserialize(ret)
        if exc:
            error, traceback = deserialize(exc)
            raise error.with_traceback(traceback.as_traceback() if traceback else None)
        raise Job.NoResult("No return value or exception has been reported")

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish, then as ``result_nowait()``."""
        done = type(self).objects.wait([self], timeout=timeout)
        if not done.done:
            raise concurrent.futures.TimeoutError(
                f"Job is still {self.state} after {timeout} sec timeout"
            )
        return self.result_nowait()

    @property
    def app(self) -> type[Any]:
        """The ApplicationDefinition class of this job's App (unpickled)."""
        if _app_loader is None:
            raise RuntimeError("balsam_sync.client was not imported")
        return _app_loader(self._saved_app_id())

    @property
    def site_id(self) -> int:
        """The id of the Site of this job's App."""
        site_id: int | None = type(self).objects._app_site_id(self._saved_app_id())
        assert site_id is not None
        return site_id

    def _saved_app_id(self) -> int:
        app_id = self.app_id
        if app_id is None:
            raise ValueError("Cannot fetch by app ID; is None")
        return int(app_id)

    def parent_query(self) -> Query[Job]:
        """Return a query over this job's parents."""
        query: Query[Job] = type(self).objects.filter(id=list(self.parent_ids or ()))
        return query

    def resolve_workdir(self, data_path: str | Path) -> Path:
        """Return the job's working directory under a site's ``data/`` folder."""
        return Path(data_path) / str(self.workdir)

    def done(self) -> bool:
        """Reload the job and say whether it finished or failed."""
        self.refresh_from_db()
        return self.state in DONE_STATES


register_upstream_names("balsam._api.models", {"Job": Job})


def _registered_id(app: type) -> int:
    """The id of an ApplicationDefinition class (``app_id=MyApp``)."""
    if "_app_type" not in dir(app):
        raise UsageTypeError(f"app_id takes an App id, name or ApplicationDefinition, not {app}")
    app_id: int | None = getattr(app, "__app_id__", None)
    if app_id is None:
        raise UsageError(
            f"Cannot resolve ID from ApplicationDefinition {app}: __app_id__ is None. "
            "You need to app.sync() prior to creating Jobs with this app."
        )
    return app_id


def _transfer_item(slot: str, value: Any) -> Any:
    """Accept the short form ``"alias:/abs/path"`` for a transfer (split at the first colon)."""
    if not isinstance(value, str):
        return value
    alias, sep, path = value.partition(":")
    if not sep or not alias:
        raise UsageError(f"transfer {slot!r}: expected 'alias:/absolute/path', got {value!r}")
    if not posixpath.isabs(path):
        raise UsageError(f"transfer {slot!r}: the path must be absolute, got {path!r}")
    return {"location_alias": alias, "path": path}

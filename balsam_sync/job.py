"""The Job class: fields, plus parameters, App-name resolution and transfer short forms."""

from __future__ import annotations

import base64
import pickle
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from . import resources
from .errors import UsageError, UsageTypeError
from .models import Model
from .objects import all_of, max_length
from .schemas import JobState
from .schemas.attrs import JobAttrs

if TYPE_CHECKING:
    from .query import Query

DONE_STATES = frozenset({JobState.JOB_FINISHED, JobState.FAILED})
RUNNABLE_STATES = frozenset({JobState.PREPROCESSED, JobState.RESTART_READY})


def _relative(value: Any) -> str | None:
    text = str(value)
    if posixpath.isabs(text):
        return f"must be relative to the site's data/ folder, got the absolute path {text!r}"
    return None if text else "must not be empty"


def encode_parameters(params: dict[str, Any]) -> str:
    """Pickle a parameters dict the way upstream does (base64; dill reads plain pickles)."""
    if not isinstance(params, dict):
        raise UsageTypeError(f"Job parameters must be a dict, not {type(params).__name__}")
    return base64.b64encode(pickle.dumps(params)).decode()


class Job(Model, JobAttrs):
    """A unit of work: one run of an App in its own working directory."""

    __slots__ = ()
    _resource = resources.JOB
    _client_only = frozenset({"parameters", "site_name"})
    _hidden: ClassVar[dict[str, str]] = {"tags": resources.MARKER_KEY}
    _rules: ClassVar[dict[str, Any]] = {
        "workdir": all_of(_relative, max_length(256)),
        "serialized_parameters": max_length(512000),
        "serialized_return_value": max_length(512000),
        "serialized_exception": max_length(512000),
    }

    def _prepare_create(self, fields: dict[str, Any]) -> dict[str, Any]:
        params = fields.pop("parameters", None)
        site_name = fields.pop("site_name", None)
        fields["serialized_parameters"] = encode_parameters(params if params is not None else {})
        if isinstance(fields.get("app_id"), str):
            fields["app_id"] = type(self).objects._resolve_app_id(fields["app_id"], site_name)
        transfers = fields.get("transfers")
        if isinstance(transfers, dict):
            fields["transfers"] = {k: _transfer_item(k, v) for k, v in transfers.items()}
        return fields

    def get_parameters(self) -> dict[str, Any]:
        """Return the job's parameters (unpickled: only for data you trust)."""
        raw = self._read("serialized_parameters")
        if not raw:
            return {}
        value = pickle.loads(base64.b64decode(raw))
        return value if isinstance(value, dict) else {}

    def set_parameters(self, params: dict[str, Any]) -> None:
        """Replace the job's parameters (sent on the next save)."""
        self._write("serialized_parameters", encode_parameters(params))

    parameters = property(get_parameters, set_parameters, doc="The job's parameters dict.")

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

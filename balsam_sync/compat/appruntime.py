"""What ApplicationDefinition does through the API: find its Site, register it, submit Jobs.

Kept apart from ``appdef.py`` so the class that gets pickled holds only what upstream's holds.
The models are the default client's (``balsam_sync.api``) unless ``_set_client`` chose one.
"""

from __future__ import annotations

import json
import logging
import shlex
from types import SimpleNamespace
from typing import Any

from ..orm.job import Job
from ..orm.records import App, Site
from ..orm.serializer import SerializeError

AppDef = type[Any]
"""An ApplicationDefinition subclass (appdef.py imports this module, so it is not imported here)."""

log = logging.getLogger(__name__)
_UNBOUND = SimpleNamespace(Site=Site, App=App, Job=Job)
"""The model classes of the default client (``balsam_sync.api``'s)."""


def _models(cls: Any) -> Any:
    """The object whose ``Site``, ``App`` and ``Job`` this ApplicationDefinition uses."""
    return cls._client if cls._client is not None else _UNBOUND


def _site_type(cls: Any) -> type[Site]:
    site: type[Site] = _models(cls).Site
    return site


def _app_type(cls: Any) -> type[App]:
    app: type[App] = _models(cls).App
    return app


def resolve_site_id(cls: AppDef) -> int:
    """The id of ``cls.site`` (name, id or Site), remembered on the class."""
    known: int | None = cls._site_id
    if known is not None and known > 0:
        return known
    site = cls.site
    if isinstance(site, str):
        found = _site_type(cls).objects.get(name=site).id
    elif isinstance(site, Site):
        found = site.id
        if found is None:
            raise ValueError(f"{cls.__name__}.site does not have an ID set: {site}")
    elif isinstance(site, int) and not isinstance(site, bool):
        found = site
    else:
        raise ValueError(
            f"{cls.__name__}.site must be a string, integer, or Site object. Got: {type(site)}"
        )
    assert found is not None
    cls._site_id = found
    return found


def load_by_site(base: AppDef, site: Any) -> dict[str, AppDef]:
    if isinstance(site, bool) or not isinstance(site, int | str | Site):
        raise ValueError("site must be an int, str, or Site object.")
    if isinstance(site, Site):
        lookup: dict[str, Any] = {"site_id": site.id}
    else:
        lookup = {"site_id": site} if isinstance(site, int) else {"site_name": site}
    apps = {}
    for app in _app_type(base).objects.filter(**lookup):
        apps[app.name] = base.from_serialized(app)
        assert app.id is not None
        base._app_id_cache[app.id] = apps[app.name]
    return apps


def load_by_name(cls: AppDef, app_name: str, site_name: str | None) -> AppDef:
    key = (site_name, app_name)
    if key not in cls._app_name_cache:
        filters = {"name": app_name, **({"site_name": site_name} if site_name else {})}
        app = _app_type(cls).objects.get(**filters)
        assert app.id is not None
        found = cls.from_serialized(app)
        cls._app_name_cache[key] = found
        cls._app_id_cache[app.id] = found
    cached: AppDef = cls._app_name_cache[key]
    return cached


def load_by_id(cls: AppDef, app_id: int) -> AppDef:
    if app_id not in cls._app_id_cache:
        cls._app_id_cache[app_id] = cls.from_serialized(_app_type(cls).objects.get(id=app_id))
    cached: AppDef = cls._app_id_cache[app_id]
    return cached


def sync(cls: AppDef, rename_from: str | None) -> None:
    """Create the App of ``cls``, or update the App of that (or the old) name at its site."""
    try:
        fields = cls.to_dict()
    except SerializeError as exc:
        log.error("Please fix %s: can't serialize class due to: %s", cls.__name__, exc)
        raise
    model = _app_type(cls)
    name = rename_from or fields["name"]
    existing: App | None
    try:
        existing = model.objects.get(site_id=fields["site_id"], name=name)
    except model.DoesNotExist:
        if rename_from:
            raise
        existing = None
    if existing is None:
        app = model.objects.create(**fields)
        log.info("Created new App(id=%s, name=%s)", app.id, fields["name"])
    else:
        app = existing
        current = app.to_dict()
        for key, value in fields.items():
            if _wire(current.get(key)) != _wire(value):
                setattr(app, key, value)
        app.save()
        log.info("Updated App(id=%s, name=%s)", app.id, fields["name"])
    assert app.id is not None
    cls.__app_id__ = app.id
    cls._app_id_cache[app.id] = cls


def _wire(value: Any) -> Any:
    """A value as JSON text, to compare what the server holds with what we would send."""
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


def app_id_of(cls: AppDef) -> int:
    """The App's id: ``sync()`` first if it has none; a provisional id turns into the real one."""
    if cls.__app_id__ is None:
        cls.sync()
    app_id: int | None = cls.__app_id__
    assert app_id is not None
    if app_id < 0:
        app_id = _app_type(cls).objects.real_id(app_id)
        cls.__app_id__ = app_id
    return app_id


def submit(cls: AppDef, fields: dict[str, Any], params: dict[str, Any], save: bool) -> Job:
    job_type: type[Job] = _models(cls).Job
    job = job_type(**fields, app_id=app_id_of(cls), parameters=params)
    if save:
        job.save()
    return job


def wire_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """App parameters as the server stores them: defaults and help as text (pydantic v1 did)."""
    out = {}
    for name, spec in parameters.items():
        spec = dict(spec)
        if spec.get("default") is not None:
            spec["default"] = str(spec["default"])
        if "help" in spec:
            spec["help"] = str(spec["help"])
        out[name] = spec
    return out


def pyrunner_command(app: Any) -> str:
    """The command that runs a Python App's ``run()`` through upstream's runner on the site."""
    app_id = app.__app_id__
    payload = app._serialized_class
    if app_id is None or payload is None:
        raise ValueError("this App is not registered: call sync() or load it first")
    size = app.ARG_CHUNK_SIZE
    chunks = [shlex.quote(payload[i : i + size]) for i in range(0, len(payload) + 1, size)]
    job_payload = json.dumps(app.job.to_dict(), default=str)
    job_chunks = [
        shlex.quote(job_payload[i : i + size]) for i in range(0, len(job_payload) + 1, size)
    ]
    args = f"{int(app_id)} {len(chunks)} {' '.join(chunks)} {' '.join(job_chunks)}"
    return f"{app.python_exe} -m balsam.site.launcher.python_runner {args}"

"""``ApplicationDefinition``: upstream's way to define Apps, register them and submit Jobs.

A subclass declares a ``site`` and either a Jinja2 ``command_template`` or a Python ``run()``;
``sync()`` registers it as an App (serialized as upstream does, so the upstream site agent
loads and runs it) and ``submit()`` creates Jobs of it. Both are ordinary writes: offline they
are queued in the outbox like any ``save()``, and the App gets a provisional id until the
server assigns one. The class behaviour is upstream's (``balsam/_api/app.py``); the lookups go
through balsam_sync's managers, so they read the mirror when the policy allows.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import jinja2
import jinja2.meta

from ..orm.serializer import deserialize, get_source, register_upstream_names, serialize
from ..schemas import JobState
from . import appruntime
from .host import Host

if TYPE_CHECKING:
    from ..orm.job import Job

PARAM_PATTERN = re.compile(r"{{(.*?)}}")
log = logging.getLogger(__name__)
# Class attributes that describe one registration, not the App: never pickled into it.
_TRANSIENT = ("__app_id__", "_serialized_class")


class AppType(str, Enum):
    """What an App runs: a shell command template or a Python function."""

    SHELL_CMD = "SHELL_CMD"
    PY_FUNC = "PY_FUNC"


def is_appdef(attr: Any) -> bool:
    """True for a subclass of ApplicationDefinition (not the base itself)."""
    return (
        isinstance(attr, type)
        and issubclass(attr, ApplicationDefinition)
        and attr.__name__ != "ApplicationDefinition"
    )


def detect_template_parameters(command_template: str) -> set[str]:
    """The undeclared variables of a Jinja2 template."""
    found: set[str] = jinja2.meta.find_undeclared_variables(
        jinja2.Environment().parse(command_template)
    )
    return found


def _check_template(name: str, template: str, parameters: dict[str, Any]) -> None:
    if not all(p.strip().isidentifier() for p in PARAM_PATTERN.findall(template)):
        raise AttributeError(
            f"ApplicationDefinition {name} command_template parameters must be valid "
            "Python identifiers"
        )
    for param_name, param in parameters.items():
        if "required" not in param:
            raise AttributeError(
                f"ApplicationDefinition parameter {param_name} must set 'required' key as "
                "True/False"
            )
        if not param["required"] and param.get("default") is None:
            raise AttributeError(
                f"ApplicationDefinition optional parameter {param_name} must set a 'default' "
                "str value"
            )


def _from_signature(param: inspect.Parameter) -> dict[str, Any]:
    ann = param.annotation
    help_text = (getattr(ann, "__name__", None) or str(ann)) if ann else ""
    if param.default is inspect.Parameter.empty:
        return {"required": True, "default": None, "help": help_text}
    return {"required": False, "default": param.default, "help": help_text}


class ApplicationDefinitionMeta(type):
    """Checks and completes each ApplicationDefinition subclass as it is defined."""

    command_template: str
    parameters: dict[str, Any]
    _default_params: dict[str, Any]
    _app_type: AppType
    _client: Host | None

    def __new__(
        mcls, name: str, bases: tuple[Any, ...], attrs: dict[str, Any]
    ) -> ApplicationDefinitionMeta:
        attrs["parameters"] = attrs.pop("parameters", {}).copy()
        cls = super().__new__(mcls, name, bases, attrs)
        if not bases:
            return cls
        if "site" not in attrs:
            raise AttributeError(
                f"ApplicationDefinition {name} must contain the `site` attribute, set to a site "
                "id, name, or Site object"
            )
        has_template = isinstance(getattr(cls, "command_template", None), str)
        has_run = callable(getattr(cls, "run", None))
        if has_template and has_run:
            raise AttributeError(
                f"ApplicationDefinition {name} must not define both `run` function and "
                "`command_template`"
            )
        if has_template:
            return cls._setup_shell_app()
        if has_run:
            return cls._setup_py_app()
        raise AttributeError(
            f"ApplicationDefinition {name} must define either a `run` function or a "
            "`command_template`"
        )

    def _setup_shell_app(cls) -> ApplicationDefinitionMeta:
        cls._app_type = AppType.SHELL_CMD
        cls.command_template = cls.command_template.strip()
        _check_template(cls.__name__, cls.command_template, cls.parameters)
        detected = detect_template_parameters(cls.command_template)
        extraneous = set(cls.parameters) - detected
        if extraneous:
            raise AttributeError(
                f"App has extraneous keys in the `parameters` dictionary: {extraneous}\n"
                f"parameters dict: {set(cls.parameters)}\n"
                f"Detected parameters in command_template: {detected}"
            )
        for param in detected - set(cls.parameters):
            cls.parameters[param] = {"required": True, "default": None, "help": ""}
        cls._default_params = {
            k: v["default"] for k, v in cls.parameters.items() if not v["required"]
        }
        return cls

    def _setup_py_app(cls) -> ApplicationDefinitionMeta:
        cls._app_type = AppType.PY_FUNC
        signature = inspect.signature(cls.run)  # type: ignore[attr-defined]
        if "self" not in signature.parameters:
            raise TypeError(
                f"ApplicationDefinition {cls.__name__}.run{signature} is missing the `self` "
                "argument"
            )
        cls.parameters = {
            name: _from_signature(p) for name, p in signature.parameters.items() if name != "self"
        }
        return cls

    @property
    def source_code(cls) -> str:
        """The class's source text, as upstream records it."""
        return get_source(cls)


class ApplicationDefinition(metaclass=ApplicationDefinitionMeta):
    """Base class of user Apps (see the module docstring and upstream's user guide)."""

    class ModuleLoadError(Exception):
        pass

    ARG_CHUNK_SIZE: ClassVar[int] = 128_000
    environment_variables: ClassVar[dict[str, str]] = {}
    command_template: ClassVar[str]
    parameters: ClassVar[dict[str, Any]] = {}
    transfers: ClassVar[dict[str, Any]] = {}
    cleanup_files: ClassVar[list[str]] = []
    _default_params: ClassVar[dict[str, Any]]
    site: ClassVar[Any]
    python_exe: ClassVar[str] = sys.executable
    _site_id: ClassVar[int | None] = None
    _client: ClassVar[Host | None] = None
    _app_type: ClassVar[AppType]
    __app_id__: ClassVar[int | None] = None
    _app_name_cache: ClassVar[dict[tuple[str | None, str], type[ApplicationDefinition]]] = {}
    _app_id_cache: ClassVar[dict[int, type[ApplicationDefinition]]] = {}
    _serialized_class: ClassVar[str | None] = None

    @staticmethod
    def _set_client(client: Host | None) -> None:
        """Use ``client`` (a ``balsam_sync.Client``) instead of the default client."""
        ApplicationDefinition._client = client

    def __init__(self, job: Job) -> None:
        self.job = job

    # -- what the site agent calls for each Job ------------------------------------------------

    def get_arg_str(self) -> str:
        """The command line of this Job: the rendered template, or the Python runner."""
        if self._app_type == AppType.SHELL_CMD:
            return self._render_shell_command()
        return appruntime.pyrunner_command(self)

    def get_environ_vars(self) -> dict[str, str]:
        envs = os.environ.copy()
        envs.update(self.environment_variables)
        envs["BALSAM_JOB_ID"] = str(self.job.id)
        if self.job.threads_per_rank > 1:
            envs["OMP_NUM_THREADS"] = str(self.job.threads_per_rank)
        return envs

    def _render_shell_command(self) -> str:
        """The command with every parameter shell-quoted (split it with ``shlex.split``)."""
        arg_dict = {**self._default_params, **self.job.get_parameters()}
        missing = set(self.parameters).difference(arg_dict)
        if missing:
            raise ValueError(f"Missing required args: {missing} (only got: {arg_dict})")
        args = {key: shlex.quote(str(arg_dict[key])) for key in self.parameters}
        rendered: str = jinja2.Template(self.command_template).render(args)
        return rendered

    def preprocess(self) -> None:
        self.job.state = JobState.preprocessed

    def postprocess(self) -> None:
        self.job.state = JobState.postprocessed

    def shell_preamble(self) -> str | list[str]:
        return []

    def handle_timeout(self) -> None:
        self.job.state = JobState.restart_ready

    def handle_error(self) -> None:
        self.job.state = JobState.failed

    # -- registration and lookup ---------------------------------------------------------------

    @classmethod
    def resolve_site_id(cls) -> int:
        """The id of ``site`` (a name, an id or a Site); a provisional id while offline."""
        return appruntime.resolve_site_id(cls)

    @staticmethod
    def load_by_site(site: Any) -> dict[str, type[ApplicationDefinition]]:
        """Every App registered at ``site`` (id, name or Site), by name."""
        return appruntime.load_by_site(ApplicationDefinition, site)

    @classmethod
    def load_by_name(
        cls, app_name: str, site_name: str | None = None
    ) -> type[ApplicationDefinition]:
        return appruntime.load_by_name(cls, app_name, site_name)

    @classmethod
    def load_by_id(cls, app_id: int) -> type[ApplicationDefinition]:
        return appruntime.load_by_id(cls, app_id)

    @classmethod
    def sync(cls, rename_from: str | None = None) -> None:
        """Register this class as an App of its site, or update the App of the same name."""
        appruntime.sync(cls, rename_from)

    @classmethod
    def submit(
        cls,
        workdir: str | Path,
        tags: dict[str, str] | None = None,
        data: dict[str, Any] | None = None,
        return_code: int | None = None,
        num_nodes: int = 1,
        ranks_per_node: int = 1,
        threads_per_rank: int = 1,
        threads_per_core: int = 1,
        launch_params: dict[str, str] | None = None,
        gpus_per_rank: float = 0,
        node_packing_count: int = 1,
        wall_time_min: int = 0,
        parent_ids: set[int] | None = None,
        transfers: dict[str, Any] | None = None,
        save: bool = True,
        **app_params: Any,
    ) -> Job:
        """Create a Job of this App (``sync()`` first if needed); ``save=False``: unsaved."""
        fields = {
            k: v
            for k, v in locals().items()
            if k not in ("cls", "save", "app_params", "__class__") and v is not None
        }
        return appruntime.submit(cls, fields, app_params, save)

    @classmethod
    def to_dict(cls) -> dict[str, Any]:
        """The App fields of this class (``serialized_class`` as upstream's site agent reads)."""
        site_id = cls.resolve_site_id()
        serialized = cls._serialize()
        cls._serialized_class = serialized
        return {
            "site_id": site_id,
            "name": cls.__name__,
            "serialized_class": serialized,
            "source_code": cls.source_code,
            "description": (cls.__doc__ or "").strip(),
            "parameters": appruntime.wire_parameters(cls.parameters),
            "transfers": cls.transfers,
        }

    @classmethod
    def _serialize(cls) -> str:
        """Pickle the class without its registration details (and no provisional site id)."""
        hidden = [n for n in _TRANSIENT if n in cls.__dict__]
        if cls.__dict__.get("_site_id") is not None and cls._site_id < 0:  # type: ignore[operator]
            hidden.append("_site_id")
        saved = {n: cls.__dict__[n] for n in hidden}
        for name in hidden:
            delattr(cls, name)
        try:
            return serialize(cls)
        finally:
            for name, value in saved.items():
                setattr(cls, name, value)

    @staticmethod
    def from_serialized(app: Any) -> type[ApplicationDefinition]:
        """The class an App holds (unpickled: only for Apps of your own account)."""
        if app.id is None:
            raise ValueError("Cannot deserialize App with id=None")
        cls = deserialize(app.serialized_class)
        if not is_appdef(cls):
            raise TypeError(f"Deserialized {cls!r} is not an ApplicationDefinition subclass")
        cls.__app_id__ = app.id
        cls._serialized_class = app.serialized_class
        return cls  # type: ignore[no-any-return]


register_upstream_names(
    "balsam._api.app",
    {
        "ApplicationDefinition": ApplicationDefinition,
        "ApplicationDefinitionMeta": ApplicationDefinitionMeta,
        "AppType": AppType,
    },
)

"""Rules of the code base itself: public surface, layering, exception mapping, no I/O at import."""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

import balsam_sync
import balsam_sync.api
from balsam_sync import errors
from balsam_sync.cache.filesystem import filesystem_type, on_network_fs
from balsam_sync.remote.transport.replies import REQUESTS_ERRORS
from balsam_sync.remote.transport.replies import mapped as _mapped

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "balsam_sync"


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "schemas" not in p.parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_public_surface_is_pinned() -> None:
    assert set(balsam_sync.__all__) == {
        "AUTO",
        "OFFLINE",
        "ONLINE",
        "Client",
        "ReadPolicy",
        "Settings",
        "__version__",
        "connect",
        "default_client",
        "errors",
        "fresh",
        "set_default_client",
    }
    assert {"App", "BatchJob", "EventLog", "Job", "Site", "TransferItem", "pull"} <= set(
        balsam_sync.api.__all__
    )


@pytest.mark.parametrize(
    ("library", "owners"),
    [
        ("requests", {"transport"}),
        ("click", {"cli"}),
        ("tqdm", {"cli"}),
        ("sqlite3", {"cache"}),
        ("sqlite_utils", {"cache"}),
        ("tenacity", {"outcomes.py"}),
        ("yaml", {"config.py"}),
    ],
)
def test_each_dependency_has_one_owner(library: str, owners: set[str]) -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in _modules()
        if library in _imports(p)
        and p.name not in owners
        and not (set(p.relative_to(PACKAGE).parts[:-1]) & owners)
    ]
    assert offenders == [], f"{library} imported outside {owners}: {offenders}"


LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        "balsam_sync api cli testing",  # the surface, the command line, test helpers
        "client",  # the composition root
        "compat",  # upstream's API beyond the models
        "orm",  # model -> manager -> query
        "gateway",  # where a read is answered; how a write is queued and sent
        "sync",  # replay, settlement, pulls, the daemon's loop, status
        "cache",  # SQLite: mirror, outbox, coverage, lock
        "remote",  # the REST API's semantics, HTTP transport, retries, auth
        "resources spec freshness utc config errors schemas",  # what every layer speaks
    )
)
"""The folders (and top-level modules) from top to bottom: each imports only from below."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere (functions, TYPE_CHECKING included)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in paths}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(
                    (base if node.level else []) + ([node.module] if node.module else [])
                )
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    found.add(sub if sub in paths else module)
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def _unit(module: str) -> str:
    """The folder or top-level module a module belongs to (``balsam_sync`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(unit: str) -> int:
    found = [i for i, layer in enumerate(LAYERS) if unit in layer]
    assert found, f"{unit} is in no layer of LAYERS"
    return found[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_folder_has_a_layer() -> None:
    units = {_unit(m) for m in _import_graph()}
    assert units == set().union(*LAYERS)


def test_imports_go_down_the_layers() -> None:
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in _import_graph().items()
        for b in targets
        if _layer(_unit(a)) > _layer(_unit(b))
    )
    assert upward == []


def test_no_import_cycles_between_modules() -> None:
    assert _cycles(_import_graph()) == []


def test_no_import_cycles_between_folders() -> None:
    units: dict[str, set[str]] = {}
    for a, targets in _import_graph().items():
        units.setdefault(_unit(a), set()).update(_unit(b) for b in targets if _unit(b) != _unit(a))
    assert _cycles(units) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _readme_layout() -> set[str]:
    """The files the README's layout section lists, as paths under balsam_sync/."""
    text = (ROOT / "README.md").read_text().split("## Layout (the data flow)", 1)[1]
    block = text.split("```", 2)[1]
    listed: set[str] = set()
    folder = ""
    for line in block.splitlines()[2:]:  # after the fence's language line and balsam_sync/
        if not line.strip():
            continue
        name = line.split()[0]
        indent = len(line) - len(line.lstrip())
        if indent == 2:
            folder = name if name.endswith("/") else ""
            listed.add(name)
        else:
            listed.add(folder + name)
    return listed


def test_the_readme_lists_every_module_in_its_layout() -> None:
    modules = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.relative_to(PACKAGE).parts[0] != "schemas"
    }
    folders = {str(p.relative_to(PACKAGE)) + "/" for p in PACKAGE.iterdir() if p.is_dir()}
    folders -= {"__pycache__/"}
    assert _readme_layout() == modules | folders


SQL_WORDS = ("SELECT ", "INSERT ", "UPDATE ", "DELETE FROM", "CREATE TABLE", "CREATE INDEX")


def test_sql_only_under_cache() -> None:
    offenders = []
    for path in _modules():
        if "cache" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                continue
            if any(word in node.value for word in SQL_WORDS):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def _outside_cache() -> list[tuple[Path, ast.Module]]:
    return [
        (p, ast.parse(p.read_text()))
        for p in _modules()
        if "cache" not in p.relative_to(PACKAGE).parts
    ]


def test_only_the_front_door_of_the_cache_is_imported() -> None:
    """Other layers import ``balsam_sync.cache`` (the door and its value types), never one of
    its modules."""
    offenders = []
    for path, tree in _outside_cache():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                name = node.module if node.level == 0 else "." * node.level + node.module
                if "cache." in name:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert offenders == []


PARTS = {"store", "outbox", "coverage", "pulls", "conn", "db"}
"""The mirror's parts: no chain reaches them from outside ``balsam_sync.cache``."""


def _names_the_mirror(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return "mirror" in node.id
    if isinstance(node, ast.Attribute):
        return "mirror" in node.attr
    if isinstance(node, ast.Call):
        return _names_the_mirror(node.func)
    return False


def test_nothing_reaches_through_the_mirror_into_its_parts() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in _outside_cache()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.lstrip("_") in PARTS
        and _names_the_mirror(node.value)
    ]
    assert offenders == []


TRANSACTION_SQL = re.compile(r"(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE SAVEPOINT)\b")


def test_no_transaction_is_opened_outside_the_cache() -> None:
    """Transactions are the mirror's: no BEGIN, COMMIT or ``.write()`` block elsewhere."""
    offenders = []
    for path, tree in _outside_cache():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and TRANSACTION_SQL.match(node.value.strip())
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            call = node.context_expr if isinstance(node, ast.withitem) else None
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr in ("write", "atomic", "reading")
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert offenders == []


MODULE_ALARM = 700
"""Lines at which a module deserves a second look: an alarm, not a target (a concept may be
long; a sliver cut off to stay short is worse)."""


def test_no_module_grows_past_the_alarm() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules()}
    assert {k: v for k, v in sizes.items() if v > MODULE_ALARM} == {}


def test_every_error_descends_from_the_root() -> None:
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)
    ]
    assert all(issubclass(c, errors.BalsamSyncError) for c in classes)
    assert issubclass(errors.UsageError, ValueError)
    assert issubclass(errors.UsageTypeError, TypeError)
    assert issubclass(errors.FieldNotWritable, AttributeError)


def _request_exception_classes() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(requests.exceptions, inspect.isclass)
        if issubclass(cls, requests.exceptions.RequestException)
    ]


MAPPED_TO = {
    "ConfigError": "InvalidHeader InvalidJSONError InvalidProxyURL InvalidSchema InvalidURL "
    "JSONDecodeError MissingSchema URLRequired",
    "ConnectFailed": "ConnectTimeout ProxyError",
    "ReplyLost": "ChunkedEncodingError ConnectionError ContentDecodingError ReadTimeout",
    "TransportError": "HTTPError RequestException RetryError SSLError StreamConsumedError "
    "Timeout TooManyRedirects UnrewindableBodyError",
}
"""What each ``requests`` exception becomes (a ConnectionError that was never sent:
ConnectFailed, see test_transport)."""


@pytest.mark.parametrize("cls", _request_exception_classes(), ids=lambda c: c.__name__)
def test_every_requests_exception_is_mapped(cls: type[BaseException]) -> None:
    assert cls in REQUESTS_ERRORS, f"{cls.__name__} has no explicit entry in REQUESTS_ERRORS"
    try:
        exc = cls("boom")
    except TypeError:  # JSONDecodeError wants (msg, doc, pos)
        exc = cls("boom", "doc", 0)
    with pytest.raises(errors.BalsamSyncError) as caught, _mapped("GET", "http://x/jobs/"):
        raise exc
    assert caught.value.__cause__ is exc
    expected = [name for name, classes in MAPPED_TO.items() if cls.__name__ in classes.split()]
    assert [type(caught.value).__name__] == expected


def test_importing_the_api_does_no_io(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALSAM")}
    env.update(HOME=str(tmp_path), BALSAM_CLIENT_PATH=str(tmp_path / "missing.yml"))
    code = "import balsam_sync.api as a; print(a.Job.__name__)"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_missing_configuration_fails_on_first_use_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("BALSAM_SYNC_API_ROOT", "BALSAM_SYNC_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BALSAM_CLIENT_PATH", str(tmp_path / "missing.yml"))
    balsam_sync.set_default_client(None)
    with pytest.raises(errors.ConfigError, match="BALSAM_SYNC_API_ROOT"):
        balsam_sync.api.Job.objects.count()


def test_network_file_systems_are_recognised(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /home rw - nfs4 server:/home rw\n"
        "41 22 0:51 / /lus rw - lustre 10.0.0.1@o2ib:/fs rw\n"
    )
    assert filesystem_type(Path("/home/alice/x"), str(info)) == "nfs4"
    assert filesystem_type(Path("/lus/proj"), str(info)) == "lustre"
    assert filesystem_type(Path("/var/tmp"), str(info)) == "ext4"
    assert not on_network_fs(tmp_path)


def test_an_explicit_mirror_home_on_a_network_fs_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from balsam_sync.cache import filesystem, opening

    monkeypatch.setattr(filesystem, "on_network_fs", lambda path: True)
    monkeypatch.setattr(filesystem, "filesystem_type", lambda path: "nfs4")
    identity = opening.Identity("http://127.0.0.1:1", "u#1")
    with pytest.raises(errors.MirrorError, match="network file system"):
        opening.open_mirror(tmp_path, identity, explicit_home=True)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(filesystem.ENV_ALLOW, "1")
    opened = opening.open_mirror(tmp_path, identity, explicit_home=True)
    journal = opened._store.conn.execute("PRAGMA journal_mode").fetchone()[0]
    opened.close()
    assert journal == "delete"

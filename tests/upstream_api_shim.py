"""The fixtures upstream balsam's own API tests expect, given by balsam_sync and the real server.

``tests/test_upstream_suite.py`` places this file, as ``conftest.py``, next to upstream's
``tests/api/test_api.py`` (taken from the balsam 0.7.0a24 sdist when the suite runs) and runs
pytest there in a separate process. Upstream's own fixtures give each test a ``client`` of a
freshly registered user on a live server; here ``client`` is a ``balsam_sync.Client`` of a
freshly registered user on the real server, with a mirror of its own.

Upstream's test module imports two names from ``balsam``: ``balsam._api.app``'s
``ApplicationDefinition`` and ``balsam.schemas``' ``TransferItemState``. Modules of those names
holding balsam_sync's classes are placed in ``sys.modules``; no other part of ``balsam`` exists
in that process (upstream and balsam_sync cannot share one environment).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import balsam_sync
from balsam_sync.api import ApplicationDefinition, TransferItemState
from balsam_sync.client import Client
from tests.conftest import (  # noqa: F401  (fixtures, registered by being imported here)
    _no_request_inside_a_mirror_transaction,
    balsam_server,
    register_user,
)


def _module(name: str, **names: object) -> ModuleType:
    module = ModuleType(name)
    module.__path__ = []  # a package, so that its submodules can be imported
    for key, value in names.items():
        setattr(module, key, value)
    return module


sys.modules.update(
    {
        "balsam": _module("balsam"),
        "balsam._api": _module("balsam._api"),
        "balsam._api.app": _module("balsam._api.app", ApplicationDefinition=ApplicationDefinition),
        "balsam.schemas": _module("balsam.schemas", TransferItemState=TransferItemState),
    }
)


@pytest.fixture
def client(balsam_server: str, tmp_path: Path) -> Iterator[Client]:  # noqa: F811
    """A client of a fresh user (upstream's ``client``), as a user would connect one."""
    user = register_user(balsam_server, prefix="upstream")
    c = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "home"))
    yield c
    c.close()

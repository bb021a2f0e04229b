"""balsam_sync: the Balsam Python API, with a local mirror that keeps working offline."""

from __future__ import annotations

from . import errors
from .client import Client, connect, default_client, set_default_client
from .config import Settings
from .freshness import AUTO, OFFLINE, ONLINE, ReadPolicy, fresh

__version__ = "0.1.0"

__all__ = [
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
]

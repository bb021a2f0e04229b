"""What upstream's API beyond the models needs of a client, and how it finds the default one.

A ``balsam_sync.Client`` is a ``Host``. The client module (above this layer) registers the
default client's factory at import, as it registers the managers' resolver for the models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..cache import Mirror
from ..gateway import Gateway
from ..orm.job import Job
from ..orm.records import App, Site
from ..remote.transport import Transport


class Host(Protocol):
    """A client's parts used by ApplicationDefinition, Session and site_config."""

    gateway: Gateway
    transport: Transport
    Site: type[Site]
    App: type[App]
    Job: type[Job]

    @property
    def mirror(self) -> Mirror: ...


_default_client: Callable[[], Host] | None = None


def set_default_client_factory(factory: Callable[[], Host]) -> None:
    """Tell unbound classes how to find the default client (done by ``balsam_sync.client``)."""
    global _default_client
    _default_client = factory


def default_client() -> Host:
    """The default client, built on first use."""
    if _default_client is None:
        raise RuntimeError("balsam_sync.client was not imported")
    return _default_client()

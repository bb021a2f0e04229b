"""Reads while the mirror cannot be used: the server answers alone, with one warning.

A damaged mirror, a full disk or an unusable folder must not stop queries the server can
answer. ``Gateway.fetch``, ``count`` and ``stream`` are wrapped by ``server_if_unmirrored``:
when the mirror fails (``MirrorError``) under a policy that may ask the server, the server's
answer is returned without being stored. An ``.offline()`` read has nothing else to answer
with, so it raises the mirror's error, which names the file and what to do.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import MirrorError, ServerUnreachable
from ..freshness import Answer, PolicyArg, ReadMode
from ..resources import Resource
from ..spec import QuerySpec

if TYPE_CHECKING:
    from .core import GatewayCore

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
_warned: weakref.WeakSet[GatewayCore] = weakref.WeakSet()


def server_answer(gateway: GatewayCore, res: Resource, spec: QuerySpec, count: bool) -> Answer:
    """The server's answer to ``spec``, as of no later than the server's clock, not stored."""
    started = gateway.clock()
    if count:
        rows: list[dict[str, Any]] = []
        n = gateway.remote.count(res, spec)
    else:
        rows, n = gateway.remote.select(res, spec)
    return Answer(rows, n, "server", min(started, gateway.clock()))


def _instead(
    gateway: GatewayCore,
    exc: MirrorError,
    res: Resource,
    spec: QuerySpec,
    policy: PolicyArg,
    n: bool,
) -> Answer:
    if gateway._policy(policy).mode is ReadMode.OFFLINE:
        raise exc
    if gateway not in _warned:
        log.warning("%s; answering from the server meanwhile", exc)
        _warned.add(gateway)
    try:
        return server_answer(gateway, res, spec, n)
    except ServerUnreachable as net:
        raise type(exc)(f"{exc}; the server cannot be reached either ({net})") from net


def server_if_unmirrored(count: bool = False) -> Callable[[F], F]:
    """Wrap a read of the gateway ``(self, res, spec, policy, ...)`` as described above."""

    def wrap(read: F) -> F:
        @functools.wraps(read)
        def plain(
            self: GatewayCore, res: Resource, spec: QuerySpec, policy: PolicyArg, *rest: Any
        ) -> Answer:
            try:
                answer: Answer = read(self, res, spec, policy, *rest)
            except MirrorError as exc:
                return _instead(self, exc, res, spec, policy, count)
            return answer

        @functools.wraps(read)
        def stream(
            self: GatewayCore, res: Resource, spec: QuerySpec, policy: PolicyArg, chunk: int
        ) -> Iterator[Any]:
            started = False
            try:
                for row in read(self, res, spec, policy, chunk):
                    started = True
                    yield row
            except MirrorError as exc:
                if started:  # rows were handed out already: a second answer would repeat them
                    raise
                yield from _instead(self, exc, res, spec, policy, False).dicts()

        return stream if read.__name__ == "stream" else plain  # type: ignore[return-value]

    return wrap

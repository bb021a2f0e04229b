"""Progress of a pull: one bar per resource on a terminal (``tqdm``), nothing otherwise."""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any

from tqdm import tqdm


def _size() -> tuple[int, int]:
    """The terminal's (columns, lines); 80 x 24 where it does not say (a bare pseudo-terminal)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return 80, 24
    return size.columns or 80, size.lines or 24


class Bars:
    """The ``progress`` callback of ``Client.pull``: ``(resource, rows so far, total or None)``.

    Each resource gets one bar that grows until the resource is done, even when the pull reads
    it in several listings (events of changed jobs come in chunks of job ids).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bars: dict[str, tqdm[Any]] = {}
        self._base: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def __call__(self, resource: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        bar = self._bars.get(resource) or self._new(resource)
        if done < self._last.get(resource, 0):  # a new listing of the same resource began
            self._base[resource] = self._base.get(resource, 0) + self._last[resource]
        self._last[resource] = done
        shown = self._base.get(resource, 0) + done
        if total is not None and bar.total != self._base.get(resource, 0) + total:
            bar.total = self._base.get(resource, 0) + total
        bar.update(shown - bar.n)

    def _new(self, resource: str) -> tqdm[Any]:
        for other in self._bars.values():  # the previous resource is done
            other.close()
        columns, lines = _size()
        bar: tqdm[Any] = tqdm(
            desc=f"pulling {resource}", unit=" rows", file=sys.stderr, ncols=columns, nrows=lines
        )
        self._bars[resource] = bar
        return bar

    def __enter__(self) -> Bars:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for bar in self._bars.values():
            bar.close()

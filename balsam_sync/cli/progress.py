"""Progress of a pull: one bar per phase on a terminal (``tqdm``), nothing otherwise.

Phases run side by side (transfer items and events are read while jobs are listed), so each
bar keeps its own line until the pull ends, and shows its total, rate and time left once the
pull knows the total: every listing's, from the server's count; the phase that reads transfer
items and events by job counts jobs (``sync.children.JOBS_PHASE``).
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any

from tqdm import tqdm

from ..sync.children import JOBS_PHASE


def _size() -> tuple[int, int]:
    """The terminal's (columns, lines); 80 x 24 where it does not say (a bare pseudo-terminal)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return 80, 24
    return size.columns or 80, size.lines or 24


def _label(phase: str) -> tuple[str, str]:
    """The bar's description and unit of a progress phase."""
    if phase == JOBS_PHASE:
        return "pulling TransferItem+EventLog by job", " jobs"
    return f"pulling {phase}", " rows"


class Bars:
    """The ``progress`` callback of ``Client.pull``: ``(phase, done so far, total or None)``.

    Each phase gets one bar that grows until the pull ends, even when the pull reads it in
    several listings (events of changed jobs come in chunks of job ids); a total of None means
    the bar counts without a total from then on.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bars: dict[str, tqdm[Any]] = {}
        self._base: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        bar = self._bars[phase] if phase in self._bars else self._new(phase, total)  # no bool()
        if done < self._last.get(phase, 0):  # a new listing of the same resource began
            self._base[phase] = self._base.get(phase, 0) + self._last[phase]
        self._last[phase] = done
        base = self._base.get(phase, 0)
        wanted = None if total is None else base + total
        if bar.total != wanted:
            bar.total = wanted
            bar.refresh()
        bar.update(base + done - bar.n)

    def _new(self, phase: str, total: int | None) -> tqdm[Any]:
        columns, lines = _size()
        desc, unit = _label(phase)
        bar: tqdm[Any] = tqdm(
            desc=desc,
            unit=unit,
            total=total,
            file=sys.stderr,
            ncols=columns,
            nrows=lines,
            position=len(self._bars),
            dynamic_ncols=False,
        )
        self._bars[phase] = bar
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

"""Timing, statistics and result rows of the benchmarks, and how helper processes are run."""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from balsam_sync.client import Client

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
"""The repository: ``balsam_sync/`` and ``scripts/`` are in it."""
SCRIPTS = ROOT / "scripts"
MB = 1024 * 1024


def log(message: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


@dataclass
class Stat:
    """Repeated measurements of one thing (seconds, or MB for memory)."""

    samples: list[float]
    unit: str = "s"

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def fmt(self, value: float) -> str:
        if self.unit == "MB":
            return f"{value:.0f} MB"
        if value < 1.0:
            return f"{value * 1000:.3g} ms"
        return f"{value:.3g} s"

    def __str__(self) -> str:
        if len(self.samples) == 1:
            return f"{self.fmt(self.median)} (n=1)"
        return (
            f"{self.fmt(self.median)} [{self.fmt(self.low)}-{self.fmt(self.high)}] "
            f"(n={len(self.samples)})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "n": len(self.samples),
            "samples": self.samples,
        }


@dataclass
class Row:
    """One line of the result table."""

    id: str
    what: str
    ours: Stat | None = None
    ours_label: str = ""
    ref: Stat | None = None
    ref_label: str = ""
    ratio: float | None = None
    ratio_text: str = "—"
    target: str = "—"
    met: bool | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in asdict(self).items() if k not in ("ours", "ref")}
        out["ours"] = self.ours.as_json() if self.ours else None
        out["ref"] = self.ref.as_json() if self.ref else None
        return out


def speedup(row: Row, at_least: float | None) -> Row:
    """ratio = reference / ours ("x faster"); met when >= ``at_least`` (None: information)."""
    if row.ours and row.ref and row.ours.median > 0:
        row.ratio = row.ref.median / row.ours.median
        row.ratio_text = f"{row.ratio:.1f}x faster"
        if at_least is not None:
            row.target = f"≥ {at_least:g}x faster"
            row.met = row.ratio >= at_least
    return row


def fraction(row: Row, at_most: float | None, percent: bool = False) -> Row:
    """ratio = ours / reference; met when <= ``at_most`` (None: information only)."""
    if row.ours and row.ref and row.ref.median > 0:
        row.ratio = row.ours.median / row.ref.median
        row.ratio_text = f"{row.ratio * 100:.2f} %" if percent else f"{row.ratio:.2f}x"
        if at_most is not None:
            row.target = f"≤ {at_most * 100:g} %" if percent else f"≤ {at_most:g}x"
            row.met = row.ratio <= at_most
    return row


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Seconds ``fn`` took (after a garbage collection, so none falls inside), and its value."""
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


class PhaseClock:
    """A pull progress callback: when each resource's last page was stored."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last: dict[str, float] = {}

    def __call__(self, resource: str, rows: int, total: int | None) -> None:
        self.last[resource] = time.perf_counter()

    def phases(self) -> dict[str, float]:
        """Seconds per resource, from the previous resource's last page to its own last page
        (resources are read side by side: a phase is not the time one resource took)."""
        out: dict[str, float] = {}
        previous = self.start
        for name, at in sorted(self.last.items(), key=lambda item: item[1]):
            out[name] = at - previous
            previous = at
        return out

    def until(self) -> dict[str, float]:
        """Seconds from the pull's start to each resource's last page."""
        return {name: at - self.start for name, at in self.last.items()}


@dataclass
class TimedPull:
    """One timed ``pull()``: its seconds, report, and when each resource was done."""

    seconds: float
    report: Any
    phases: dict[str, float]
    until: dict[str, float]


def timed_pull(client: Client, full: bool = False) -> TimedPull:
    """Time ``client.pull()``; also return its report and the seconds spent per resource."""
    gc.collect()
    clock = PhaseClock()
    report = client.pull(full=full, progress=clock)
    seconds = time.perf_counter() - clock.start
    return TimedPull(seconds, report, clock.phases(), clock.until())


def fmt_phases(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())


def run_child(argv: list[str], env: dict[str, str], what: str, cwd: Path | None = None) -> str:
    """Run a helper process of the benchmark; return its stdout, or raise with its stderr."""
    run = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=3600, check=False
    )
    if run.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{run.stderr[-3000:]}")
    return run.stdout


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object a helper process prints as its last line."""
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result

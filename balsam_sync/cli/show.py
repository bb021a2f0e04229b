"""How the command shows things: durations, times, tables and JSON."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import click

from ..utc import as_utc


def duration(seconds: float) -> str:
    """Say how long ``seconds`` is in at most two units: "3m 12s", "2h", "1d 4h", "0s"."""
    rest = int(max(seconds, 0))
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    parts = [(days, "d"), (hours, "h"), *zip(divmod(rest, 60), ("m", "s"), strict=True)]
    first = next((i for i, (value, _) in enumerate(parts) if value), 3)
    shown = [parts[first]] + [p for p in parts[first + 1 : first + 2] if p[0]]
    return " ".join(f"{value}{unit}" for value, unit in shown)


def stamp(when: datetime | None) -> str:
    return as_utc(when).strftime("%Y-%m-%d %H:%M:%S UTC") if when else "-"  # naive: UTC


def ago(when: datetime | None) -> str:
    if when is None:
        return "never"
    age = time.time() - when.timestamp()
    if age < 0:  # recorded while this machine's clock ran ahead
        return f"{stamp(when)} (in the future by this machine's clock)"
    return f"{duration(age)} ago ({stamp(when)})"


def expiry(when: datetime | None) -> str:
    if when is None:
        return "unknown"
    left = when.timestamp() - time.time()
    text = "expired by this machine's clock" if left <= 0 else "expires in " + duration(left)
    return f"{stamp(when)} ({text})"


def table(headers: list[str], rows: list[list[str]], widest: int = 48) -> None:
    cells = [[c if len(c) <= widest else c[: widest - 1] + "…" for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=lambda v: getattr(v, "isoformat", v.__str__)()))

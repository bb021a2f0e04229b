"""P6: offline ``count()`` with filters on the big (1M-job) mirror (target < 50 ms)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from balsam_sync.client import Client

from .context import Context
from .harness import Row, Stat, timed

TARGET = 0.050


def counter(client: Client, filters: dict[str, Any]) -> Callable[[], int]:
    return lambda: int(client.Job.objects.filter(**filters).offline().count())


def run(ctx: Context) -> None:
    big = ctx.big_mirror()
    expected = big.expected
    variants: list[tuple[str, dict[str, Any], int]] = [
        ('state="FAILED"', {"state": "FAILED"}, expected.get("FAILED", 0)),
        (
            'state="FAILED", tags={"exp": "p1"}',
            {"state": "FAILED", "tags": {"exp": "p1"}},
            expected.get("FAILED:p1", 0),
        ),
        ('tags={"exp": "p1"}', {"tags": {"exp": "p1"}}, expected.get("tag:p1", 0)),
    ]
    samples: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    answers: dict[str, int] = {}
    for _, filters, _ in variants:
        counter(big.client, filters)()  # warm-up (page cache)
    for _ in range(max(7, ctx.opts.reps_fast)):
        for label, filters, _ in variants:
            seconds, n = timed(counter(big.client, filters))
            samples[label].append(seconds)
            answers[label] = n
    for label, _, want in variants:
        ctx.rows.append(count_row(ctx, label, Stat(samples[label]), answers[label], want))

    def prep_count() -> Callable[[], object]:
        counts = [counter(big.client, f) for _, f, _ in variants]
        return lambda: [count() for _ in range(5) for count in counts]

    ctx.profiles["P6"] = prep_count


def count_row(ctx: Context, label: str, ours: Stat, answer: int, want: int) -> Row:
    row = Row(
        "P6",
        f"offline count({label}) on a {ctx.opts.big:,}-job mirror",
        ours,
        "ours offline count()",
        notes=[f"answer {answer} (expected {want}): " + ("ok" if answer == want else "WRONG")],
    )
    if label == 'state="FAILED"' and ctx.upstream_count is not None:
        row.ref = ctx.upstream_count
        row.ref_label = f"upstream count(state) on the {ctx.opts.jobs:,}-job server"
        row.ratio = ctx.upstream_count.median / ours.median
        row.ratio_text = f"{row.ratio:.1f}x faster"
    row.target = "< 50 ms"
    row.met = ours.median < TARGET
    return row

"""P7: peak RSS while iterating the big (1M-job) mirror, in a fresh child: at most +30 MB over
the child's baseline (memory that does not grow with the account), and under 200 MB."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .context import Context
from .harness import ROOT, Row, Stat, last_json, log, run_child
from .memory import MODULE, TRAMPOLINE, child_env

TARGET_MB = 200
TARGET_GROWTH_MB = 30


def run(ctx: Context) -> None:
    big = ctx.big_mirror()
    env = child_env(
        ROOT,
        {
            "BALSAM_SYNC_API_ROOT": big.user.api_root,
            "BALSAM_SYNC_TOKEN": big.user.token,
            "BALSAM_SYNC_HOME": str(big.home),
            "BALSAM_SYNC_OFFLINE": "1",
        },
    )
    run_child([sys.executable, "-m", MODULE, "open"], env, "P7 mirror open", ROOT)
    child = [sys.executable, "-c", TRAMPOLINE, sys.executable, "-m", MODULE, "iterate"]
    results: list[dict[str, Any]] = []
    for _ in range(max(1, ctx.opts.reps_mem)):
        results.append(last_json(run_child(child, env, "P7 child", ROOT)))
        log(f"  child: {results[-1]}")
    ctx.rows.append(memory_row(ctx, results))
    client = big.client

    def prep_iter() -> Callable[[], object]:
        def op() -> int:
            n = 0
            for job in client.Job.objects.offline().all().iterator():
                _ = job.state
                n += 1
                if n >= 200_000:
                    break
            return n

        return op

    ctx.profiles["P7"] = prep_iter


def memory_row(ctx: Context, results: list[dict[str, Any]]) -> Row:
    """The P7 row from the children's reports (medians of peak and baseline)."""
    peak = Stat([r["peak_mb"] for r in results], "MB")
    baseline = Stat([r["baseline_mb"] for r in results], "MB")
    seconds = Stat([r["seconds"] for r in results])
    counted = results[-1]["rows"]
    growth = peak.median - baseline.median
    return Row(
        "P7",
        f"peak RSS iterating {ctx.opts.big:,} cached jobs with "
        "Job.objects.offline().all().iterator()",
        peak,
        "peak RSS",
        baseline,
        "baseline RSS (after import + open)",
        ratio=growth,
        ratio_text=f"+{growth:.0f} MB",
        target=f"≤ +{TARGET_GROWTH_MB} MB over baseline, < {TARGET_MB} MB",
        met=growth <= TARGET_GROWTH_MB and peak.median < TARGET_MB and counted == ctx.opts.big,
        notes=[
            f"rows iterated: {counted} (expected {ctx.opts.big}); iteration took {seconds}"
            f" ({counted / seconds.median:,.0f} rows/s)",
            f"cross-check from /proc: VmHWM {results[-1]['peak_vmhwm_mb']:.0f} MB peak, "
            f"VmRSS {results[-1]['baseline_vmrss_mb']:.0f} MB before iterating (child "
            "started through a small trampoline so ru_maxrss does not inherit the bench's "
            "own peak)",
        ],
    )

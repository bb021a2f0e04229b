"""The command line of ``scripts/bench.py``: options, the figures in their order, the run."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from . import a1, a2_a3_a4, a5, a6, a7, d1, p1, p2_p3, p4, p5, p6, p7, p8, p9
from .account import AccountBench
from .context import Context, Options
from .harness import ROOT, Row, log
from .profiles import profile_missed
from .report import source_digest, write_results
from .server import DEFAULT_API_ROOT, answers

Step = tuple[tuple[str, ...], Callable[[], None]]
IDS = (
    "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9",
    "A1", "A2", "A3", "A4", "A5", "A6", "A7", "D1",
)  # fmt: skip
SIZES = {"jobs": 100_000, "big": 1_000_000, "creates": 10_000, "rss_jobs": 200_000}
QUICK_SIZES = {"jobs": 5_000, "big": 50_000, "creates": 2_000, "rss_jobs": 20_000}


def steps(ctx: Context) -> list[Step]:
    """Every figure in the order they run (the ids each step reports)."""
    ab = AccountBench(ctx)
    return [
        (("P1",), partial(p1.run, ctx)),
        (("P4",), partial(p4.run, ctx)),
        (("P5",), partial(p5.run, ctx)),
        (("P6",), partial(p6.run, ctx)),
        (("P7",), partial(p7.run, ctx)),
        (("P2", "P3"), partial(p2_p3.run, ctx)),
        (("P8",), partial(p8.run, ctx)),
        (("P9",), partial(p9.run, ctx)),
        (("A1",), partial(a1.run, ab)),
        (("A2", "A3", "A4"), partial(a2_a3_a4.run, ab)),
        (("A5",), partial(a5.run, ab)),
        (("A6",), partial(a6.run, ab)),
        (("A7",), partial(a7.run, ctx)),
        (("D1",), partial(d1.run, ctx)),
    ]


def run(ctx: Context) -> None:
    for ids, step in steps(ctx):
        if not ctx.wanted(*ids):
            continue
        log(f"== {'/'.join(ids)}")
        try:
            step()
        except Exception as exc:
            traceback.print_exc()
            ctx.rows.append(Row(ids[0], "(failed)", error=f"{type(exc).__name__}: {exc}"))
    if ctx.opts.profile:
        profile_missed(ctx)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench.py",
        description="Benchmark balsam_sync against the local real Balsam server "
        "(P1-P9, A1-A7 and D1, side by side in one run; see scripts/benchmarks/__init__.py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--api-root", default=DEFAULT_API_ROOT, help="the real server")
    p.add_argument("--jobs", type=int, default=SIZES["jobs"], help="jobs created on the server")
    p.add_argument("--big", type=int, default=SIZES["big"], help="jobs in the P6/P7 mirror")
    p.add_argument("--creates", type=int, default=SIZES["creates"], help="P2/P3 bulk_create size")
    p.add_argument(
        "--rss-jobs", type=int, default=SIZES["rss_jobs"], help="jobs of the A7 account (memory)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a smoke test (5000 jobs, 50000-job mirror, "
        "2000 creates, a 20000-job A7 account, fewer repetitions)",
    )
    p.add_argument("--only", default="", help="comma-separated selection, e.g. P1,P6")
    p.add_argument("--out", type=Path, default=ROOT / "results", help="output folder")
    p.add_argument(
        "--reps-fast",
        type=int,
        default=15,
        help="repetitions of fast operations (P1, P6; at least 7)",
    )
    p.add_argument(
        "--reps-slow", type=int, default=3, help="repetitions of pulls, online all(), P2/P3"
    )
    p.add_argument(
        "--reps-upstream", type=int, default=5, help="repetitions of the upstream P1 query"
    )
    p.add_argument("--reps-mem", type=int, default=1, help="P7 subprocess runs")
    p.add_argument(
        "--no-upstream-all",
        action="store_true",
        help="skip upstream list(Job.objects.all()) in P4 (~14 s per rep)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile (pyinstrument) our side of every missed target into OUT/profile-<id>.txt",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where mirrors go (when not given: a temporary folder, removed at the end)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.quick:
        for key, value in QUICK_SIZES.items():
            if getattr(args, key) == SIZES[key]:
                setattr(args, key, value)
        args.reps_slow = min(args.reps_slow, 2)
    return args


def options(args: argparse.Namespace, only: set[str], workdir: Path) -> Options:
    return Options(
        api_root=args.api_root.rstrip("/"),
        jobs=args.jobs,
        big=args.big,
        creates=args.creates,
        rss_jobs=args.rss_jobs,
        reps_fast=max(7, args.reps_fast),
        reps_slow=max(1, args.reps_slow),
        reps_upstream=max(1, args.reps_upstream),
        reps_mem=max(1, args.reps_mem),
        upstream_all=not args.no_upstream_all,
        profile=args.profile,
        out=args.out,
        only=only,
        workdir=workdir,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("OFFLINE", "API_ROOT", "TOKEN", "HOME"):  # the run's clients are its own
        os.environ.pop(f"BALSAM_SYNC_{name}", None)
    why = answers(args.api_root)
    if why is not None:
        print(
            f"the real Balsam server does not answer at {args.api_root}: {why}\n"
            "start it with scripts/real-balsam-server.sh start",
            file=sys.stderr,
        )
        return 2
    only = {p.strip().upper() for p in args.only.split(",") if p.strip()}
    unknown = only - set(IDS)
    if unknown:
        print(f"--only: unknown benchmark(s) {sorted(unknown)}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="balsam-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(options(args, only, workdir))
    ctx.opts.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    ctx.info["balsam_sync_sources_at_start"] = source_digest()
    try:
        run(ctx)
    finally:
        ctx.close()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    warn_if_edited(ctx)
    text = write_results(ctx, started, time.perf_counter() - t0)
    print(text)
    print(f"\nwrote {ctx.opts.out / 'bench.md'}, {ctx.opts.out / 'bench.json'}")
    return 0


def warn_if_edited(ctx: Context) -> None:
    ctx.info["balsam_sync_sources_at_end"] = end = source_digest()
    if end != ctx.info["balsam_sync_sources_at_start"]:
        ctx.info["WARNING"] = (
            "balsam_sync changed during this run: figures mix code versions (P7 and the "
            "upstream/child processes import the newer code); run again for consistent figures"
        )
        log(f"WARNING: {ctx.info['WARNING']}")

"""``--profile``: pyinstrument profiles of our side of every missed target."""

from __future__ import annotations

import importlib
from typing import Any

from .context import Context
from .harness import ROOT, log


def profile_missed(ctx: Context) -> None:
    try:
        pyinstrument: Any = importlib.import_module("pyinstrument")
    except ImportError:
        log("--profile: pyinstrument is not installed (pip install pyinstrument)")
        return
    missed = sorted({r.id for r in ctx.rows if r.met is False})
    for pid in missed:
        prepare = ctx.profiles.get(pid)
        if prepare is None:
            continue
        log(f"profiling {pid} ...")
        op = prepare()
        profiler = pyinstrument.Profiler(interval=0.0005)
        profiler.start()
        op()
        profiler.stop()
        text: str = profiler.output_text(unicode=False, color=False)
        text = text.replace(str(ROOT) + "/", "")  # results name no machine paths
        path = ctx.opts.out / f"profile-{pid}.txt"
        path.write_text(text)
        log(f"  wrote {path}")

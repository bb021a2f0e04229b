"""The report of a run: ``bench.md`` (table, notes, set-up), ``bench.json`` and ``bench.png``."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
from datetime import datetime
from pathlib import Path
from typing import Any

from .context import Context
from .harness import ROOT, Row, log

MEMORY_TARGET_MB = 200


def source_digest() -> str:
    """A digest of the balsam_sync sources: the package is edited while benchmarks run."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "balsam_sync").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _portable(value: Any) -> str:
    """An option value as text, with paths inside the project made relative to it."""
    text = str(value)
    return text.replace(str(ROOT) + "/", "") if isinstance(value, Path) else text


def table(rows: list[Row]) -> str:
    head = "| id | what | ours | reference | ratio | target | met? |\n|---|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        if r.error:
            lines.append(f"| {r.id} | {r.what} | ERROR: {r.error[:200]} | | | | ✗ |")
            continue
        ours = f"{r.ours_label}: {r.ours}" if r.ours else "—"
        ref = f"{r.ref_label}: {r.ref}" if r.ref else "—"
        met = "—" if r.met is None else ("✓ yes" if r.met else "✗ NO")
        lines.append(
            f"| {r.id} | {r.what} | {ours} | {ref} | {r.ratio_text} | {r.target} | {met} |"
        )
    return "\n".join(lines)


def write_results(ctx: Context, started: datetime, seconds: float) -> str:
    """Write the three files; return the table and notes as text."""
    opts = ctx.opts
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    text = table(ctx.rows)
    notes = [f"- **{r.id}** {r.what}: {n}" for r in ctx.rows for n in r.notes]
    header = (
        f"# balsam_sync benchmarks\n\n"
        f"Run {started.isoformat(timespec='seconds')} against {opts.api_root} "
        f"({platform.python_version()}, {os.cpu_count()} cores), {seconds:.0f} s in all. "
        f"Sizes: {opts.jobs:,} server jobs, {opts.big:,}-job mirror, {opts.creates:,} creates. "
        f"Medians of n repetitions [min-max]; ratios use medians. "
        f"balsam_sync sources: {ctx.info.get('balsam_sync_sources_at_start')}.\n\n"
    )
    if "WARNING" in ctx.info:
        header += f"**WARNING: {ctx.info['WARNING']}**\n\n"
    extra = ""
    if ctx.info:
        extra = "\n\n## Set-up\n\n```json\n" + json.dumps(ctx.info, indent=2) + "\n```\n"
    (out / "bench.md").write_text(
        header + text + "\n\n## Notes\n\n" + "\n".join(notes) + extra + "\n"
    )
    (out / "bench.json").write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "seconds": seconds,
                "options": {k: _portable(v) for k, v in vars(opts).items()},
                "python": platform.python_version(),
                "cores": os.cpu_count(),
                "rows": [r.as_json() for r in ctx.rows],
                "info": ctx.info,
            },
            indent=2,
        )
    )
    plot(ctx.rows, out / "bench.png")
    return text + "\n\nNotes:\n" + "\n".join(notes)


def plot(rows: list[Row], path: Path) -> None:
    """Timings (ours next to the reference, log scale) and P7's memory, when matplotlib is
    installed."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        log("matplotlib is not installed: no plot")
        return
    try:
        timing = [r for r in rows if r.ours and r.ours.unit == "s"]
        memory = [r for r in rows if r.ours and r.ours.unit == "MB"]
        fig, axes = plt.subplots(
            1,
            2,
            figsize=(15, 0.55 * max(4, len(timing)) + 1.5),
            gridspec_kw={"width_ratios": [4, 1]},
        )
        plot_timings(axes[0], timing)
        if memory:
            plot_memory(axes[1], memory[0])
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    except Exception as exc:
        log(f"plot failed: {exc}")


def plot_timings(ax: Any, timing: list[Row]) -> None:
    labels = [f"{r.id}: {r.what[:60]}" for r in timing]
    ys = list(range(len(timing)))
    ours = [r.ours.median * 1000 if r.ours else 0 for r in timing]
    refs = [r.ref.median * 1000 if r.ref else 0 for r in timing]
    colors = ["tab:green" if r.met else "tab:red" if r.met is False else "tab:blue" for r in timing]
    ax.barh([y - 0.2 for y in ys], ours, height=0.4, color=colors, label="ours")
    ax.barh([y + 0.2 for y in ys], refs, height=0.4, color="tab:gray", label="reference")
    for y, r, value in zip(ys, timing, ours, strict=True):
        note = r.ratio_text if r.ratio is not None else r.target
        ax.text(value, y - 0.2, f" {note}", va="center", fontsize=7)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median time, ms (log); green: target met, red: missed")
    ax.legend(loc="lower right", fontsize=8)


def plot_memory(ax: Any, r: Row) -> None:
    vals = [r.ref.median if r.ref else 0, r.ours.median if r.ours else 0]
    ax.bar(["baseline", "peak"], vals, color=["tab:gray", "tab:green" if r.met else "tab:red"])
    ax.axhline(MEMORY_TARGET_MB, color="black", linestyle="--", linewidth=1)
    ax.set_ylabel(f"RSS, MB (P7; dashed: {MEMORY_TARGET_MB} MB target)")

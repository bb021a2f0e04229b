"""Run code with upstream ``balsam`` 0.7 (pydantic 1), in the real server's own venv.

Upstream and balsam_sync cannot share one environment (pydantic 1 vs 2); the server's venv,
made by ``scripts/real-balsam-server.sh install``, has upstream ``balsam`` and its pins.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest


def upstream_python() -> Path:
    """The python of the server's venv (``BALSAM_REAL_HOME``, as the server script has it)."""
    base = Path(os.environ.get("BALSAM_REAL_HOME") or Path.home() / ".cache/balsam-real-server")
    python = base / "venv" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"upstream balsam's venv is missing ({python}): run scripts/setup.sh")
    return python


def run_upstream(script: str, client_yml: Path, cwd: Path, *args: str, timeout: float = 180) -> Any:
    """Run ``script`` with upstream balsam, reading ``client_yml``; return its last JSON line."""
    path = cwd / "upstream_script.py"
    path.write_text(script)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(cwd),
        "BALSAM_CLIENT_PATH": str(client_yml),
        "BALSAM_LOG_LEVEL": "WARNING",
    }
    run = subprocess.run(
        [str(upstream_python()), str(path), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, f"upstream script failed:\n{run.stdout}\n{run.stderr[-4000:]}"
    lines = [line for line in run.stdout.splitlines() if line.startswith(("{", "["))]
    assert lines, f"upstream script printed no JSON:\n{run.stdout}\n{run.stderr[-2000:]}"
    return json.loads(lines[-1])


def upstream_cli(
    client_yml: Path, cwd: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run upstream's ``balsam`` command line with ``client_yml``."""
    balsam = upstream_python().parent / "balsam"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(cwd),
        "BALSAM_CLIENT_PATH": str(client_yml),
    }
    return subprocess.run(
        [str(balsam), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=180,
        check=False,
    )

"""Upstream ``balsam.api``, timed in a subprocess of the real server's venv (pydantic 1): one
run per figure (``run_upstream``), or a child answering commands (``UpstreamSession``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from .harness import last_json, run_child
from .memory import TRAMPOLINE
from .server import User

CHILD = Path(__file__).with_name("upstream_child.py")
WRITES = Path(__file__).with_name("p9_writes.py")
REPLY = "P9 "
"""How ``upstream_child.py serve`` starts the lines that answer a command."""


def upstream_python() -> Path:
    """The python of the server's venv (``BALSAM_REAL_HOME``, as the server script has it)."""
    base = Path(os.environ.get("BALSAM_REAL_HOME") or Path.home() / ".cache/balsam-real-server")
    return base / "venv" / "bin" / "python"


def client_yml(user: User, folder: Path) -> Path:
    """An upstream ``client.yml`` logged in as ``user``."""
    settings = {
        "api_root": user.api_root,
        "client_class": "balsam.client.BasicAuthRequestsClient",
        "token": user.token,
        "token_expiry": user.expiry,
        "connect_timeout": 6.2,
        "read_timeout": 600.0,
        "retry_count": 3,
    }
    path = folder / "client.yml"
    # JSON is YAML: one key per line, values JSON-quoted.
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    path.chmod(0o600)
    return path


def child_folder(user: User, workdir: Path) -> tuple[Path, Path, Path, dict[str, str]]:
    """A folder of its own for one upstream child: its Python, folder, script and environment.

    The script is a copy (with the P9 writes beside it): the script's folder comes first on
    the child's sys.path, and this package's modules must not shadow what upstream imports.
    """
    python = upstream_python()
    if not python.exists():
        raise RuntimeError(f"upstream venv not found: {python}")
    folder = workdir / f"upstream-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    script = Path(shutil.copy(CHILD, folder / "upstream_bench.py"))
    shutil.copy(WRITES, folder / WRITES.name)
    yml = client_yml(user, folder)
    env = {**os.environ, "BALSAM_CLIENT_PATH": str(yml), "HOME": str(folder)}
    return python, folder, script, env


def run_upstream(
    user: User, workdir: Path, mode: str, reps: int, own_peak: bool = False
) -> dict[str, Any]:
    """Time a query (``upstream_child.py`` ``mode``) with upstream ``balsam.api``.

    ``own_peak``: start it through a small trampoline process, so that the peak RSS it reports
    is its own (``memory.py``).
    """
    python, folder, script, env = child_folder(user, workdir)
    argv = [str(python), str(script), mode, str(reps)]
    if own_peak:
        argv = [str(python), "-c", TRAMPOLINE, *argv]
    return last_json(run_child(argv, env, f"upstream {mode}", folder))


class UpstreamSession:
    """Upstream ``balsam.api`` in one long-lived child (``upstream_child.py serve``), so its
    writes can be timed in rounds interleaved with ours: ``prepare`` a write (untimed), then
    ``act`` (timed there, with the requests it sent)."""

    def __init__(self, user: User, workdir: Path) -> None:
        python, folder, script, env = child_folder(user, workdir)
        self.stderr = folder / "stderr.txt"
        with self.stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [str(python), str(script), "serve", "0"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
                cwd=folder,
            )

    def call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Send one command; return its answer (raise with the child's error)."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(cmd) + "\n")
        stdin.flush()
        for line in stdout:
            if line.startswith(REPLY):
                answer: dict[str, Any] = json.loads(line[len(REPLY) :])
                if "error" in answer:
                    raise RuntimeError(f"upstream {cmd.get('op', 'act')}: {answer['error']}")
                return answer
        raise RuntimeError(f"the upstream child ended:\n{self.stderr.read_text()[-3000:]}")

    def prepare(self, op: str, **args: Any) -> list[str]:
        """Set up the write ``op`` (untimed); return the requests that sent."""
        requests: list[str] = self.call({"op": op, **args})["requests"]
        return requests

    def act(self) -> dict[str, Any]:
        """Do the prepared write: its ``seconds`` (and ``cpu`` seconds), the ``requests`` it
        sent, the seconds it ``waited`` for their replies' heads, and the ``result`` it
        returned."""
        return self.call({"act": True})

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

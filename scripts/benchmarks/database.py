"""The real server's PostgreSQL, read directly: how many rows it holds for every user together
(the REST API shows each user only their own)."""

from __future__ import annotations

import os
import shlex
import subprocess

from .harness import SCRIPTS, run_child
from .upstream import upstream_python

COUNT = """
import os, psycopg2
with psycopg2.connect(os.environ["BALSAM_DATABASE_URL"]) as db, db.cursor() as cur:
    cur.execute("SELECT count(*) FROM jobs")
    print(cur.fetchone()[0])
"""


def database_url() -> str:
    """The server's database URL, from the server script's environment (``env``)."""
    run = subprocess.run(
        ["bash", str(SCRIPTS / "real-balsam-server.sh"), "env"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for line in run.stdout.splitlines():
        name, _, value = line.partition("=")
        if name == "BALSAM_DATABASE_URL":
            return shlex.split(value)[0]
    raise RuntimeError("the server script's environment has no BALSAM_DATABASE_URL")


def jobs_on_server() -> int:
    """``SELECT count(*) FROM jobs``: the jobs of all users (with psycopg2 of the server's
    venv, so this project needs no database driver)."""
    env = {**os.environ, "BALSAM_DATABASE_URL": database_url()}
    out = run_child([str(upstream_python()), "-c", COUNT], env, "count the server's jobs")
    return int(out.strip())

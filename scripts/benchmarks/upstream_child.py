"""Timings of upstream ``balsam.api``: run by ``upstream.py`` in the real server's venv.

Usage: ``python upstream_child.py p1|all|account REPS`` with ``BALSAM_CLIENT_PATH`` set; prints
one JSON object. ``python upstream_child.py serve 0`` instead answers commands, one JSON object a
line on stdin, one a line on stdout (``upstream.UpstreamSession``): each write of P9 is prepared
by one command and timed by the next, with the requests it sent. It runs with upstream
``balsam`` (pydantic 1), so it imports nothing of this repository.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from balsam.api import EventLog, Job, TransferItem  # type: ignore[import-not-found]
from p9_writes import writer  # type: ignore[import-not-found]  # a copy beside this one

P1_SLICE = 1000


def p1_query() -> list[Any]:
    q = Job.objects.filter(state="FAILED", tags={"exp": "p1"}).order_by("-last_update")
    return list(q[0:P1_SLICE])


def p1_reads() -> list[tuple[Any, ...]]:
    """The P1 query, then id, workdir, state and tags of every job (the user's loop)."""
    return [(j.id, j.workdir, j.state, j.tags) for j in p1_query()]


def comparable(read: tuple[Any, ...]) -> list[Any]:
    """What a P1 read says, in JSON (enum members as their values, paths as text)."""
    job_id, workdir, state, tags = read
    return [job_id, str(workdir), getattr(state, "value", state), tags]


def p1(reps: int) -> dict[str, Any]:
    """The P1 query, the query with reads, and a count by state, ``reps`` times each after
    a warm-up (query and query with reads interleaved, so drift hits both alike)."""
    out: dict[str, Any] = {"times": [], "read_times": [], "count_times": []}
    items = p1_query()  # warm-up: imports, connection
    reads = p1_reads()
    for _ in range(reps):
        t = time.perf_counter()
        items = p1_query()
        out["times"].append(time.perf_counter() - t)
        t = time.perf_counter()
        reads = p1_reads()
        out["read_times"].append(time.perf_counter() - t)
    out["ids"] = [j.id for j in items]
    out["reads"] = [comparable(r) for r in reads]
    for _ in range(reps):
        t = time.perf_counter()
        n = Job.objects.filter(state="FAILED").count()
        out["count_times"].append(time.perf_counter() - t)
    out["count"] = n
    return out


def every_job(reps: int) -> dict[str, Any]:
    """``list(Job.objects.all())``, ``reps`` times."""
    out: dict[str, Any] = {"times": []}
    for _ in range(reps):
        t = time.perf_counter()
        items = list(Job.objects.all())
        out["times"].append(time.perf_counter() - t)
        out["n"] = len(items)
        del items
    return out


SENT: list[str] = []
"""The requests upstream sent since the last command, as "METHOD /path"."""
REPLY = "P9 "
"""Prefix of the lines that answer a command (anything else on stdout is not an answer)."""


WAITED: list[float] = []
"""Seconds from sending each of those requests until its reply's head arrived."""


def count_requests() -> None:
    """Record every request upstream's session sends (below its retries: each attempt)."""
    send = requests.Session.send

    def counted(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        SENT.append(f"{request.method} {urlsplit(request.url).path}")
        response = send(self, request, **kwargs)
        WAITED.append(response.elapsed.total_seconds())
        return response

    requests.Session.send = counted  # type: ignore[method-assign]


def serve() -> None:
    """Answer commands until stdin ends: ``{"op": ..., ...}`` prepares a write, ``{"act":
    true}`` times it; each is answered with one line (``REPLY`` + JSON)."""
    count_requests()
    write: Callable[[], Any] | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        SENT.clear()
        WAITED.clear()
        try:
            if cmd.get("act"):
                if write is None:
                    raise RuntimeError("nothing prepared")
                gc.collect()  # as the harness does before timing our side
                SENT.clear()
                WAITED.clear()
                t, cpu = time.perf_counter(), time.process_time()
                result = write()
                seconds = time.perf_counter() - t
                answer = {
                    "seconds": seconds,
                    "cpu": time.process_time() - cpu,
                    "requests": list(SENT),
                    "waited": sum(WAITED),
                    "result": result,
                }
                write = None
            else:
                write = writer(Job, cmd["op"], cmd)
                answer = {"prepared": cmd["op"], "requests": list(SENT)}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(REPLY + json.dumps(answer), flush=True)


def every_row(reps: int) -> dict[str, Any]:
    """``list(X.objects.all())`` of Job, TransferItem and EventLog one after the other (what
    a user needs to know the account's history), ``reps`` times: the time of the three, each
    one's, how many rows each listed, and the process's peak RSS (MB)."""
    out: dict[str, Any] = {"times": [], "each": [], "n": {}}
    for _ in range(reps):
        each = {}
        for model in (Job, TransferItem, EventLog):
            t = time.perf_counter()
            items = list(model.objects.all())
            each[model.__name__] = time.perf_counter() - t
            out["n"][model.__name__] = len(items)
            del items
        out["times"].append(sum(each.values()))
        out["each"].append(each)
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    mode, reps = sys.argv[1], int(sys.argv[2])
    if mode == "serve":
        serve()
        return
    print(json.dumps({"p1": p1, "all": every_job, "account": every_row}[mode](reps)))


if __name__ == "__main__":
    main()

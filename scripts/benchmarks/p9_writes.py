"""P9's writes as a user writes them, the same code for both clients: ``p9.py`` runs them with
ours, and ``upstream_child.py`` (beside a copy of this file) with upstream ``balsam.api``. It
imports nothing of either, so both can load it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def writer(Job: Any, op: str, cmd: dict[str, Any]) -> Callable[[], Any]:
    """Do a write's set-up (untimed) with the client's ``Job``; return the write itself."""
    if op in ("save_finished", "save_unfinished"):
        job = Job.objects.get(id=cmd["id"])

        def save() -> None:
            if op == "save_finished":
                job.tags = {**job.tags, "p9": str(cmd["round"])}
            else:
                job.data = {"p9": cmd["round"]}
            job.save()

        return save
    if op == "bulk_create":
        jobs = [Job(**spec) for spec in cmd["jobs"]]
        return lambda: len(Job.objects.bulk_create(jobs))
    if op == "update_ids":
        return lambda: Job.objects.filter(id=cmd["ids"]).update(data={"p9": cmd["round"]})
    if op == "update_tags":
        return lambda: Job.objects.filter(tags=cmd["tags"]).update(data={"p9": cmd["round"]})
    if op == "update_state":
        return lambda: Job.objects.filter(id=cmd["ids"]).update(state=cmd["state"])
    if op != "loop":
        raise ValueError(f"unknown op {op!r}")
    Job.objects.filter(id=cmd["ids"]).update(state="FAILED")

    def guide_loop() -> list[Any]:
        """The guide's loop; with where its query was answered from (ours says, upstream's
        does not)."""
        n = 0
        query = Job.objects.filter(state="FAILED")
        for job in query:
            job.state = "RESTART_READY"
            job.save()
            n += 1
        return [n, getattr(query, "source", None)]

    return guide_loop

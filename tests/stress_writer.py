"""One writer process of the shared-mirror stress test (tests/test_stress.py).

Run as ``python -m tests.stress_writer NAME ROUNDS JOBS SAVES APP_ID SEED LOG`` with the
user's settings in the environment. Each round it creates jobs (in some rounds offline, so
that another process sends the creates), then changes ``num_nodes`` of its own jobs many
times, including jobs whose creation a peer is sending at that moment. Every intention is
written to ``LOG`` (one JSON line, flushed) before the call and again after it returned, so a
kill -9 at any instruction leaves a log the test can judge. An instance whose value differs
from what the writer just saved right after ``save()`` returned is logged as reverted.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any

import balsam_sync


def main(argv: list[str]) -> None:
    name, rounds, jobs, saves, app_id, seed, log_path = argv
    rng = random.Random(int(seed))
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - kept open for the whole run

    def note(**fields: Any) -> None:
        log.write(json.dumps(fields) + "\n")
        log.flush()

    value = 0
    for r in range(int(rounds)):
        offline = rng.random() < 0.5
        client = balsam_sync.connect(offline=offline)
        online = client if not offline else balsam_sync.connect()
        workdirs = [f"{name}/r{r}/{i}" for i in range(int(jobs))]
        created = [client.Job(workdir=w, app_id=int(app_id), num_nodes=1) for w in workdirs]
        note(op="create", workdirs=workdirs, done=False)
        if rng.random() < 0.5:
            client.Job.objects.bulk_create(created)
        else:
            for job in created:
                job.save()
        note(op="create", workdirs=workdirs, done=True, ids=[j.id for j in created])
        mine = list(created)
        for k in range(int(saves)):
            job = rng.choice(mine)
            value += 1
            nodes = 2 + value % 1000
            note(op="save", workdir=str(job.workdir), value=nodes, done=False)
            job.num_nodes = nodes
            job.save()
            note(op="save", workdir=str(job.workdir), value=nodes, done=True, id=job.id)
            if job.num_nodes != nodes:
                note(op="reverted", workdir=str(job.workdir), value=nodes, now=job.num_nodes)
            if offline and k == int(saves) // 2:
                # Half way through, go online with the same instances: their creates are being
                # sent by the daemon (or another writer) while this process saves them.
                offline = False
                mine = _rebind(online, mine)
                client = online
            if k % 10 == 0:
                time.sleep(rng.uniform(0, 0.02))
        client.close()
        online.close()
    note(op="end")
    log.close()


def _rebind(online: Any, jobs: list[Any]) -> list[Any]:
    """The same jobs as instances of the online client, read from the shared mirror by id
    (a job the mirror cannot show right now stays the offline client's instance)."""
    found = []
    for job in jobs:
        try:
            found.append(online.Job.objects.offline().get(id=job.id))
        except Exception:
            found.append(job)
    return found


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(sys.argv[1:])

"""A short tour of balsam_sync against a locally started real Balsam server.

Registers a throw-away user, creates a site, an app and jobs online, pulls them into the
mirror, then cuts the link (a fault-injecting proxy sits between client and server) and keeps
working offline: queries answer from the mirror, new jobs are queued with provisional ids. When
the link returns, one push delivers everything exactly once.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import requests

import balsam_sync
from balsam_sync.remote.outcomes import RetryPolicy
from balsam_sync.testing.faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parents[1]


def server_url() -> str:
    script = ROOT / "scripts" / "real-balsam-server.sh"
    return subprocess.run(
        ["bash", str(script), "url"], capture_output=True, text=True, check=True
    ).stdout.strip()


def demo_user(api_root: str) -> str:
    name, password = f"demo-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    requests.post(
        f"{api_root}/auth/password/register",
        json={"username": name, "password": password},
        timeout=30,
    ).raise_for_status()
    login = requests.post(
        f"{api_root}/auth/password/login",
        data={"username": name, "password": password},
        timeout=30,
    )
    login.raise_for_status()
    print(f"registered demo user {name}")
    token: str = login.json()["access_token"]
    return token


def step(text: str) -> None:
    print(f"\n== {text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs to create online")
    args = parser.parse_args()
    api_root = server_url()
    token = demo_user(api_root)
    home = tempfile.mkdtemp(prefix="balsam-sync-demo-")
    quick = RetryPolicy(attempts=2, initial_wait=0.05, max_wait=0.1)
    with FaultProxy(api_root) as link:
        client = balsam_sync.connect(link.url, token, home=home, retry=quick)
        Site, App, Job = client.Site, client.App, client.Job

        step("online: create a site, an app and jobs (bulk_create sets every id)")
        site = Site.objects.create(name="laptop", path="/projects/demo")
        app = App.objects.create(
            site_id=site.id, name="Simulate", serialized_class="-", source_code="pass"
        )
        jobs = [
            Job(workdir=f"runs/{i}", app_id=app.id, tags={"exp": "a" if i % 2 else "b"})
            for i in range(args.jobs)
        ]
        Job.objects.bulk_create(jobs)
        print(f"created {len(jobs)} jobs, ids {jobs[0].id}..{jobs[-1].id}")
        Job.objects.filter(tags={"exp": "a"}).update(state="FAILED")

        step("pull everything into the local mirror")
        print(client.pull())

        step("queries now answer from the mirror, and say so")
        failed = Job.objects.filter(state="FAILED")
        latest = failed.order_by("-last_update")[0:10]
        print(f"{len(latest)} of {failed.count()} FAILED jobs shown")
        print(f"source={latest.source} as_of={latest.as_of}")

        step("the link drops: queries still answer from the mirror, writes are queued")
        link.set_down(True)
        q = Job.objects.filter(state="FAILED")
        print(f"{len(q)} FAILED jobs (source={q.source}: the pull is recent enough)")
        q = Job.objects.filter(state="FAILED").fresh(max_age=0)
        print(f"{len(q)} FAILED jobs (asked the server first: source={q.source}, stale={q.stale})")
        retry = Job.objects.filter(state="FAILED").update(state="RESTART_READY")
        parent = Job.objects.create(workdir="offline/parent", app_id=app.id)
        child = Job.objects.create(workdir="offline/child", app_id=app.id, parent_ids=[parent.id])
        print(
            f"marked {retry} jobs for retry; new jobs got provisional ids {parent.id}, {child.id}"
        )
        status = client.status()
        print(f"pending={status.pending} reachable={status.server_reachable}")

        step("the link returns: one push delivers everything, exactly once")
        link.set_down(False)
        print(client.push())
        child.refresh_from_db()
        print(f"parent id {parent.id}, child id {child.id} with parent_ids {child.parent_ids}")
        print(f"server: {Job.objects.online().filter(state='RESTART_READY').count()} RESTART_READY")
        print(f"requests through the link: {link.stats.requests}")
        client.close()
    print(f"\nmirror folder: {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

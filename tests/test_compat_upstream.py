"""Cross-checks with upstream ``balsam`` itself: what balsam_sync writes, upstream reads.

Upstream runs in the real server's venv (``tests/upstream.py``): it loads the client.yml that
``balsam-sync login`` wrote, lists the jobs balsam_sync created, and (as its site agent does)
loads the Apps balsam_sync registered, renders their commands and calls their ``run()``. The
other way round, balsam_sync loads an App upstream registered.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

import balsam_sync
import balsam_sync.api as api
from balsam_sync.client import Client
from balsam_sync.compat.appdef import ApplicationDefinition
from balsam_sync.compat.session import Session
from balsam_sync.orm.job import Job
from balsam_sync.orm.records import App, BatchJob, Site
from balsam_sync.resources import MARKER_KEY
from balsam_sync.schemas import _enums
from tests.conftest import FAST_RETRY, PASSWORD, User
from tests.upstream import run_upstream, upstream_cli

UPSTREAM_READS = r"""
import json, sys
from balsam.config import ClientSettings
settings = ClientSettings.load_from_file()
settings.build_client()
import balsam.api
from balsam.api import Job, Site
assert balsam.api.client is not None, "balsam.api could not load its client"
print(json.dumps({
    "token_expiry_tz": repr(settings.token_expiry.tzinfo),
    "jobs": sorted([j.id, str(j.workdir), j.state, j.get_parameters()] for j in Job.objects.all()),
    "sites": [s.name for s in Site.objects.all()],
}))
"""

UPSTREAM_AGENT = r"""
import json, sys
from balsam.api import ApplicationDefinition, Job
out = {}
for job_id in map(int, sys.argv[1:]):
    job = Job.objects.get(id=job_id)
    App = ApplicationDefinition.load_by_id(job.app_id)
    app = App(job)
    entry = {"app": App.__name__, "type": App._app_type.value, "site_id": App.resolve_site_id()}
    if App._app_type.value == "SHELL_CMD":
        entry["command"] = app.get_arg_str()
    else:
        entry["result"] = app.run(**job.get_parameters())
        entry["runner"] = app.get_arg_str().split()[1:3]
    app.preprocess()
    entry["preprocessed"] = job.state.value
    out[job_id] = entry
print(json.dumps(out))
"""

UPSTREAM_REGISTERS = r"""
import json, sys
from balsam.api import ApplicationDefinition, Job

class Greeter(ApplicationDefinition):
    '''Says hello.'''
    site = int(sys.argv[1])
    command_template = "echo {{ greeting }}, {{ name }}"
    parameters = {"greeting": {"required": False, "default": "Hello"}}

job = Greeter.submit(workdir="upstream/greet", name="world", tags={"from": "upstream"})
print(json.dumps({"app_id": Greeter.__app_id__, "job_id": job.id}))
"""


@pytest.fixture
def client_yml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "dot-balsam" / "client.yml"
    monkeypatch.setenv("BALSAM_CLIENT_PATH", str(path))
    for name in ("BALSAM_SYNC_API_ROOT", "BALSAM_SYNC_TOKEN", "BALSAM_SYNC_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return path


def sync_login(user: User, client_yml: Path) -> None:
    """Log in with the ``balsam-sync`` command, as a user would."""
    argv = [sys.executable, "-c", "from balsam_sync.cli import main; main()", "login"]
    argv += ["--url", user.api_root, "--username", user.username, "--password-stdin"]
    env = {**os.environ, "BALSAM_CLIENT_PATH": str(client_yml)}
    run = subprocess.run(
        argv, input=PASSWORD + "\n", capture_output=True, text=True, env=env, check=False
    )
    assert run.returncode == 0, run.stderr


@pytest.fixture
def logged_in(user: User, client_yml: Path, tmp_path: Path) -> Iterator[Client]:
    """A client built from the client.yml that ``balsam-sync login`` wrote."""
    sync_login(user, client_yml)
    c = balsam_sync.connect(home=str(tmp_path / "home"), retry=FAST_RETRY)
    balsam_sync.set_default_client(c)
    yield c
    balsam_sync.set_default_client(None)
    c.close()


def test_upstream_loads_the_client_yml_of_balsam_sync_login_and_lists_our_jobs(
    logged_in: Client, client_yml: Path, tmp_path: Path
) -> None:
    stored = yaml.safe_load(client_yml.read_text())
    assert isinstance(stored["token_expiry"], datetime) and stored["token_expiry"].tzinfo is None
    site = api.Site(f"polaris-{uuid.uuid4().hex[:6]}", "/projects/foo")
    site.save()
    app = api.App(site.id, "Hello", "payload", "print('hi')")
    app.save()
    jobs = [
        api.Job(f"test/run{i}", app.id, parameters={"n": i}, tags={"grp": f"g{i}"})
        for i in range(3)
    ]
    api.Job.objects.bulk_create(jobs)
    api.push()  # settles the creates: their creation tag is taken off the server

    seen = run_upstream(UPSTREAM_READS, client_yml, tmp_path)
    assert seen["token_expiry_tz"] == "None"
    assert seen["sites"] == [site.name]
    expected = sorted([j.id, f"test/run{i}", "STAGED_IN", {"n": i}] for i, j in enumerate(jobs))
    assert seen["jobs"] == expected

    listing = upstream_cli(client_yml, tmp_path, "job", "ls")
    assert listing.returncode == 0, listing.stderr
    for i in range(3):
        assert f"test/run{i}" in listing.stdout and f"g{i}" in listing.stdout
    assert MARKER_KEY not in listing.stdout  # upstream's tools show the tags the user set


def test_one_client_yml_serves_both_logins(user: User, client_yml: Path, tmp_path: Path) -> None:
    """Upstream's ``balsam login`` file works for balsam_sync, and ours rewrites it for both."""
    login = upstream_cli(
        client_yml,
        tmp_path,
        "login",
        "--url",
        user.api_root,
        stdin=f"{user.username}\n{PASSWORD}\n",
    )
    assert login.returncode == 0, login.stderr
    written_by_upstream = yaml.safe_load(client_yml.read_text())
    c = balsam_sync.connect(home=str(tmp_path / "home"), retry=FAST_RETRY)
    try:
        site = c.Site.objects.create(f"shared-{uuid.uuid4().hex[:6]}", "/projects/shared")
        app = c.App.objects.create(site.id, "Shared", "payload", "pass")
        c.Job.objects.create("shared/1", app.id)
    finally:
        c.close()
    sync_login(user, client_yml)
    rewritten = yaml.safe_load(client_yml.read_text())
    assert rewritten["client_class"] == written_by_upstream["client_class"]
    assert isinstance(rewritten["token_expiry"], datetime)
    listing = upstream_cli(client_yml, tmp_path, "job", "ls")
    assert listing.returncode == 0, listing.stderr
    assert "shared/1" in listing.stdout


def _define_apps(site_name: str) -> tuple[type[ApplicationDefinition], type[ApplicationDefinition]]:
    class Sleeper(ApplicationDefinition):
        """Sleeps, then says goodbye."""

        site = site_name
        command_template = "sleep {{ sleeptime }} && echo {{ word }}"
        parameters = {  # noqa: RUF012 (upstream's own style: a plain class attribute)
            "word": {"required": False, "default": "goodbye", "help": "last word"}
        }

    class Adder(ApplicationDefinition):
        site = site_name

        def run(self, x: int, y: int = 2) -> int:
            import math

            return math.floor(x + y)

    return Sleeper, Adder


def test_upstream_site_agent_loads_and_runs_the_apps_we_registered(
    logged_in: Client, client_yml: Path, tmp_path: Path
) -> None:
    site = api.Site.objects.create(f"site-{uuid.uuid4().hex[:6]}", "/projects/agent")
    Sleeper, Adder = _define_apps(site.name)
    Sleeper.sync()
    sleep = Sleeper.submit("sleep/1", sleeptime=3)
    quoted = Sleeper.submit("sleep/2", sleeptime="1; rm -rf /", word="bye now")
    add = Adder.submit("add/1", x=5, y=7)

    out = run_upstream(
        UPSTREAM_AGENT, client_yml, tmp_path, str(sleep.id), str(quoted.id), str(add.id)
    )
    assert out[str(sleep.id)]["command"] == "sleep 3 && echo goodbye"
    assert out[str(quoted.id)]["command"] == "sleep '1; rm -rf /' && echo 'bye now'"
    assert out[str(add.id)] == {
        "app": "Adder",
        "type": "PY_FUNC",
        "site_id": site.id,
        "result": 12,
        "runner": ["-m", "balsam.site.launcher.python_runner"],
        "preprocessed": "PREPROCESSED",
    }
    assert out[str(sleep.id)]["site_id"] == site.id
    assert out[str(sleep.id)]["preprocessed"] == "PREPROCESSED"
    app = api.App.objects.get(id=Adder.__app_id__)
    assert app.parameters["y"].default == "2" and app.parameters["x"].required


def test_apps_synced_offline_load_in_upstream_after_the_push(
    logged_in: Client, client_yml: Path, tmp_path: Path
) -> None:
    site = api.Site.objects.create(f"site-{uuid.uuid4().hex[:6]}", "/projects/offline")
    logged_in.pull()
    offline = balsam_sync.connect(home=str(tmp_path / "home"), offline=True)
    balsam_sync.set_default_client(offline)
    try:
        Sleeper, Adder = _define_apps(site.name)
        sleep = Sleeper.submit("offline/sleep", sleeptime=4)
        add = Adder.submit("offline/add", x=1)
        assert Sleeper.__app_id__ is not None and Sleeper.__app_id__ < 0
        assert sleep.id is not None and sleep.id < 0
    finally:
        balsam_sync.set_default_client(logged_in)
        offline.close()
    report = logged_in.push()
    assert report.remaining == 0 and not report.dead, report
    assert sleep.id > 0 and add.id > 0

    out = run_upstream(UPSTREAM_AGENT, client_yml, tmp_path, str(sleep.id), str(add.id))
    assert out[str(sleep.id)]["command"] == "sleep 4 && echo goodbye"
    assert out[str(add.id)]["result"] == 3
    assert out[str(add.id)]["site_id"] == site.id


def test_we_load_and_render_an_app_upstream_registered(
    logged_in: Client, client_yml: Path, tmp_path: Path
) -> None:
    site = api.Site.objects.create(f"site-{uuid.uuid4().hex[:6]}", "/projects/theirs")
    made = run_upstream(UPSTREAM_REGISTERS, client_yml, tmp_path, str(site.id))
    apps = api.ApplicationDefinition.load_by_site(site.name)
    Greeter = apps["Greeter"]
    assert issubclass(Greeter, ApplicationDefinition) and Greeter.__app_id__ == made["app_id"]
    assert Greeter.__doc__ == "Says hello."
    job = api.Job.objects.get(id=made["job_id"])
    assert job.parameters == {"name": "world"}
    assert Greeter(job).get_arg_str() == "echo Hello, world"
    assert job.app is Greeter and job.site_id == site.id


def test_constructor_orders_and_enum_members_are_upstreams(tmp_path: Path) -> None:
    script = r"""
import inspect, json
from balsam._api import models
import balsam.schemas as s
from balsam.schemas.batchjob import BatchJobOrdering
from balsam.schemas.logevent import EventOrdering
enums = [s.JobState, s.BatchJobState, s.JobMode, s.TransferItemState, s.TransferDirection,
         s.JobOrdering, BatchJobOrdering, EventOrdering]
print(json.dumps({
    "ctors": {m: list(inspect.signature(getattr(models, m).__init__).parameters)[1:-1]
              for m in ("Site", "App", "Job", "BatchJob", "Session")},
    "enums": {e.__name__: [[m.name, m.value] for m in e] for e in enums},
}))
"""
    found = run_upstream(script, tmp_path / "none.yml", tmp_path)
    ours = {m.__name__: list(m._positional) for m in (Site, App, Job, BatchJob)}
    ours["Session"] = list(inspect.signature(Session.__init__).parameters)[1:-1]
    assert ours == found["ctors"]
    for name, members in found["enums"].items():
        enum = getattr(_enums, name)
        assert [[m.name, m.value] for m in enum] == members, name


def test_results_and_exceptions_upstream_reported_are_read(
    logged_in: Client, client_yml: Path, tmp_path: Path, app: Any
) -> None:
    """What upstream's Python runner stores on a job: a return value, or a raised exception."""
    script = r"""
import json
from balsam.schemas import serialize, serialize_exception
def fail():
    raise KeyError("missing input")
try:
    fail()
except KeyError as exc:
    error = serialize_exception(exc)
print(json.dumps({"value": serialize({"energy": -1.5, "steps": [1, 2]}), "error": error}))
"""
    payloads = run_upstream(script, client_yml, tmp_path)
    done = api.Job.objects.create("results/ok", app.id)
    done.serialized_return_value = payloads["value"]
    done.save()
    assert api.Job.objects.get(id=done.id).result_nowait() == {"energy": -1.5, "steps": [1, 2]}
    failed = api.Job.objects.create("results/failed", app.id)
    with pytest.raises(api.Job.NoResult):
        failed.result_nowait()
    failed.serialized_exception = payloads["error"]
    failed.save()
    with pytest.raises(KeyError, match="missing input"):
        failed.result_nowait()

"""Code written the upstream way (``from balsam.api import ...``) runs unchanged on balsam_sync.

Each test is a piece of upstream-style code: positional constructors, ``Path`` workdirs,
naive-UTC comparisons, upstream's enum members, ``ApplicationDefinition`` apps, sessions, and
the exceptions upstream code catches. Where it applies, the same code also runs offline and
its changes are pushed afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.api import (
    App,
    ApplicationDefinition,
    AppParameter,
    BatchJob,
    BatchJobPartition,
    EventLog,
    Job,
    JobMode,
    JobState,
    JobTransferItem,
    Session,
    Site,
    TransferDirection,
    TransferItem,
    TransferSlot,
)
from balsam_sync.client import Client
from balsam_sync.errors import OfflineError
from tests.conftest import RequestLog, User, server_jobs
from tests.mirror_view import sql


def _uid() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def site_name(api: Client) -> str:
    site = Site(f"polaris-{_uid()}", "/projects/foo")
    site.save()
    return site.name


@pytest.fixture
def offline(api: Client, user: User, tmp_path: Path) -> Iterator[Client]:
    """The default client goes offline (same mirror); ``api`` pushes afterwards."""
    api.pull()
    c = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "home"), offline=True)
    balsam_sync.set_default_client(c)
    yield c
    balsam_sync.set_default_client(api)
    c.close()


# -- positional constructors -------------------------------------------------------------------


def test_positional_constructors_as_upstream_generates_them(api: Client, user: User) -> None:
    site = Site(f"polaris-{_uid()}", "/projects/foo")
    site.save()
    app = App(site.id, "Hello", "serialized", "print('hi')")
    app.save()
    job = Job("test/run1", app.id, parameters={"name": "world"})
    job.save()
    created = Job.objects.create("test/run2", app_id=app.id, tags={"k": "v"})
    bj = BatchJob(2, 30, "mpi", site.id, "datascience", "debug")
    bj.save()
    assert (site.name, str(site.path)) == (site.name, "/projects/foo")
    assert (app.site_id, app.name, app.source_code) == (site.id, "Hello", "print('hi')")
    assert job.parameters == {"name": "world"} and created.tags == {"k": "v"}
    assert (bj.num_nodes, bj.wall_time_min, bj.job_mode, bj.queue) == (2, 30, "mpi", "debug")
    rows = {row["id"]: row for row in server_jobs(user)}
    assert rows[job.id]["workdir"] == "test/run1" and rows[created.id]["app_id"] == app.id


def test_none_arguments_mean_not_given_and_bad_positionals_are_type_errors(
    unreachable_api: Client,
) -> None:
    job = Job("a/b", 1, tags=None, data=None, parameters=None)
    assert job.tags == {} and job.data == {} and job.parameters == {}
    with pytest.raises(TypeError, match="multiple values for argument 'workdir'"):
        Job("a/b", 1, workdir="c")
    with pytest.raises(TypeError, match="takes 9 positional arguments"):
        Site(*range(10))


def test_positional_constructors_offline_then_pushed(
    api: Client, offline: Client, user: User
) -> None:
    site = Site(f"offline-{_uid()}", "/projects/bar")
    site.save()
    app = App(site.id, "Later", "payload", "pass")
    app.save()
    job = Job.objects.create("offline/1", app.id, parameters={"n": 1})
    assert site.id < 0 and app.id < 0 and job.id < 0
    report = api.push()
    assert report.remaining == 0 and not report.dead
    (row,) = server_jobs(user)
    assert (row["id"], row["workdir"], row["app_id"]) == (job.id, "offline/1", app.id)


# -- the types users compute with --------------------------------------------------------------


def test_paths_naive_utc_and_enum_members(api: Client, app: Any) -> None:
    job = Job(Path("runs") / "one", app.id)
    job.save()
    assert isinstance(job.workdir, Path)
    assert (job.workdir / "out").as_posix() == "runs/one/out"
    assert job.resolve_workdir(Path("/site/data")) == Path("/site/data/runs/one")
    job.workdir = Path("runs/two")
    job.save()
    assert Job.objects.get(id=job.id).workdir == Path("runs/two")
    assert isinstance(Site.objects.get(id=app.site_id).path, Path)

    hour_ago = datetime.utcnow() - timedelta(hours=1)
    assert job.last_update > hour_ago
    assert job.last_update.tzinfo is None
    assert abs(job.last_update - datetime.utcnow()) < timedelta(minutes=5)
    assert [j.id for j in Job.objects.filter(last_update_after=hour_ago)] == [job.id]
    aware = datetime.now(timezone(timedelta(hours=-7))) - timedelta(hours=1)
    assert [j.id for j in Job.objects.filter(last_update_after=aware)] == [job.id]

    finished, stage_in = "JOB_FINISHED", "in"  # plain str, as the server sends them
    assert JobState.job_finished == finished and TransferDirection.stage_in == stage_in
    assert job.state == JobState.staged_in and job.state is JobState.staged_in
    job.state = JobState.failed
    job.save()
    assert [j.id for j in Job.objects.filter(state=JobState.failed)] == [job.id]
    assert job.done() and not Job.objects.filter(state__ne=JobState.failed).count()
    bj = BatchJob(1, 10, JobMode.serial, app.site_id, "p", "q")
    bj.save()
    # Upstream's BatchJob reads its enums as their values: plain text, equal to the members.
    assert bj.job_mode == JobMode.serial and type(bj.job_mode) is str
    assert (bj.state, type(bj.state)) == ("pending_submission", str)


def test_exported_schemas_build_what_the_models_take(api: Client, site: Any) -> None:
    app = App.objects.create(
        site.id,
        "Staged",
        "payload",
        "pass",
        parameters={"x": AppParameter(required=True)},
        transfers={
            "input": TransferSlot(
                required=True, direction=TransferDirection.stage_in, local_path="in"
            )
        },
    )
    assert app.transfers["input"].direction is TransferDirection.stage_in
    job = Job(
        "staged/1",
        app.id,
        transfers={"input": JobTransferItem(location_alias="laptop", path="/data/in.dat")},
    )
    assert job.transfers["input"].path == Path("/data/in.dat")
    assert BatchJobPartition(job_mode=JobMode.mpi, num_nodes=1).filter_tags == {}


# -- the errors upstream code catches ----------------------------------------------------------


def test_read_only_resources_raise_what_upstream_raises(api: Client, app: Any) -> None:
    job = Job.objects.create("events/1", app.id)
    event = EventLog.objects.filter(job_id=job.id)[0]
    with pytest.raises(AttributeError, match="has no attribute 'create'"):
        EventLog.objects.create(job_id=job.id)
    with pytest.raises(AttributeError, match="has no attribute 'create'"):
        TransferItem.objects.create()
    with pytest.raises(AttributeError, match="EventLog is read-only"):
        event.to_state = "RUNNING"
    with pytest.raises(ValueError):
        EventLog()
    with pytest.raises(AttributeError, match="Cannot set app_id when updating Job"):
        job.app_id = 3


def test_state_compares_equal_to_upstreams_strings(api: Client, app: Any) -> None:
    job = Job("states/1", app.id)
    assert job._state == "creating"
    job.save()
    assert job._state == "clean"
    job.num_nodes = 2
    assert job._state == "dirty"
    job.save()
    assert job._state == "clean"


# -- ApplicationDefinition ---------------------------------------------------------------------


def test_application_definition_sync_and_submit(api: Client, site_name: str, user: User) -> None:
    class Sleeper(ApplicationDefinition):
        """Sleeps."""

        site = site_name
        command_template = "sleep {{ sleeptime }} && echo goodbye"

    Sleeper.sync()
    assert Sleeper.__app_id__ is not None
    app = App.objects.get(id=Sleeper.__app_id__)
    assert (app.name, app.description) == ("Sleeper", "Sleeps.")
    assert set(app.parameters) == {"sleeptime"} and app.parameters["sleeptime"].required
    assert "command_template" in app.source_code

    job = Sleeper.submit(workdir="test/sleep_3", sleeptime=3)
    assert job.app_id == Sleeper.__app_id__ and job.parameters == {"sleeptime": 3}
    assert Sleeper(job).get_arg_str() == "sleep 3 && echo goodbye"
    same = Job(workdir="test/sleep_4", app_id=Sleeper, parameters={"sleeptime": 4})
    same.save()
    jobs = [Sleeper.submit(workdir=f"test/{i}", sleeptime=3, save=False) for i in range(3)]
    Job.objects.bulk_create(jobs)
    assert len(server_jobs(user)) == 5

    Sleeper.command_template = "sleep {{ sleeptime }}"
    Sleeper.sync()  # updates the App of the same name, does not create another
    assert App.objects.filter(name="Sleeper").count() == 1
    loaded = ApplicationDefinition.load_by_site(site_name)["Sleeper"]
    assert loaded.__app_id__ == Sleeper.__app_id__
    assert loaded(job).get_arg_str() == "sleep 3"


def test_python_app_and_app_given_by_name(
    api: Client, site_name: str, sent: Any, user: User
) -> None:
    class Adder(ApplicationDefinition):
        site = site_name

        def run(self, x: int, y: int) -> int:
            return x + y

    job = Adder.submit("test/5plus5", x=5, y=5)
    assert set(Adder.parameters) == {"x", "y"}
    assert Adder(job).run(**job.parameters) == 10
    sent.clear()
    by_name = Job("test/by-name", "Adder", site_name=site_name, parameters={"x": 1, "y": 2})
    assert len(sent) == 1  # looked up in the constructor, as upstream does
    assert by_name.app_id == Adder.__app_id__
    again = Job("test/again", "Adder", site_name=site_name)
    assert len(sent) == 1 and again.app_id == Adder.__app_id__  # that answer, still recent
    by_name.save()
    assert by_name.app_id == Adder.__app_id__
    assert by_name.app.__name__ == "Adder"
    with pytest.raises(App.DoesNotExist, match="no App named 'Nope'"):
        Job("test/none", "Nope")
    assert len(server_jobs(user)) == 2


def test_application_definition_offline_then_pushed(
    api: Client, site_name: str, offline: Client, user: User
) -> None:
    class Echo(ApplicationDefinition):
        site = site_name
        command_template = "echo {{ word }}"

    job = Echo.submit("offline/echo", word="hi")
    Echo.sync()  # again: finds its queued App in the mirror, creates no second one
    assert Echo.__app_id__ < 0 and job.app_id == Echo.__app_id__
    report = api.push()
    assert report.remaining == 0 and not report.dead
    real = api.App.objects.online().get(name="Echo").id
    assert job.app_id == real
    (row,) = server_jobs(user)
    assert row["app_id"] == real
    assert api.App.objects.online().count() == 1
    balsam_sync.set_default_client(api)
    later = Echo.submit("online/echo", word="again")
    assert later.app_id == real == Echo.__app_id__


# -- sessions ----------------------------------------------------------------------------------


def test_session_acquires_ticks_and_deletes(api: Client, site: Any, app: Any) -> None:
    jobs = [Job(f"run/{i}", app.id, num_nodes=1) for i in range(3)]
    Job.objects.bulk_create(jobs)
    Job.objects.filter(id=[j.id for j in jobs]).update(state=JobState.preprocessed)
    sess = Session(site.id)
    sess.save()
    assert sess.id is not None and sess.heartbeat.tzinfo is None
    acquired = sess.acquire_jobs(max_num_jobs=2)
    assert len(acquired) == 2 and all(j.state is JobState.preprocessed for j in acquired)
    assert {j.id for j in acquired} <= {j.id for j in jobs}
    cached = {j.id for j in Job.objects.offline().filter(id=[j.id for j in acquired])}
    assert cached == {j.id for j in acquired}
    sess.tick()
    assert [s.id for s in Session.objects.all()] == [sess.id]
    assert Session.objects.create(site.id).id != sess.id
    sess.delete()
    assert sess.id is None
    assert [s.id for s in Session.objects.filter(id=[])] == []


def test_sessions_refuse_offline(api: Client, site: Any, offline: Client) -> None:
    with pytest.raises(OfflineError, match="not available offline"):
        Session(site.id).save()
    query = Session.objects.all()  # lazy, as upstream's: evaluating it needs the server
    with pytest.raises(OfflineError):
        query.count()


# -- site_config -------------------------------------------------------------------------------


def test_site_config_is_none_outside_a_site_and_found_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import balsam_sync.api as api_module
    from balsam_sync.compat.siteconfig import load_site_config

    monkeypatch.delenv("BALSAM_SITE_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_site_config() is None
    site_dir = tmp_path / "mysite"
    (site_dir / "data" / "run1").mkdir(parents=True)
    (site_dir / ".balsam-site").write_text("42")
    (site_dir / "settings.yml").write_text("title: Test site\nlogging:\n  level: INFO\n")
    monkeypatch.chdir(site_dir / "data" / "run1")
    found = load_site_config()
    monkeypatch.delenv("BALSAM_SITE_PATH")
    assert found is not None and found.site_id == 42
    assert found.data_path == site_dir.resolve() / "data"
    assert found.settings["logging"] == {"level": "INFO"}
    assert "site_config" in api_module.__all__


def test_everything_upstream_exports_is_exported() -> None:
    import balsam_sync.api as api_module

    upstream = [
        "Site",
        "ApplicationDefinition",
        "BatchJob",
        "Job",
        "Session",
        "TransferItem",
        "EventLog",
        "JobTransferItem",
        "JobState",
        "AppParameter",
        "TransferDirection",
        "TransferSlot",
        "JobMode",
        "BatchJobPartition",
        "site_config",
    ]
    missing = [name for name in upstream if not hasattr(api_module, name)]
    assert missing == []
    assert issubclass(api_module.Job.DoesNotExist, Exception)


def test_bad_application_definitions_raise_upstreams_errors(
    unreachable_api: Client, unreachable_sent: RequestLog
) -> None:
    """Defining a broken App fails at the class statement, as upstream's, with no request."""
    sent = unreachable_sent
    with pytest.raises(AttributeError, match="must contain the `site` attribute"):

        class NoSite(ApplicationDefinition):
            command_template = "echo"

    with pytest.raises(AttributeError, match="must not define both"):

        class Both(ApplicationDefinition):
            site = 1
            command_template = "echo {{ x }}"

            def run(self) -> None:
                pass

    with pytest.raises(AttributeError, match="valid Python identifiers"):

        class BadName(ApplicationDefinition):
            site = 1
            command_template = "echo {{ not-valid }}"

    with pytest.raises(AttributeError, match="must set a 'default'"):

        class NoDefault(ApplicationDefinition):
            site = 1
            command_template = "echo {{ x }}"
            parameters = {"x": {"required": False}}  # noqa: RUF012

    with pytest.raises(AttributeError, match="extraneous keys"):

        class Extra(ApplicationDefinition):
            site = 1
            command_template = "echo {{ x }}"
            parameters = {"y": {"required": True}}  # noqa: RUF012

    with pytest.raises(TypeError, match="missing the `self` argument"):

        class NoSelf(ApplicationDefinition):
            site = 1

            @staticmethod
            def run(x: int) -> int:
                return x

    assert len(sent) == 0


def test_submit_of_an_unsynced_app_needs_its_site(api: Client, sent: Any) -> None:
    class Lost(ApplicationDefinition):
        site = "no-such-site"
        command_template = "true"

    sent.clear()
    with pytest.raises(Site.DoesNotExist):
        Lost.submit("lost/1")
    assert Lost.__app_id__ is None
    assert [m for m, _ in sent.calls] == ["GET"]  # only the site lookup
    with pytest.raises(ValueError, match="sync"):
        Job("lost/2", app_id=Lost)


def test_the_mirror_keeps_aware_utc_text_while_models_read_naive(
    api: Client, site: Any, app: Any, offline: Client
) -> None:
    """Only what users read is naive: rows from the server and local writes stay ``+00:00``."""
    job = Job.objects.create("stored/1", app.id)  # queued offline
    bj = BatchJob(1, 10, "mpi", site.id, "p", "q")
    bj.save()
    bj.start_time = datetime(2024, 5, 1, 12, 0)  # naive: UTC
    bj.save()
    assert bj.start_time == datetime(2024, 5, 1, 12, 0)
    conn = sql(offline)
    (text,) = conn.execute("SELECT start_time FROM batch_jobs WHERE id = ?", [bj.id]).fetchone()
    assert text == "2024-05-01T12:00:00.000000+00:00"
    assert api.push().remaining == 0
    api.Job.objects.online().get(id=job.id)  # the server's row, written through
    (stamp,) = conn.execute("SELECT last_update FROM jobs WHERE id = ?", [job.id]).fetchone()
    assert stamp.endswith("+00:00") and len(stamp) == 32
    assert Job.objects.offline().get(id=job.id).last_update == datetime.fromisoformat(stamp[:-6])

"""``balsam-sync job ls / show / count``: jobs as upstream's ``balsam job`` shows them, offline.

``job ls`` takes upstream's filters (``--tag KEY=VALUE``, ``--state``, ``--exclude-state``,
``--id``, ``--workdir``, ``--app``, ``--site``, ``--by-state``); ``job show ID`` prints every
field, the parents and the events of one job; ``job count --by state`` counts by state. Each
says on stderr where its answer came from, and ``--json`` prints it as JSON.
"""

from __future__ import annotations

from typing import Any

import click

from ..client import Client
from ..errors import OfflineError
from ..orm.query import Query
from ..schemas import JobState
from .app import State, main, pass_state
from .reading import (
    Where,
    cell,
    names_of,
    origin,
    say_origin,
    site_ids,
    site_option,
    tag_filters,
    tags_text,
    where_options,
)
from .show import echo_json, stamp, table

STATES = [state.value for state in JobState]


@main.group()
def job() -> None:
    """Jobs from the mirror (offline too): ls, show, count."""


def _filters(command: Any) -> Any:
    """Upstream's ``balsam job ls`` filters, shared by ``ls`` and ``count``."""
    options = [
        click.option("-t", "--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Tag."),
        click.option("-s", "--state", type=click.Choice(STATES), help="Only this state."),
        click.option("-ns", "--exclude-state", type=click.Choice(STATES), help="Not this state."),
        click.option("--id", "ids", type=int, multiple=True, help="Only this job id (repeat)."),
        click.option("-w", "--workdir", help="Workdir contains this text."),
        click.option("-a", "--app", "app_ref", metavar="ID|NAME", help="Only this App's jobs."),
        site_option,
        where_options,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _app_id(client: Client, ref: str, sites: list[int] | None, where: Where) -> int:
    """The id of the App ``--app`` names (an id, or a name unique among the chosen sites)."""
    if ref.isdigit():
        return int(ref)
    query = client.App.objects.filter(name=ref)
    if sites is not None:
        query = query.filter(site_id=sites)
    found = [a.id for a in where(query) if a.id is not None]
    if len(found) != 1:
        many = "several Apps are" if found else "no App is"
        hint = " (choose one with --site, or give its id)" if found else ""
        raise click.BadParameter(f"{many} named {ref!r}{hint}", param_hint="--app")
    return found[0]


def _job_query(client: Client, where: Where, opts: dict[str, Any]) -> Query[Any]:
    """The query of ``job ls``/``job count``'s filters (validated before any request)."""
    query: Query[Any] = client.Job.objects.all()
    tags = tag_filters(opts["tags"])
    if tags:
        query = query.filter(tags=tags)
    if opts["state"]:
        query = query.filter(state=opts["state"])
    if opts["exclude_state"]:
        query = query.filter(state__ne=opts["exclude_state"])
    if opts["ids"]:
        query = query.filter(id=list(opts["ids"]))
    if opts["workdir"]:
        query = query.filter(workdir__contains=opts["workdir"])
    sites = site_ids(client, opts["site_selector"], where)
    if sites is not None:
        query = query.filter(site_id=sites)
    if opts["app_ref"]:
        query = query.filter(app_id=_app_id(client, opts["app_ref"], sites, where))
    return where(query)


def _counts(query: Query[Any], every: bool, as_json: bool) -> None:
    """Print how many jobs of ``query`` are in each state (the empty states too: ``every``)."""
    by_state = {state: query.filter(state=state) for state in STATES}
    counts = {state: q.count() for state, q in by_state.items()}
    counts = {state: n for state, n in counts.items() if n or every}
    shown = by_state[STATES[-1]]  # the counts were answered alike; the last says how
    say_origin(shown, "jobs")
    if as_json:
        echo_json({**origin(shown), "total": sum(counts.values()), "by_state": counts})
        return
    table(["State", "Count"], [[s, str(n)] for s, n in counts.items()])


@job.command("ls")
@_filters
@click.option("--by-state", is_flag=True, help="Count the jobs in each state instead.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most this many [all].")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
@pass_state
def ls(state: State, /, by_state: bool, limit: int, as_json: bool, **opts: Any) -> None:
    """List jobs, as upstream's `balsam job ls` does.

    \b
    balsam-sync job ls --tag experiment=XPCS --state JOB_FINISHED
    balsam-sync job ls --app Hello --site 12,my-site-folder --by-state
    """
    client, where = state.client(), Where(opts)
    query = _job_query(client, where, opts)
    if by_state:
        _counts(query, every=False, as_json=as_json)
        return
    window = query[:limit] if limit else query
    jobs = list(window)
    say_origin(window, "jobs")
    if as_json:
        echo_json({**origin(window), "jobs": [j.to_dict() for j in jobs]})
        return
    sites = names_of(where(client.Site.objects.all())) if jobs else {}
    apps = _apps(client, where) if jobs else {}
    rows = []
    for j in jobs:
        name, site_id = apps.get(j.app_id, (str(j.app_id), None))
        site = sites.get(site_id, "?") if site_id is not None else "?"
        rows.append([str(j.id), site, name, j.workdir.as_posix(), cell(j.state), tags_text(j.tags)])
    table(["ID", "Site", "App", "Workdir", "State", "Tags"], rows)


def _apps(client: Client, where: Where) -> dict[int, tuple[str, int]]:
    """``{id: (name, site id)}`` of every App; empty when the mirror cannot tell."""
    try:
        return {a.id: (a.name, a.site_id) for a in where(client.App.objects.all()) if a.id}
    except OfflineError:
        return {}


@job.command("count")
@_filters
@click.option("--by", type=click.Choice(["state"]), help="Count by state.")
@click.option("--all-states", is_flag=True, help="With --by state, list empty states too.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_state
def count(state: State, /, by: str | None, all_states: bool, as_json: bool, **opts: Any) -> None:
    """Count jobs (all, or by state), with `job ls`'s filters.

    \b
    balsam-sync job count --by state --tag experiment=XPCS
    """
    client, where = state.client(), Where(opts)
    query = _job_query(client, where, opts)
    if by == "state":
        _counts(query, every=all_states, as_json=as_json)
        return
    total = query.count()
    say_origin(query, "jobs")
    if as_json:
        echo_json({**origin(query), "total": total})
    else:
        click.echo(str(total))


@job.command("show")
@click.argument("job_id", type=int)
@where_options
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@pass_state
def show(state: State, /, job_id: int, as_json: bool, **opts: Any) -> None:
    """Show one job: every field, its parents and its events (newest first).

    \b
    balsam-sync job show 4242
    """
    client, where = state.client(), Where(opts)
    one = where(client.Job.objects.all()).get(id=job_id)
    say_origin(one, "job")
    parents = list(where(client.Job.objects.filter(id=sorted(one.parent_ids or ()))))
    events_query = where(client.EventLog.objects.filter(job_id=job_id))
    try:
        events: list[Any] | None = list(events_query)
        say_origin(events_query, "events")
    except OfflineError as exc:  # the job's history is not in the mirror yet
        events, missing = None, str(exc)
    fields = one.to_dict()
    if as_json:
        echo_json(
            {
                **origin(one),
                "job": {**fields, "parameters": _parameters(one)},
                "parents": [{"id": p.id, "state": p.state, "workdir": p.workdir} for p in parents],
                "events": None if events is None else [e.to_dict() for e in events],
            }
        )
        return
    for key in sorted(fields):
        click.echo(f"{key + ':':<26}{_text(fields[key])}")
    click.echo(f"{'parameters (decoded):':<26}{_parameters(one)}")
    click.echo("parents:" + ("" if parents else " none"))
    for p in parents:
        click.echo(f"  {p.id}  {cell(p.state)}  {p.workdir.as_posix()}")
    if events is None:
        click.echo(f"events: not in the mirror ({missing})")
        return
    click.echo("events:" + ("" if events else " none"))
    for e in events:
        data = f"  {e.data}" if e.data else ""
        click.echo(f"  {stamp(e.timestamp)}  {e.from_state} -> {e.to_state}{data}")


def _parameters(job: Any) -> Any:
    """The job's parameters, decoded (the text of the error when they cannot be)."""
    try:
        return job.parameters
    except Exception as exc:  # a pickle this process cannot load: say so, show the rest
        return f"<cannot decode: {type(exc).__name__}: {exc}>"


def _text(value: Any) -> str:
    if isinstance(value, dict) and value:
        return tags_text(value) if all(isinstance(v, str) for v in value.values()) else str(value)
    if isinstance(value, list) and value:
        return ", ".join(str(v) for v in value)
    return cell(value)

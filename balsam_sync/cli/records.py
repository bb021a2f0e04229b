"""``balsam-sync site ls / app ls / queue ls / event ls``: the other resources, offline too.

The first three are upstream's ``balsam site ls``, ``balsam app ls`` and ``balsam queue ls``
(batch jobs); ``event ls --job ID`` lists the state changes of jobs. Each says on stderr where
its answer came from, and ``--json`` prints it as JSON.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from ..orm.query import Query
from .app import State, main, pass_state
from .reading import (
    Where,
    cell,
    names_of,
    origin,
    say_origin,
    site_ids,
    site_option,
    where_options,
)
from .show import echo_json, stamp, table

ACTIVE_BATCH_STATES = ["pending_submission", "queued", "running", "pending_deletion"]
ACTIVE_SITE = timedelta(minutes=2)
"""A site is active when its agent refreshed it this recently (upstream's threshold)."""


def _listed(query: Query[Any], what: str, as_json: bool) -> list[Any] | None:
    """The objects of ``query``, its origin said on stderr; None once printed as JSON."""
    found = list(query)
    say_origin(query, what)
    if as_json:
        echo_json({**origin(query), what: [obj.to_dict() for obj in found]})
        return None
    return found


@main.group()
def site() -> None:
    """Sites from the mirror (offline too)."""


@site.command("ls")
@where_options
@click.option("--json", "as_json", is_flag=True, help="Print the sites as JSON.")
@pass_state
def site_ls(state: State, /, as_json: bool, **opts: Any) -> None:
    """List your sites, as upstream's `balsam site ls` does.

    A site is active when its agent refreshed it within 2 minutes of when the answer was
    confirmed by the server (offline: of the last pull).

    \b
    balsam-sync site ls
    """
    query = Where(opts)(state.client().Site.objects.all())
    sites = _listed(query, "sites", as_json)
    if sites is None:
        return
    as_of = query.as_of
    rows = []
    for s in sites:
        active = bool(as_of and s.last_refresh and s.last_refresh >= as_of - ACTIVE_SITE)
        path = s.path.as_posix()
        shown = path if len(path) <= 40 else "..." + path[-37:]
        when = stamp(s.last_refresh)
        rows.append([cell(s.id), cell(s.name), shown, when, "Yes" if active else "No"])
    table(["ID", "Name", "Path", "Last refresh", "Active"], rows)


@main.group()
def app() -> None:
    """Apps from the mirror (offline too)."""


@app.command("ls")
@site_option
@where_options
@click.option("--json", "as_json", is_flag=True, help="Print the apps as JSON.")
@pass_state
def app_ls(state: State, /, site_selector: str, as_json: bool, **opts: Any) -> None:
    """List Apps, as upstream's `balsam app ls` does.

    \b
    balsam-sync app ls --site 12,my-site-folder
    """
    client, where = state.client(), Where(opts)
    query = client.App.objects.all()
    sites = site_ids(client, site_selector, where)
    if sites is not None:
        query = query.filter(site_id=sites)
    apps = _listed(where(query), "apps", as_json)
    if apps is None:
        return
    names = names_of(where(client.Site.objects.all())) if apps else {}
    rows = [[cell(a.id), cell(a.name), names.get(a.site_id, "?")] for a in apps]
    table(["ID", "Name", "Site"], sorted(rows, key=lambda row: row[2]))


@main.group()
def queue() -> None:
    """Batch jobs from the mirror (offline too)."""


@queue.command("ls")
@click.option("-h", "--history", is_flag=True, help="Also the batch jobs that ended.")
@click.option("-n", "--num", type=click.IntRange(min=0), default=0, help="Only the last N.")
@click.option("--scheduler-id", type=int, help="Only the batch job with this scheduler id.")
@site_option
@where_options
@click.option("--json", "as_json", is_flag=True, help="Print the batch jobs as JSON.")
@pass_state
def queue_ls(
    state: State,
    /,
    history: bool,
    num: int,
    scheduler_id: int | None,
    site_selector: str,
    as_json: bool,
    **opts: Any,
) -> None:
    """List batch jobs (the queue), as upstream's `balsam queue ls` does: the active ones,
    all of them with --history, or the last N with --num.

    \b
    balsam-sync queue ls --history --site all
    """
    client, where = state.client(), Where(opts)
    query = client.BatchJob.objects.all()
    sites = site_ids(client, site_selector, where)
    if sites is not None:
        query = query.filter(site_id=sites)
    if not history and scheduler_id is None and num == 0:
        query = query.filter(state=ACTIVE_BATCH_STATES)
    if scheduler_id is not None:
        query = query.filter(scheduler_id=scheduler_id)
    query = where(query)
    found = list(query)
    say_origin(query, "batch_jobs")
    if num and not history and scheduler_id is None:
        found = found[-num:]
    if as_json:
        echo_json({**origin(query), "batch_jobs": [b.to_dict() for b in found]})
        return
    if not found and not history:
        click.echo("No active batch jobs (--history lists those that ended).")
        return
    names = names_of(where(client.Site.objects.all())) if found else {}
    headers = ["ID", "Site", "Scheduler ID", "State", "Queue", "Nodes", "Minutes", "Mode"]
    rows = []
    for b in found:
        fields = (b.scheduler_id, b.state, b.queue, b.num_nodes, b.wall_time_min, b.job_mode)
        rows.append([cell(b.id), names.get(b.site_id, "?"), *map(cell, fields)])
    table(headers, rows)


@main.group()
def event() -> None:
    """Job state changes from the mirror (offline too)."""


@event.command("ls")
@click.option("--job", "job_ids", type=int, multiple=True, help="Events of this job (repeat).")
@click.option("--to-state", help="Only changes to this state.")
@click.option("--from-state", help="Only changes from this state.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most this many [all].")
@where_options
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON.")
@pass_state
def event_ls(
    state: State,
    /,
    job_ids: tuple[int, ...],
    to_state: str | None,
    from_state: str | None,
    limit: int,
    as_json: bool,
    **opts: Any,
) -> None:
    """List job state changes, newest first.

    \b
    balsam-sync event ls --job 4242
    """
    query = state.client().EventLog.objects.all()
    filters = {"job_id": list(job_ids), "to_state": to_state, "from_state": from_state}
    query = query.filter(**{k: v for k, v in filters.items() if v})
    query = Where(opts)(query[:limit] if limit else query)
    events = _listed(query, "events", as_json)
    if events is None:
        return
    rows = [
        [stamp(e.timestamp), str(e.job_id), cell(e.from_state), cell(e.to_state), cell(e.data)]
        for e in events
    ]
    table(["Timestamp", "Job", "From", "To", "Data"], rows)

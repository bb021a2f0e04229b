"""``balsam-sync jobs``: list jobs from the mirror (or the server), with filters.

Kept for the scripts that use it; ``balsam-sync job ls`` and ``job count`` take upstream's
options, and this command says so on stderr.
"""

from __future__ import annotations

from typing import Any

import click

from ..client import Client
from ..orm.query import Query
from .app import State, main, pass_state
from .show import echo_json, stamp, table


def _job_row(job: Any) -> list[str]:
    state = getattr(job.state, "value", job.state)
    tags = " ".join(f"{k}:{v}" for k, v in (job.tags or {}).items())
    return [str(job.id), str(state), str(job.workdir), tags, stamp(job.last_update)]


def _job_query(client: Client, opts: dict[str, Any]) -> Query[Any]:
    """Build (and so validate) the query before any I/O."""
    filters: dict[str, Any] = {"state": list(opts["state"]), "tags": list(opts["tag"])}
    filters = {k: v for k, v in filters.items() if v}
    if opts["workdir"] is not None:
        filters["workdir__contains"] = opts["workdir"]
    query: Query[Any] = client.Job.objects.filter(**filters)
    if opts["order"]:
        query = query.order_by(opts["order"])
    return query.online() if opts["online"] else query.offline()


@main.command()
@click.option("--state", multiple=True, help="Only jobs in this state (repeatable).")
@click.option("--tag", multiple=True, metavar="KEY:VALUE", help="Only jobs with this tag (repeat).")
@click.option("--workdir", help="Only jobs whose workdir contains this text.")
@click.option("--order", help="Order by last_update, id, state or workdir ('-' descending).")
@click.option("--limit", type=click.IntRange(min=0), default=50, help="At most this many [50].")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many jobs.")
@click.option("--count", is_flag=True, help="Print only how many jobs match.")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
@click.option("--online", is_flag=True, help="Ask the server instead of the local mirror.")
@pass_state
def jobs(state: State, /, limit: int, offset: int, count: bool, **opts: Any) -> None:
    """List jobs from the mirror (works offline); deprecated: see `job ls`, `job count`."""
    _list(state, limit, offset, count, opts)
    click.echo(
        "note: `balsam-sync jobs` is deprecated: use `balsam-sync job ls` (upstream's "
        "options, --tag KEY=VALUE) or `balsam-sync job count`",
        err=True,
    )


def _list(state: State, limit: int, offset: int, count: bool, opts: dict[str, Any]) -> None:
    query = _job_query(state.client(), opts)
    total = query.count()
    if count:
        click.echo(str(total))
        return
    window = query[offset : offset + limit]
    shown = window if isinstance(window, Query) else query
    found = list(window)
    if opts["as_json"]:
        origin = {"source": shown.source, "as_of": shown.as_of}
        echo_json({"jobs": [j.to_dict() for j in found], "total": total, **origin})
        return
    if found:
        table(["id", "state", "workdir", "tags", "last_update"], [_job_row(j) for j in found])
    when = f"as of {stamp(shown.as_of)}" if shown.as_of else "(never synced: `balsam-sync pull`)"
    click.echo(f"{len(found)} of {total} jobs, from {shown.source or 'cache'} {when}")

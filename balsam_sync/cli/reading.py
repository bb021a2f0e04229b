"""What the read commands share: where a query is answered, saying so on stderr, and the
filters upstream's ``balsam`` command takes (``--tag KEY=VALUE``, ``--site ID,PATH``).

Every read goes through the public API (``client.Job.objects...``): by default under the
client's policy (the mirror when fresh, else the server; only the mirror with
``BALSAM_SYNC_OFFLINE=1``), ``--offline`` for the mirror alone, ``--online`` for the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from ..client import Client
from ..errors import OfflineError
from ..freshness import Provenanced
from ..orm.query import Query
from .show import stamp

F = TypeVar("F", bound=Callable[..., Any])
Q = TypeVar("Q", bound=Query[Any])


def where_options(command: F) -> F:
    """Add ``--offline`` / ``--online`` (where the answer may come from) to a command."""
    command = click.option(
        "--online", is_flag=True, help="Ask the server only (fails when it cannot be reached)."
    )(command)
    return click.option(
        "--offline", is_flag=True, help="Answer from the local mirror only (no request)."
    )(command)


class Where:
    """Where a command's reads are answered, as its ``--offline``/``--online`` chose."""

    def __init__(self, opts: dict[str, Any]) -> None:
        self.offline, self.online = opts.pop("offline", False), opts.pop("online", False)
        if self.offline and self.online:
            raise click.UsageError("--offline and --online exclude each other")

    def __call__(self, query: Q) -> Q:
        """``query`` under this policy (the client's own when neither flag was given)."""
        if self.offline:
            return query.offline()  # type: ignore[return-value]
        return query.online() if self.online else query  # type: ignore[return-value]


def origin(read: Provenanced | Query[Any]) -> dict[str, Any]:
    """Where a read was answered: ``source``, ``as_of``, ``stale`` (for --json output)."""
    return {"source": read.source, "as_of": read.as_of, "stale": read.stale}


def say_origin(read: Provenanced | Query[Any], what: str = "") -> None:
    """Say on stderr where the answer came from and as of when, e.g. for ``| head``."""
    place = {"cache": "the local mirror", "server": "the server"}.get(read.source or "", "?")
    when = stamp(read.as_of) if read.as_of else "never confirmed by the server"
    stale = " (stale: the server could not be reached)" if read.stale else ""
    label = f"{what}: " if what else ""
    click.echo(f"{label}source: {read.source or 'cache'} ({place}), as of: {when}{stale}", err=True)


def tag_filters(values: Iterable[str]) -> list[str]:
    """``--tag KEY=VALUE`` (upstream's form) as the query's ``key:value`` tag filters.

    The older ``KEY:VALUE`` is still accepted, with a note on stderr.
    """
    out = []
    for value in values:
        key, sep, val = value.partition("=")
        if not sep:
            key, sep, val = value.partition(":")
            if sep and key:
                click.echo(
                    f"note: --tag {value} is the old form, deprecated: write --tag {key}={val}",
                    err=True,
                )
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: write KEY=VALUE", param_hint="--tag")
        if ":" in key:
            raise click.BadParameter(
                f"{value!r}: a tag key cannot hold ':' (the server splits the filter there)",
                param_hint="--tag",
            )
        out.append(f"{key}:{val}")
    return out


def site_ids(client: Client, selector: str, where: Where) -> list[int] | None:
    """The site ids ``--site`` names (comma-separated ids or path fragments); None: all.

    Upstream's command defaults to the site it runs in, or the active ones; these commands
    read a mirror that may be offline, so they default to every site (``--site all``).
    """
    values = [v.strip() for v in selector.split(",") if v.strip()]
    if not values or "all" in values:
        return None
    ids = [int(v) for v in values if v.isdigit()]
    for fragment in (v for v in values if not v.isdigit()):
        ids.extend(s.id for s in where(client.Site.objects.filter(path=fragment)) if s.id)
    return ids


def site_option(command: F) -> F:
    """Add upstream's ``--site`` selector to a command."""
    return click.option(
        "--site",
        "site_selector",
        default="all",
        metavar="ID,PATH",
        help="Sites by id or path fragment, comma-separated [all].",
    )(command)


def names_of(query: Query[Any]) -> dict[int, str]:
    """``{id: name}`` of the sites or apps of ``query`` (for the tables' name columns);
    empty when the mirror cannot tell (the names then show as "?")."""
    try:
        return {row.id: row.name for row in query}
    except OfflineError:
        return {}


def tags_text(tags: dict[str, str] | None) -> str:
    return " ".join(f"{k}={v}" for k, v in (tags or {}).items())


def cell(value: Any) -> str:
    """A table cell: an enum's value, "-" for nothing."""
    value = getattr(value, "value", value)
    return (
        "-" if value is None or (not value and isinstance(value, str | dict | list)) else str(value)
    )

"""``balsam-sync check / salvage / rebuild``: look after the mirror file itself."""

from __future__ import annotations

import click

from ..cache import check as integrity_check
from ..errors import MirrorDamaged, MirrorError
from ..sync.salvage import SalvageReport, delete_mirror, salvage
from .app import EXIT_ERROR, State, main, pass_state
from .show import table


@main.command()
@pass_state
def check(state: State) -> None:
    """Run SQLite's integrity check on the mirror (works offline); exits 1 if it is damaged."""
    path = state.client().mirror_file
    if not path.exists():
        click.echo(f"no mirror yet at {path} (`balsam-sync pull` makes one)")
        return
    problems = integrity_check(path)
    if not problems:
        click.echo(f"{path}: ok")
        return
    click.echo(f"{path} is damaged:")
    for problem in problems[:20]:
        click.echo(f"  {problem}")
    raise MirrorDamaged(
        "the mirror is damaged: `balsam-sync salvage` keeps its queued changes and rebuilds it"
    )


def _show(report: SalvageReport, offline: bool) -> None:
    click.echo(f"the damaged file is kept at {report.damaged} (delete it when you are satisfied)")
    click.echo(
        f"recovered: {report.pending} pending, {report.in_flight} in flight, "
        f"{report.dead} dead letter(s)"
    )
    for note in report.notes:
        click.echo(f"note: {note}")
    if report.lost:
        click.echo("could NOT be recovered:")
        for line in report.lost:
            click.echo(f"  {line}")
    else:
        click.echo("nothing was lost")
    if report.pulled is not None:
        rows = [[r, str(n)] for r, n in report.pulled.fetched.items()]
        click.echo("pulled again:")
        table(["resource", "fetched"], rows)
    elif offline:
        click.echo("offline (BALSAM_SYNC_OFFLINE is set): run `balsam-sync pull` when online")
    else:
        click.echo(f"the pull failed ({report.pull_error}): run `balsam-sync pull` later")


@main.command("salvage")
@click.option("--force", is_flag=True, help="Also rebuild a sound mirror (keeping its queue).")
@pass_state
@click.pass_context
def salvage_command(ctx: click.Context, state: State, force: bool) -> None:
    """Rebuild a damaged mirror, keeping every queued change that can still be read.

    Moves the damaged file aside, recovers the queued changes and dead letters into a fresh
    mirror, and pulls again. Says exactly what could not be recovered (and exits 1 then).
    """
    client = state.client()
    path = client.mirror_file
    if not path.exists():
        raise MirrorError(f"there is no mirror at {path}: nothing to salvage")
    if not integrity_check(path) and not force:
        click.echo(f"{path} is sound: nothing to salvage (--force rebuilds it, keeping the queue)")
        return
    report = salvage(client)
    _show(report, client.settings.offline)
    if report.lost:
        ctx.exit(EXIT_ERROR)


@main.command()
@click.option("--force", is_flag=True, help="Delete even if changes are queued (they are lost).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def rebuild(state: State, force: bool, yes: bool) -> None:
    """Delete the mirror (even a damaged one); the next pull rebuilds it.

    Queued changes go with it: `balsam-sync push` first, or `balsam-sync salvage` to keep them.
    """
    client = state.client()
    path = client.mirror_file
    if not path.exists():
        click.echo(f"no mirror at {path}: nothing to rebuild")
        return
    st = client.status(check_server=False)
    if st.mirror_error and not force:
        raise MirrorError(
            f"{path} cannot be used, so its queued changes cannot be counted: "
            "`balsam-sync salvage` keeps them, `balsam-sync rebuild --force` deletes them"
        )
    if st.pending and not force:
        text = f"{st.pending} change(s) are not sent yet: `balsam-sync push` first (or --force)"
        raise MirrorError(text)
    lost = (st.pending or 0) + (st.dead or 0)
    if st.mirror_error:
        warning = " (it is damaged: whatever it still queues is lost)"
    else:
        warning = f" ({st.pending} unsent, {st.dead} refused changes are lost)" if lost else ""
    if not yes:
        click.confirm(f"Delete {path}{warning}?", abort=True)
    state.close()
    delete_mirror(state.client())
    click.echo(f"deleted {path}; run `balsam-sync pull` to rebuild it")

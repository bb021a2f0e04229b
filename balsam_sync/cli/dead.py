"""``balsam-sync dead``: list, show, correct, retry and discard the changes the server refused."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ..cache import Entry, EntryState
from ..client import Client
from ..errors import BalsamSyncError, UsageError
from .app import State, main, pass_state
from .show import echo_json, stamp, table


@main.group()
def dead() -> None:
    """Inspect and resolve refused changes (dead letters)."""


def _queued(e: Entry) -> str:
    return stamp(datetime.fromisoformat(e.created_at) if e.created_at else None)


def _dead_row(e: Entry) -> list[str]:
    cells = (e.seq, e.resource, e.op.value, e.obj_id, e.status or "-", e.error or "-", _queued(e))
    return [str(c) for c in cells]


def _as_dict(e: Entry) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "resource": e.resource,
        "op": e.op.value,
        "object_id": e.obj_id,
        "status": e.status,
        "error": e.error,
        "attempts": e.attempts,
        "queued_at": e.created_at,
        "payload": e.payload,
    }


@dead.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print them in full, as JSON.")
@pass_state
def dead_list(state: State, as_json: bool) -> None:
    """List refused changes and their reasons (`dead show SEQ` prints one in full)."""
    entries = state.client().dead_letters()
    if as_json:
        echo_json({"dead": [_as_dict(e) for e in entries]})
        return
    headers = ["seq", "resource", "op", "object id", "status", "error", "queued at"]
    if entries:
        table(headers, [_dead_row(e) for e in entries], widest=80)
    click.echo(f"{len(entries)} dead letter(s)" if entries else "no dead letters")


def _letter(client: Client, seq: int) -> Entry:
    entry = client.mirror.entry(seq)
    if entry is None or entry.state is not EntryState.DEAD:
        raise BalsamSyncError(f"no dead letter with seq {seq} (see `balsam-sync dead list`)")
    return entry


@dead.command("show")
@click.argument("seq", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@pass_state
def dead_show(state: State, seq: int, as_json: bool) -> None:
    """Print one refused change in full: the server's whole reason and the payload."""
    entry = _letter(state.client(), seq)
    if as_json:
        echo_json(_as_dict(entry))
        return
    click.echo(f"dead letter {entry.seq}: {entry.op.value} {entry.resource} {entry.obj_id}")
    click.echo(f"queued at:  {_queued(entry)} ({entry.attempts} attempt(s))")
    click.echo(f"refused:    {entry.status or '-'}: {entry.error or '-'}")
    click.echo("payload:")
    click.echo(json.dumps(entry.payload, indent=2, sort_keys=True, default=str))
    click.echo(f"fix it with `balsam-sync dead edit {seq} --set FIELD=VALUE`, then `dead retry`")


def _value(text: str) -> Any:
    """A --set value: JSON when it parses (12, true, {"a": 1}, "x"), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _changes(assignments: tuple[str, ...], payload_file: str | None) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if payload_file is not None:
        try:
            loaded = json.loads(Path(payload_file).read_text())
        except ValueError as exc:
            raise UsageError(f"{payload_file} is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise UsageError(f"{payload_file} must hold a JSON object of fields")
        changes.update(loaded)
    for item in assignments:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--set takes FIELD=VALUE, got {item!r}")
        changes[name.strip()] = _value(raw)
    return changes


@dead.command("edit")
@click.argument("seq", type=int)
@click.option("--set", "assignments", multiple=True, metavar="FIELD=VALUE", help="Repeatable.")
@click.option("--unset", multiple=True, metavar="FIELD", help="Drop a field from the payload.")
@click.option("--payload-file", type=click.Path(dir_okay=False, exists=True), help="JSON fields.")
@click.option("--retry", is_flag=True, help="Queue it again at once.")
@pass_state
def dead_edit(
    state: State,
    seq: int,
    assignments: tuple[str, ...],
    unset: tuple[str, ...],
    payload_file: str | None,
    retry: bool,
) -> None:
    """Correct a refused change's payload (validated like any write) before retrying it.

    VALUE is read as JSON when it parses (12, true, "text", {"k": "v"}), else as text.
    """
    client = state.client()
    _letter(client, seq)
    changes = _changes(assignments, payload_file)
    if not changes and not unset:
        raise click.UsageError("give --set FIELD=VALUE, --unset FIELD or --payload-file")
    entry = client.edit_dead(seq, changes, list(unset))
    click.echo(json.dumps(entry.payload, indent=2, sort_keys=True, default=str))
    if retry and client.retry_dead(seq):
        click.echo(f"dead letter {seq} corrected and queued again (send with `balsam-sync push`)")
    else:
        click.echo(f"dead letter {seq} corrected; queue it with `balsam-sync dead retry {seq}`")


def _chosen(client: Client, seq: int | None, everything: bool) -> list[int]:
    if (seq is None) != everything:
        raise click.UsageError("give one SEQ or --all")
    if seq is None:
        return [e.seq for e in client.dead_letters()]
    return [_letter(client, seq).seq]


_SEQ = click.argument("seq", type=int, required=False)
_ALL = click.option("--all", "everything", is_flag=True, help="Every dead letter.")


@dead.command("retry")
@_SEQ
@_ALL
@pass_state
def dead_retry(state: State, seq: int | None, everything: bool) -> None:
    """Queue a refused change again."""
    client = state.client()
    done = [s for s in _chosen(client, seq, everything) if client.retry_dead(s)]
    click.echo(f"queued again: {len(done)} (send with `balsam-sync push`)")


@dead.command("discard")
@_SEQ
@_ALL
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def dead_discard(state: State, seq: int | None, everything: bool, yes: bool) -> None:
    """Drop a refused change for good."""
    client = state.client()
    seqs = _chosen(client, seq, everything)
    if seqs and not yes:
        click.confirm(f"Discard {len(seqs)} refused change(s) for good?", abort=True)
    done = [s for s in seqs if client.discard_dead(s)]
    click.echo(f"discarded: {len(done)}")

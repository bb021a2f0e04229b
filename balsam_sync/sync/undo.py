"""Take a change back from the mirror and the outbox, or lay a parked one back on.

``withdraw``: when the server refuses the token (401) while a write sends its own change, the
call raises ``NotAuthenticated`` and must leave nothing behind; otherwise logging in and
calling again would apply the change twice. Entries already sent are kept: they may have been
applied. ``revive``: a dead letter is queued again and its change shown again.
"""

from __future__ import annotations

from ..cache.mirror import Mirror
from ..cache.outbox import EntryState, Op
from ..resources import RESOURCES, Row


def withdraw(
    mirror: Mirror, resource: str, op: Op, seqs: list[int], before: dict[int, Row | None]
) -> int:
    """Forget the unsent entries ``seqs`` and restore their objects' rows from ``before``.

    ``before`` holds each object's mirror row as it was before the change (None: it had none).
    Returns how many entries were taken back.
    """
    outbox, store = mirror.outbox, mirror.store
    with store.write():
        entries = [e for s in seqs if (e := outbox.get(s)) and e.state is EntryState.PENDING]
        ids = [e.obj_id for e in entries]
        for entry in entries:
            outbox.forget(entry.seq)
        if op is Op.CREATE:
            store.delete(resource, ids)
            return len(entries)
        store.upsert(resource, [row for i in ids if (row := before.get(i)) is not None])
        outbox.overlay(resource, ids)
        if op is Op.DELETE:
            # The local delete cascaded (jobs of an app, events of a job, ...): those rows are
            # gone from the mirror, so what it knows of the other resources is incomplete.
            for name in RESOURCES:
                mirror.coverage.invalidate(name)
    return len(entries)


def revive(mirror: Mirror, seq: int) -> bool:
    """Queue dead letter ``seq`` again and lay its change back on the mirror."""
    outbox, store = mirror.outbox, mirror.store
    entry = outbox.get(seq)
    if entry is None or entry.state is not EntryState.DEAD:
        return False
    res = RESOURCES[entry.resource]
    with store.write():
        outbox.revive(seq)
        if entry.op is Op.CREATE:
            store.upsert(res.name, [res.provisional_row(entry.obj_id, entry.payload)])
        elif entry.op is Op.DELETE:
            store.delete_cascade(res.name, [entry.obj_id])
        else:
            outbox.overlay(res.name, [entry.obj_id])
    return True

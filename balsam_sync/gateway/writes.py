"""Writes: applied to the mirror and queued in one transaction, then pushed at once unless
the link is known to be down (a write never waits on a bad link)."""

from __future__ import annotations

from ..cache.outbox import Op
from ..errors import BalsamSyncError, NotAuthenticated, ServerUnreachable
from ..resources import Resource, Row
from ..spec import QuerySpec
from ..sync.undo import revive, withdraw
from .core import GatewayCore
from .writing import WriteResult


class Writes(GatewayCore):
    """The write half of the gateway."""

    def _queue(
        self, res: Resource, op: Op, items: list[tuple[int, Row]], rows: list[Row]
    ) -> list[int]:
        """Apply ``rows`` to the mirror and queue ``items``, in one transaction."""
        mirror = self.mirror
        with mirror.store.write():
            if op is Op.DELETE:
                mirror.store.delete_cascade(res.name, [obj_id for obj_id, _ in items])
            else:
                mirror.store.upsert(res.name, rows)
            seqs = mirror.outbox.enqueue(res.name, op, items)
            mirror.coverage.forget_windows()
        return seqs

    def _push_now(
        self, res: Resource, op: Op, seqs: list[int], before: dict[int, Row | None]
    ) -> dict[int, BalsamSyncError]:
        """Send the queue (``seqs`` included) now; return rejections by item index.

        A write never waits: not offline, not while the server is known to be unreachable,
        not for another process's push (which sends these entries too), not for creates the
        server may still be running. The change stays queued and the call returns.

        Raises:
            NotAuthenticated: the server refused the token; the change was taken back
                (``before`` holds the rows to restore), so calling again after logging in
                applies it once.
        """
        if self.offline or self.remote.transport.link.down():
            return {}
        with self.remote.transport.impatient():  # a silent server is given up on at once
            report = self.replayer().push(own=seqs, lock_wait=0.0, settle_wait=0.0, force=False)
        if report.paused_for_auth:
            withdraw(self.mirror, res.name, op, seqs, before)
            raise NotAuthenticated(
                f"{report.error}. Nothing was changed: log in again (`balsam-sync login`), "
                "then repeat the call",
                method="",
                url=self.remote.transport.api_root,
                status=401,
                body=None,
            )
        return {i: report.rejected[s] for i, s in enumerate(seqs) if s in report.rejected}

    def _current(self, res: Resource, ids: list[int]) -> list[Row | None]:
        """The mirror's rows for ``ids`` (provisional ids resolved), in order; None if gone."""
        mapping = self.mirror.outbox.real_ids([i for i in ids if i < 0])
        ids = [mapping.get(i, i) for i in ids]
        spec = QuerySpec(res.name).with_filters({"id": ids})
        store = self.mirror.store
        found = {r["id"]: store.decode(res.name, r) for r in store.query(spec)}
        return [found.get(i) for i in ids]

    def real_id(self, obj_id: int) -> int:
        """The server id of a provisional id once known (else the id itself)."""
        return self.mirror.outbox.real_ids([obj_id]).get(obj_id, obj_id) if obj_id < 0 else obj_id

    def create(self, res: Resource, payloads: list[Row]) -> WriteResult:
        """Create objects: provisional rows now, server rows once acknowledged."""
        temps = self.mirror.outbox.temp_ids(len(payloads))
        rows = [res.provisional_row(temp, p) for temp, p in zip(temps, payloads, strict=True)]
        seqs = self._queue(res, Op.CREATE, list(zip(temps, payloads, strict=True)), rows)
        errors = self._push_now(res, Op.CREATE, seqs, {})
        current = self._current(res, temps)
        # A created object keeps its id even if its row has left the mirror meanwhile (another
        # process deleted it): otherwise the next save() would create it a second time.
        for i, (temp, payload) in enumerate(zip(temps, payloads, strict=True)):
            if current[i] is None and i not in errors:
                current[i] = res.provisional_row(self.real_id(temp), payload)
        return WriteResult(current, errors)

    def update(self, res: Resource, obj_id: int, changes: Row) -> WriteResult:
        return self.bulk_update(res, [(obj_id, changes)])

    def bulk_update(self, res: Resource, items: list[tuple[int, Row]]) -> WriteResult:
        """Apply per-object changes locally and queue them."""
        items = [(self.real_id(obj_id), changes) for obj_id, changes in items]
        ids = [i for i, _ in items]
        before = dict(zip(ids, self._current(res, ids), strict=True))
        after = dict(before)
        rows = []
        for obj_id, changes in items:
            base = after.get(obj_id)
            if base is not None:
                base = {**base, **changes}
                after[obj_id] = base
                rows.append(base)
        seqs = self._queue(res, Op.UPDATE, items, rows)
        errors = self._push_now(res, Op.UPDATE, seqs, before)
        return WriteResult(self._current(res, [i for i, _ in items]), errors)

    def _resolve_ids(self, res: Resource, spec: QuerySpec) -> list[int]:
        """The ids a query update/delete means now: the server's answer, else the mirror's
        (NoEvidence when it cannot tell: nothing is changed rather than the wrong objects)."""
        if not self.offline:
            try:
                rows, _ = self.remote.select(res, spec.unsliced())
                self.mirror.accept(res.name, rows)
                return [r["id"] for r in self.mirror.store.query(spec.unsliced())]
            except ServerUnreachable:
                pass
        self.mirror.coverage.evidence(spec.unsliced(), False)
        return [r["id"] for r in self.mirror.store.query(spec.unsliced())]

    def query_update(self, res: Resource, spec: QuerySpec, changes: Row) -> WriteResult:
        ids = self._resolve_ids(res, spec)
        if not ids:
            return WriteResult([], {})
        return self.bulk_update(res, [(i, changes) for i in ids])

    def delete(self, res: Resource, obj_id: int) -> WriteResult:
        obj_id = self.real_id(obj_id)
        before = dict(zip([obj_id], self._current(res, [obj_id]), strict=True))
        seqs = self._queue(res, Op.DELETE, [(obj_id, {})], [])
        return WriteResult([], self._push_now(res, Op.DELETE, seqs, before))

    def revive(self, seq: int) -> bool:
        """Queue a dead letter again and lay its change back on the mirror."""
        return revive(self.mirror, seq)

    def query_delete(self, res: Resource, spec: QuerySpec) -> WriteResult:
        ids = self._resolve_ids(res, spec)
        if not ids:
            return WriteResult([], {})
        before = dict(zip(ids, self._current(res, ids), strict=True))
        seqs = self._queue(res, Op.DELETE, [(i, {}) for i in ids], [])
        errors = self._push_now(res, Op.DELETE, seqs, before)
        return WriteResult([{"id": i} for i in ids], errors)

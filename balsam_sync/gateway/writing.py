"""What a write hands back to the manager, and the local row of an object created offline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import BalsamSyncError
from ..resources import Resource

Row = dict[str, Any]


@dataclass
class WriteResult:
    """Rows after a write (None where the object is gone), and rejections by item index."""

    rows: list[Row | None]
    errors: dict[int, BalsamSyncError]

    @property
    def count(self) -> int:
        return len(self.rows) - len(self.errors)

    def raise_first(self) -> None:
        """Raise the first rejection (saying how many items were refused)."""
        if self.errors:
            index = min(self.errors)
            exc = self.errors[index]
            if len(self.errors) > 1:
                exc.add_note(f"{len(self.errors)} of {len(self.rows)} items were refused")
            raise exc


def provisional_row(res: Resource, temp_id: int, payload: Row) -> Row:
    """The local row of an object created offline: its fields, the server's defaults, a temp id."""
    row = {k: v for k, v in payload.items() if k in res.out.model_fields}
    row.update(res.provisional)
    row["id"] = temp_id
    return row

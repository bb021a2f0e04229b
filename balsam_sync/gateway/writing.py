"""What a write hands back to the manager: rows, and rejections by item index."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BalsamSyncError
from ..resources import Row


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

"""What the fast memory asks of the slow one. `Memory` is handed an implementation when it is wired up
(`engramma.Memory` wires in the updater's), so that memory/ never imports the updater: the queue, lineage and
adapters are the updater's tables, and forgetting reaches the weights through here."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Protocol

import duckdb


class Weights(Protocol):
    def enqueue(self, con: duckdb.DuckDBPyConnection, item_ids: list[int], *, train_scopes: list[str],
                priorities: list[int], corrects: list[int | None], now: datetime) -> None:
        """Queue newly observed items for training."""

    def learned_scopes(self, con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> dict[int, str]:
        """The train scope each of `item_ids` was queued for or trained into, for those that were."""

    def pending(self, con: duckdb.DuckDBPyConnection) -> int:
        """How many items wait to be trained."""

    def forget(self, con: duckdb.DuckDBPyConnection, store_folder: Path, item_ids: list[int], mode: str,
               now: datetime) -> None:
        """Forgotten items leave the queue and every adapter: those that saw them are tainted, then rolled back
        or queued for a rebuild as `mode` (the policy's `gate.on_forget`) says. Runs in the forget's
        transaction, after its events."""

"""The updater's side of `memory.weights.Weights`: what `Memory` asks of the queue, lineage and adapters."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb

from engramma.updater import augment, queue, registry
from engramma.updater.unlearn import unlearn


class UpdaterWeights:
    """The weights behind `engramma.Memory`: LoRA adapters trained from the update queue."""

    enqueue = staticmethod(queue.enqueue)

    @staticmethod
    def learned_scopes(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> dict[int, str]:
        return {**queue.queued_scopes(con, item_ids), **registry.trained_scopes(con, item_ids)}

    @staticmethod
    def pending(con: duckdb.DuckDBPyConnection) -> int:
        return queue.pending_count(con)

    @staticmethod
    def forget(con: duckdb.DuckDBPyConnection, store_folder: Path, item_ids: list[int], mode: str,
               now: datetime) -> None:
        queue.withdraw(con, item_ids)
        augment.erase(con, item_ids)
        unlearn(con, store_folder, item_ids, mode, now)

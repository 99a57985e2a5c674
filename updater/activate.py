"""Changing a scope's active adapter, and everything that follows from it, in one place for the gate, the CLI
and unlearning: the registry's statuses, the index settled for the scope's `evict` items, and
`adapters/active.json` rewritten for the agents."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from engramma.memory import items as item_rows
from engramma.updater import queue, registry
from engramma.updater.measure import probe_marks
from engramma.updater.registry import AdapterStatus


@dataclass(frozen=True, slots=True)
class Change:
    train_scope: str
    retired: str | None  # the version that was active before, if any
    active: str | None  # the version active now (None: the base model)


def activate(con: duckdb.DuckDBPyConnection, store_folder: Path, train_scope: str, version: str | None,
             now: datetime, *, note: str | None = None, rollback: bool = False) -> Change:
    """Make `version` (None: the base model) the active adapter of `train_scope`, in the caller's transaction.

    A promotion (the default) checks that `version` may be made active and records which version it replaced;
    `note` goes on the new version. A rollback goes back to an earlier version, or to none, and leaves that
    record as it was; `note` goes on the retired version."""
    if rollback:
        current = registry.active(con, store_folder, train_scope)
        if current is not None:
            registry.set_status(con, current.version, AdapterStatus.RETIRED, now, note=note)
        if version is not None:
            registry.set_status(con, version, AdapterStatus.ACTIVE, now)
        retired = current.version if current else None
    else:
        previous = registry.promote(con, store_folder, version, now, note=note)
        retired = previous.version if previous else None
    settle_index(con, store_folder, train_scope, now)
    registry.write_active_pointer(con, store_folder)
    return Change(train_scope, retired, version)


def settle_index(con, store_folder: Path, train_scope: str, now: datetime) -> tuple[list[int], list[int]]:
    """Make the index agree with the weights for the scope's `after_consolidation: evict` items: out of the
    index exactly when the active adapter answers their probe. Returns (evicted, restored) ids."""
    active = registry.active(con, store_folder, train_scope)
    in_index = item_rows.evictable(con, queue.in_scope(con, train_scope), now)
    answered = probe_marks(con, active.version, list(in_index)) if active else {}
    evict = sorted(i for i, indexed in in_index.items() if indexed and answered.get(i) is True)
    restore = sorted(i for i, indexed in in_index.items() if not indexed and answered.get(i) is not True)
    item_rows.set_in_index(con, store_folder, evict, False, now)
    item_rows.set_in_index(con, store_folder, restore, True, now)
    return evict, restore

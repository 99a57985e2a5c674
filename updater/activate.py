"""Changing a scope's active adapter, and everything that follows from it, in one place for the gate, the CLI
and unlearning: the registry's statuses, the index settled for the scope's `evict` items, and
`adapters/active.json` rewritten for the agents."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from engramma.memory.store import append_events, naive_utc
from engramma.updater import registry
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
    rows = con.execute(
        "SELECT i.id, i.in_index, p.correct FROM items i JOIN queue q ON q.item_id = i.id "
        "LEFT JOIN probe_results p ON p.item_id = i.id AND p.evaluated = ? "
        "WHERE i.status = 'kept' AND i.route = 'both' AND i.after_consolidation = 'evict' AND q.train_scope = ? "
        "AND (i.valid_to IS NULL OR i.valid_to > ?)",
        [active.version if active else "", train_scope, naive_utc(now)]).fetchall()
    evict = [i for i, in_index, correct in rows if in_index and correct is True]
    restore = [i for i, in_index, correct in rows if not in_index and correct is not True]
    for ids, in_index, op in ((evict, False, "evict"), (restore, True, "restore")):
        if ids:
            con.execute("UPDATE items SET in_index = ? WHERE id IN (SELECT unnest(?))", [in_index, ids])
            append_events(con, store_folder, op, ids, now)
    return evict, restore

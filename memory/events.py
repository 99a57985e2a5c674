"""The `events` table's owner: the log every index view replays to follow other processes' writes.

INVARIANT: append-only; seq is dense and increasing. A `Memory` appends after the seq its view has caught up to,
under the write lock, and moves the head file before it commits (memory/write.py); writers outside a Memory
append after the newest seq (`store.append_events`).
"""
from __future__ import annotations

from datetime import datetime

import duckdb

from engramma.memory.store import EVENTS_SCHEMA, insert, naive_utc, scalar


def append(con: duckdb.DuckDBPyConnection, seqs: list[int], op: str, ids: list[int], scopes: list[str | None],
           now: datetime) -> None:
    """One event per id: `op` happened to it at `now`, numbered `seqs`."""
    insert(con, "events", {"seq": seqs, "op": [op] * len(seqs), "item_id": ids, "scope": scopes,
                           "happened_at": [naive_utc(now)] * len(seqs)}, EVENTS_SCHEMA)


def last_seq(con: duckdb.DuckDBPyConnection) -> int:
    """The newest event's seq; 0 before the first."""
    return scalar(con, "SELECT coalesce(max(seq), 0) FROM events")


def touched_since(con: duckdb.DuckDBPyConnection, seq: int) -> list[int]:
    """Every item an event after `seq` is about."""
    return [r[0] for r in con.execute(
        "SELECT DISTINCT item_id FROM events WHERE seq > ? AND item_id IS NOT NULL", [seq]).fetchall()]

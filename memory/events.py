"""The `events` table's owner: the log every index view replays to follow other processes' writes.

INVARIANT: append-only; seq is dense and increasing. A `Memory` appends after the seq its view has caught up to,
under the write lock, and moves the head file before it commits (memory/write.py); writers outside a Memory
append after the newest seq (`append_after_newest`).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb

from engramma.memory.store import EVENTS_SCHEMA, insert, naive_utc, scalar, write_head


def append(con: duckdb.DuckDBPyConnection, seqs: list[int], op: str, ids: list[int], scopes: list[str | None],
           now: datetime) -> None:
    """One event per id: `op` happened to it at `now`, numbered `seqs`."""
    insert(con, "events", {"seq": seqs, "op": [op] * len(seqs), "item_id": ids, "scope": scopes,
                           "happened_at": [naive_utc(now)] * len(seqs)}, EVENTS_SCHEMA)


def append_after_newest(con: duckdb.DuckDBPyConnection, folder: Path, op: str, ids: list[int], now: datetime) -> int:
    """Append events written outside a Memory (the gate evicting items from the index, unlearning) after the
    newest seq, and move the head, so that every open Memory brings its view up to date. Returns the last seq."""
    seq = last_seq(con)
    seqs = list(range(seq + 1, seq + 1 + len(ids)))
    append(con, seqs, op, ids, [None] * len(ids), now)
    write_head(folder, seqs[-1])
    return seqs[-1]


def last_seq(con: duckdb.DuckDBPyConnection) -> int:
    """The newest event's seq; 0 before the first."""
    return scalar(con, "SELECT coalesce(max(seq), 0) FROM events")


def touched_since(con: duckdb.DuckDBPyConnection, seq: int) -> list[int]:
    """Every item an event after `seq` is about."""
    return [r[0] for r in con.execute(
        "SELECT DISTINCT item_id FROM events WHERE seq > ? AND item_id IS NOT NULL", [seq]).fetchall()]

"""The `items` table's owner: every query on its rows, for `Memory`, its index view and readers outside it (the
updater reads items for training through here and `store.item_from_row`). memory/write.py builds the rows of new
observations; the schema is in memory/store.py.
INVARIANT: rows are never deleted, so ids are never reused; forgetting erases a row's text, meta and vector."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa

from engramma.memory import events
from engramma.memory.store import ITEM_COLUMNS, insert, item_from_row, naive_utc, scalar
from engramma.types import Item, Record

# An item is private when it belongs to one user, or holds personal data (signals.pii is the PII kinds found).
PRIVATE = "(scope LIKE 'user:%' OR json_array_length(json_extract(signals, '$.pii')) > 0)"

VECTOR_CHUNK = 50_000  # rows of vectors read at a time: at 1M items they are 1.5 GB


def decision(con: duckdb.DuckDBPyConnection, item_id: int) -> tuple[str, str, str, str] | None:
    """(status, route, rule, scope) of any item ever observed (kept, dropped or forgotten), or None."""
    rows = con.execute("SELECT status, route, rule, scope FROM items WHERE id = ?", [item_id]).fetchall()
    return rows[0] if rows else None


def private_ids(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Every item from a user's scope or with personal data, whatever its status."""
    return [r[0] for r in con.execute(f"SELECT id FROM items WHERE {PRIVATE} ORDER BY 1").fetchall()]


def keyed(con: duckdb.DuckDBPyConnection, keys: list[str]) -> list[tuple]:
    """(id, scope, key, content_hash, ts, status, valid_to) of every item not forgotten with one of `keys`."""
    return con.execute("SELECT id, scope, key, content_hash, ts, status, valid_to FROM items "
                       "WHERE status != 'forgotten' AND key IN (SELECT unnest(?))", [keys]).fetchall()


def dropped_repeats(con: duckdb.DuckDBPyConnection, item_ids: list[int], since: datetime) -> dict[int, int]:
    """item -> how many observations dropped as its duplicates came at or after `since` (naive UTC)."""
    return dict(con.execute("SELECT duplicate_of, count(*) FROM items WHERE status = 'dropped' "
                            "AND duplicate_of IN (SELECT unnest(?)) AND ts >= ? GROUP BY ALL",
                            [item_ids, since]).fetchall())


def with_decisions(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> list[tuple]:
    """ITEM_COLUMNS, then signals, policy_hash and policy_name, of `item_ids`: what explains their decisions."""
    return con.execute(f"SELECT {ITEM_COLUMNS}, signals, policy_hash, policy_name FROM items "
                       "WHERE id IN (SELECT unnest(?))", [item_ids]).fetchall()


def decided(con: duckdb.DuckDBPyConnection, item_id: int) -> tuple | None:
    """What `explain` shows of any item ever observed, whatever its status (see memory/explain.py), or None."""
    rows = con.execute(
        "SELECT status, kind, scope, source, key, text, probe_question, probe_answer, meta, ts, route, rule, reasons, "
        "signals, policy_name, policy_hash, traces FROM items WHERE id = ?", [int(item_id)]).fetchall()
    return rows[0] if rows else None


def with_pii(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> list[int]:
    """Those of `item_ids` in which personal data was found, whatever their status."""
    return [r[0] for r in con.execute("SELECT id FROM items WHERE json_array_length(json_extract(signals, '$.pii')) > 0 "
                                      "AND id IN (SELECT unnest(?)) ORDER BY 1", [item_ids]).fetchall()]


def current(con: duckdb.DuckDBPyConnection, item_ids: list[int], now: datetime) -> list[int]:
    """Those of `item_ids` that are kept and current at `now` (not superseded or expired), in id order."""
    return [r[0] for r in con.execute(
        "SELECT id FROM items WHERE id IN (SELECT unnest(?)) AND status = 'kept' AND (valid_to IS NULL OR valid_to > ?) "
        "ORDER BY 1", [item_ids, naive_utc(now)]).fetchall()]


def kept(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> list[int]:
    """Those of `item_ids` still kept (neither dropped nor forgotten), in id order."""
    return [r[0] for r in con.execute("SELECT id FROM items WHERE status = 'kept' AND id IN (SELECT unnest(?)) "
                                      "ORDER BY 1", [item_ids]).fetchall()]


def add(con: duckdb.DuckDBPyConnection, columns: dict, schema: pa.Schema) -> None:
    """Insert new rows, one value per row in each of `columns` (memory/write.py builds them; `schema` is
    `store.items_schema(dim)`), in one bulk Arrow insert."""
    insert(con, "items", columns, schema)


def next_id(con: duckdb.DuckDBPyConnection) -> int:
    return scalar(con, "SELECT coalesce(max(id), 0) + 1 FROM items")


def load(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> dict[int, Item]:
    """id -> `Item` of those of `item_ids` that exist (a forgotten item comes back erased)."""
    if not item_ids:
        return {}
    rows = con.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id IN (SELECT unnest(?))", [item_ids]).fetchall()
    return dict(item_from_row(r) for r in rows)


def vector_rows(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> np.ndarray:
    """The stored vectors of `item_ids`, one row each in the order given; (0, 1) for none."""
    if not item_ids:
        return np.zeros((0, 1), np.float32)
    table = con.sql("SELECT id, vector FROM items WHERE id IN (SELECT unnest($ids))",
                    params={"ids": item_ids}).to_arrow_table()
    row = {int(i): n for n, i in enumerate(table.column("id").to_pylist())}
    found = np.asarray(table.column("vector").combine_chunks().flatten(), np.float32).reshape(len(row), -1)
    return found[[row[i] for i in item_ids]]


def not_kept(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> list[int]:
    """Those of `item_ids` dropped or forgotten, in id order."""
    return [r[0] for r in con.execute("SELECT id FROM items WHERE status != 'kept' AND id IN (SELECT unnest(?)) "
                                      "ORDER BY 1", [item_ids]).fetchall()]


def untrained_texts(con: duckdb.DuckDBPyConnection, scope: str, *, exclude: list[int], limit: int) -> list[str]:
    """Up to `limit` texts of `scope`'s kept index-only items, none of `exclude` (what adapters saw), in a fixed
    order that does not depend on when they came: general text the adapters never trained on."""
    return [r[0] for r in con.execute(
        "SELECT text FROM items WHERE status = 'kept' AND route = 'index' AND scope = ? AND text IS NOT NULL "
        "AND id NOT IN (SELECT unnest(?)) ORDER BY hash(content_hash) LIMIT ?", [scope, exclude, limit]).fetchall()]


# -- eviction: items whose only home is the weights -------------------------------------------------------------

EVICTABLE = "status = 'kept' AND route = 'both' AND after_consolidation = 'evict'"


def evicted_among(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> set[int]:
    """Those of `item_ids` out of the index because an adapter learned them."""
    return {r[0] for r in con.execute(f"SELECT id FROM items WHERE {EVICTABLE} AND NOT in_index "
                                      "AND id IN (SELECT unnest(?))", [item_ids]).fetchall()}


def evictable(con: duckdb.DuckDBPyConnection, item_ids: list[int], now: datetime) -> dict[int, bool]:
    """Those of `item_ids` that leave the index once learned (`after_consolidation: evict`) and are current at
    `now`: id -> in the index now."""
    return dict(con.execute(f"SELECT id, in_index FROM items WHERE {EVICTABLE} AND id IN (SELECT unnest(?)) "
                            "AND (valid_to IS NULL OR valid_to > ?)", [item_ids, naive_utc(now)]).fetchall())


def set_in_index(con: duckdb.DuckDBPyConnection, store_folder: Path, item_ids: list[int], in_index: bool,
                 now: datetime) -> None:
    """Evict `item_ids` from the index (False) or restore them (True), and log it for the index views."""
    if item_ids:
        con.execute("UPDATE items SET in_index = ? WHERE id IN (SELECT unnest(?))", [in_index, item_ids])
        events.append_after_newest(con, store_folder, "restore" if in_index else "evict", item_ids, now)


# -- for the report: the stream over time -----------------------------------------------------------------------


def time_span(con: duckdb.DuckDBPyConnection) -> tuple[datetime | None, datetime | None]:
    """The first and last item time (naive UTC) of every item ever observed, or (None, None)."""
    return con.execute("SELECT min(ts), max(ts) FROM items").fetchone()


def routes_over_time(con: duckdb.DuckDBPyConnection, unit: str) -> list[tuple[datetime, str, int]]:
    """(time bin, route, how many) of every decision ever made, by `unit` (a `date_trunc` part), oldest first."""
    return con.execute("SELECT date_trunc(?, ts) AS bin, route, count(*) FROM items GROUP BY ALL ORDER BY bin",
                       [unit]).fetchall()


def status_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Every item ever observed, by status (kept, dropped, forgotten)."""
    return dict(con.execute("SELECT status, count(*) FROM items GROUP BY ALL").fetchall())


# -- what the index view holds ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeptItems:
    """Every kept item, in the view's two families (see memory/view.py); their vectors come separately."""

    indexed: dict[int, Item]  # routed to the recall index
    shadow: dict[int, Item]  # kept outside it: train-only, or evicted once an adapter learned them
    valid_to: dict[int, datetime]  # those that stop being current at some time (aware UTC)


@dataclass(frozen=True, slots=True)
class KeptRow:
    """A kept item as a view that follows the events sees it; the item is built only when asked for (`item()`):
    most touched rows are already in the view."""

    id: int
    in_index: bool
    valid_to: datetime | None  # aware UTC
    columns: tuple  # ITEM_COLUMNS, for `item_from_row`

    def item(self) -> Item:
        return item_from_row(self.columns)[1]


@dataclass(frozen=True, slots=True)
class StoredVectors:
    """Stored vectors of some items, in id order."""

    ids: list[int]
    scopes: list[str]
    vectors: np.ndarray  # (n, dim) float32
    in_index: np.ndarray  # (n,) bool: in the recall index, else the shadow


def kept_items(con: duckdb.DuckDBPyConnection) -> KeptItems:
    rows = con.execute(f"SELECT {ITEM_COLUMNS}, valid_to, in_index FROM items WHERE status = 'kept' "
                       "ORDER BY id").fetchall()
    return KeptItems(indexed=dict(item_from_row(r[:12]) for r in rows if r[13]),
                     shadow=dict(item_from_row(r[:12]) for r in rows if not r[13]),
                     valid_to={int(r[0]): r[12].replace(tzinfo=timezone.utc) for r in rows if r[12] is not None})


def kept_rows(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> list[KeptRow]:
    """Those of `item_ids` still kept, in id order."""
    rows = con.execute(f"SELECT {ITEM_COLUMNS}, valid_to, in_index FROM items WHERE status = 'kept' "
                       "AND id IN (SELECT unnest(?)) ORDER BY id", [item_ids]).fetchall()
    return [KeptRow(int(r[0]), bool(r[13]), r[12].replace(tzinfo=timezone.utc) if r[12] is not None else None, r[:12])
            for r in rows]


def vectors(con: duckdb.DuckDBPyConnection, item_ids: list[int], dim: int) -> Iterator[StoredVectors]:
    """The stored vectors of `item_ids`, `VECTOR_CHUNK` rows at a time."""
    item_ids = sorted(item_ids)
    for start in range(0, len(item_ids), VECTOR_CHUNK):
        # In id order, as they were first added: an index that turns IVF trains on the same vectors.
        table = con.sql("SELECT id, scope, vector, in_index FROM items WHERE id IN (SELECT unnest($ids)) "
                        "ORDER BY id", params={"ids": item_ids[start:start + VECTOR_CHUNK]}).to_arrow_table()
        found = np.asarray(table.column("vector").combine_chunks().flatten(), np.float32)
        yield StoredVectors(ids=table.column("id").to_pylist(), scopes=table.column("scope").to_pylist(),
                            vectors=found.reshape(-1, dim),
                            in_index=np.asarray(table.column("in_index").to_pylist(), bool))


def in_index(con: duckdb.DuckDBPyConnection) -> dict[int, bool]:
    """Every kept item: whether it is in the recall index (else the shadow)."""
    return dict(con.execute("SELECT id, in_index FROM items WHERE status = 'kept'").fetchall())


# -- reading one item, and counting ---------------------------------------------------------------------------


def record(con: duckdb.DuckDBPyConnection, item_id: int) -> Record | None:
    """A kept item with its decision; None if it was never observed, was dropped or forgotten."""
    rows = con.execute(f"SELECT {ITEM_COLUMNS}, route, rule, observed_at, in_index, reasons FROM items "
                       "WHERE id = ? AND status = 'kept'", [int(item_id)]).fetchall()
    row = rows[0] if rows else None
    if row is None:
        return None
    _, item = item_from_row(row[:12])
    route, rule, observed_at, indexed, reasons = row[12:]
    return Record(id=int(item_id), item=item, route=route, rule=rule,
                  observed_at=observed_at.replace(tzinfo=timezone.utc), in_index=indexed,
                  reasons=tuple(json.loads(reasons)))


@dataclass(frozen=True, slots=True)
class Counts:
    kept: int
    by_kind: dict[str, int]  # kept items
    by_scope: dict[str, int]  # kept items
    by_route: dict[str, int]  # every decision ever made, forgotten and dropped items included
    forgotten: int


def counts(con: duckdb.DuckDBPyConnection) -> Counts:
    kept_count = scalar(con, "SELECT count(*) FROM items WHERE status = 'kept'")
    by_kind = dict(con.execute(
        "SELECT kind, count(*) FROM items WHERE status = 'kept' GROUP BY ALL ORDER BY 1").fetchall())
    by_scope = dict(con.execute(
        "SELECT scope, count(*) FROM items WHERE status = 'kept' GROUP BY ALL ORDER BY 1").fetchall())
    by_route = dict(con.execute("SELECT route, count(*) FROM items GROUP BY ALL ORDER BY 1").fetchall())
    forgotten = scalar(con, "SELECT count(*) FROM items WHERE status = 'forgotten'")
    return Counts(kept=kept_count, by_kind=by_kind, by_scope=by_scope, by_route=by_route, forgotten=forgotten)


# -- changes to existing rows (under the write lock; memory/write.py) -------------------------------------------


def kept_ids(con: duckdb.DuckDBPyConnection, *, item_id: int | None = None, scope: str | None = None) -> list[int]:
    """The kept item `item_id` (a list of one, or none), or every kept item of `scope`."""
    if item_id is not None:
        return [r[0] for r in con.execute(
            "SELECT id FROM items WHERE id = ? AND status = 'kept'", [int(item_id)]).fetchall()]
    return [r[0] for r in con.execute("SELECT id FROM items WHERE scope = ? AND status = 'kept'", [scope]).fetchall()]


def supersede(con: duckdb.DuckDBPyConnection, item_ids: list[int], until: list[datetime]) -> None:
    """Each item stops being current at its time in `until`: a newer value for its key came."""
    con.execute("UPDATE items SET valid_to = v.t FROM (SELECT unnest(?) AS id, unnest(?) AS t) v "
                "WHERE items.id = v.id", [item_ids, [naive_utc(t) for t in until]])


def erase(con: duckdb.DuckDBPyConnection, item_ids: list[int], traces: list[str | None], now: datetime) -> None:
    """Forget items: text, meta and vector go; the hash, route, rule and reasons stay, and `traces` (each one's
    explanation, made while it was whole) is kept in their place."""
    con.execute(
        "UPDATE items SET status = 'forgotten', text = NULL, prompt = NULL, response = NULL, "
        "probe_question = NULL, probe_answer = NULL, meta = NULL, vector = NULL, in_index = false, "
        "forgotten_at = ?, traces = t.traces FROM (SELECT unnest(?) AS id, unnest(?) AS traces) t "
        "WHERE items.id = t.id", [naive_utc(now), item_ids, traces])

"""The `items` table's owner for readers outside `Memory`: an item's decision, and which items are private.
(`Memory` writes the rows; the updater reads items for training through here and `store.item_from_row`.)"""
from __future__ import annotations

from datetime import datetime

import duckdb

from engramma.memory.store import naive_utc

# An item is private when it belongs to one user, or holds personal data (signals.pii is the PII kinds found).
PRIVATE = "(scope LIKE 'user:%' OR json_array_length(json_extract(signals, '$.pii')) > 0)"


def decision(con: duckdb.DuckDBPyConnection, item_id: int) -> tuple[str, str, str, str] | None:
    """(status, route, rule, scope) of any item ever observed (kept, dropped or forgotten), or None."""
    rows = con.execute("SELECT status, route, rule, scope FROM items WHERE id = ?", [item_id]).fetchall()
    return rows[0] if rows else None


def private_ids(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Every item from a user's scope or with personal data, whatever its status."""
    return [r[0] for r in con.execute(f"SELECT id FROM items WHERE {PRIVATE} ORDER BY 1").fetchall()]


def current(con: duckdb.DuckDBPyConnection, item_ids: list[int], now: datetime) -> list[int]:
    """Those of `item_ids` that are kept and current at `now` (not superseded or expired), in id order."""
    return [r[0] for r in con.execute(
        "SELECT id FROM items WHERE id IN (SELECT unnest(?)) AND status = 'kept' AND (valid_to IS NULL OR valid_to > ?) "
        "ORDER BY 1", [item_ids, naive_utc(now)]).fetchall()]


def kept(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> list[int]:
    """Those of `item_ids` still kept (neither dropped nor forgotten), in id order."""
    return [r[0] for r in con.execute("SELECT id FROM items WHERE status = 'kept' AND id IN (SELECT unnest(?)) "
                                      "ORDER BY 1", [item_ids]).fetchall()]

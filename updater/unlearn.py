"""Forgetting reaches the weights. Lineage says which adapters saw a forgotten item (as new or replayed); they
are marked tainted, and so is every version built on one of them (trained on from it, or merged from it:
its weights carry what they learned). The policy's `gate.on_forget` says what happens next in each scope
whose active adapter is tainted:

- rollback: the latest untainted ancestor becomes active at once (or none: the base model), the tainted one is
  retired;
- retrain: the next consolidation rebuilds the scope from that clean ancestor, on the same items minus the
  forgotten ones (they are queued again), and the result passes the gate like any candidate;
- both (the default): rollback now, rebuild next.

A tainted version can never be promoted again. Runs inside the caller's transaction (`Memory.forget`).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from engramma.memory.memory import naive_utc
from engramma.updater import registry
from engramma.updater.registry import AdapterStatus


def clean_ancestor(con, store_folder: Path, version: str) -> str | None:
    """The newest of `version`'s parents that can be made active: untainted, its folder whole (None: the base
    model)."""
    for parent in registry.ancestors(con, version)[1:]:
        if registry.usable(registry.get(con, store_folder, parent)):
            return parent
    return None


def unlearn(con, store_folder: Path, item_ids: list[int], mode: str, now: datetime) -> dict[str, str | None]:
    """Taint every adapter whose lineage holds one of `item_ids`, then roll back and/or request a rebuild in
    each scope whose active adapter is tainted. Returns {scope: the version now active (None: base)} for the
    scopes rolled back."""
    from engramma.updater.gate import settle_index

    saw = [r[0] for r in con.execute(
        "SELECT DISTINCT adapter_version FROM lineage WHERE item_id IN (SELECT unnest(?))", [item_ids]).fetchall()]
    if not saw:
        return {}
    tainted = registry.descendants(con, saw)
    stamp = f"tainted {now:%Y-%m-%d %H:%M}"
    con.execute("UPDATE adapters SET tainted = true, note = coalesce(note || '; ', '') || ? "
                "WHERE version IN (SELECT unnest(?)) AND NOT tainted", [f"{stamp}: saw forgotten items", saw])
    con.execute("UPDATE adapters SET tainted = true, note = coalesce(note || '; ', '') || ? "
                "WHERE version IN (SELECT unnest(?)) AND NOT tainted",
                [f"{stamp}: built on a version that saw forgotten items", tainted])
    rolled: dict[str, str | None] = {}
    for scope, active in con.execute("SELECT train_scope, version FROM adapters WHERE status = 'active' "
                                     "AND version IN (SELECT unnest(?)) ORDER BY 1", [tainted]).fetchall():
        clean = clean_ancestor(con, store_folder, active)
        if mode in ("retrain", "both"):
            lineage = registry.ancestors(con, active)  # the tainted versions down to the clean ancestor
            chain = lineage[:lineage.index(clean)] if clean in lineage else lineage
            con.execute("INSERT OR REPLACE INTO retrain_requests VALUES (?, ?, ?, ?)",
                        [scope, clean, naive_utc(now), f"{active} saw forgotten items {sorted(item_ids)[:10]}"])
            # What those versions learned (as new, or through a merge) goes back to the queue, to be learned
            # again without the forgotten items.
            con.execute(
                "UPDATE queue SET status = 'pending', lease_owner = NULL, lease_expires = NULL, adapter_version = NULL "
                "WHERE status = 'done' AND item_id IN (SELECT item_id FROM lineage WHERE role IN ('new', 'merged') "
                "AND adapter_version IN (SELECT unnest($chain))) AND item_id IN "
                "(SELECT id FROM items WHERE status = 'kept' AND (valid_to IS NULL OR valid_to > $now))",
                {"chain": chain, "now": naive_utc(now)})
        if mode in ("rollback", "both"):
            registry.set_status(con, active, AdapterStatus.RETIRED, now, note="rolled back: saw forgotten items")
            if clean is not None:
                registry.set_status(con, clean, AdapterStatus.ACTIVE, now)
            rolled[scope] = clean
            settle_index(con, store_folder, scope, now)
    if rolled:
        registry.write_active_pointer(con, store_folder)
    return rolled

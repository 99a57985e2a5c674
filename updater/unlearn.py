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

from engramma.updater import queue, registry
from engramma.updater.activate import activate


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
    saw = registry.saw(con, item_ids)
    if not saw:
        return {}
    tainted = registry.descendants(con, saw)
    stamp = f"tainted {now:%Y-%m-%d %H:%M}"
    registry.taint(con, saw, f"{stamp}: saw forgotten items")
    registry.taint(con, tainted, f"{stamp}: built on a version that saw forgotten items")
    rolled: dict[str, str | None] = {}
    for scope, active in registry.active_among(con, tainted):
        clean = clean_ancestor(con, store_folder, active)
        if mode in ("retrain", "both"):
            lineage = registry.ancestors(con, active)  # the tainted versions down to the clean ancestor
            chain = lineage[:lineage.index(clean)] if clean in lineage else lineage
            registry.request_retrain(con, scope, clean, now, reason=f"{active} saw forgotten items {sorted(item_ids)[:10]}")
            # What those versions learned (as new, or through a merge) goes back to the queue, to be learned
            # again without the forgotten items.
            queue.requeue_learned(con, registry.learned_by(con, chain), now)
        if mode in ("rollback", "both"):
            activate(con, store_folder, scope, clean, now, note="rolled back: saw forgotten items", rollback=True)
            rolled[scope] = clean
    return rolled

"""What the weights hold of an item, and of private data: read from lineage, the queue and the stored wordings."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import duckdb

from engramma.errors import ItemNotFound
from engramma.memory import items
from engramma.updater import augment, queue, registry


@dataclass(frozen=True, slots=True)
class Seen:
    version: str
    role: str  # new | replay | merged
    status: str
    tainted: bool
    train_scope: str
    created_at: str


@dataclass(frozen=True, slots=True)
class ItemAudit:
    item: int
    status: str
    route: str
    rule: str
    scope: str
    queue: str | None
    adapters: list[Seen]
    pairs: list[dict]  # the training pairs made from it: question, answer, source, heldout

    def as_dict(self) -> dict:
        return asdict(self)


def audit_item(con: duckdb.DuckDBPyConnection, item_id: int) -> ItemAudit:
    """Every adapter that saw `item_id` and in which role, its queue state and its training pairs."""
    found = items.decision(con, item_id)
    if found is None:
        raise ItemNotFound(f"no item {item_id} in this store")
    status, route, rule, scope = found
    queued = queue.status(con, item_id)
    seen = [Seen(*row[:5], str(row[5])) for row in registry.versions_that_saw(con, item_id)]
    pairs = [asdict(p) for p in augment.load(con, [item_id]).get(item_id, [])]
    return ItemAudit(item_id, status, route, rule, scope, queued.value if queued else None, seen, pairs)


def privacy_summary(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """How many private items (a user's scope, or personal data) were observed, queued for training, and are in
    any adapter's lineage."""
    private = items.private_ids(con)
    return {"observed": len(private), "queued": len(queue.queued_scopes(con, private)),
            "trained": len(registry.trained_scopes(con, private))}

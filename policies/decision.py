"""What the policy says about one item: `Route`, `Decision`, and the `Signals` it judged."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Route(str, enum.Enum):
    INDEX = "index"  # retrieval index only: exact, revocable
    TRAIN = "train"  # LoRA update queue only
    BOTH = "both"
    DROP = "drop"  # keep the content hash, rule and reason, never the text

    @property
    def indexed(self) -> bool:
        return self in (Route.INDEX, Route.BOTH)

    @property
    def trained(self) -> bool:
        return self in (Route.TRAIN, Route.BOTH)


@dataclass(frozen=True, slots=True)
class Signals:
    """Measurements of one item, gathered by `memory/` before the policy decides."""

    content_hash: str
    length_chars: int


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    rule: str  # name of the rule that matched, or "default"
    reasons: tuple[str, ...]
    ttl_seconds: float | None = None
    train_scope: str | None = None  # the scope an adapter trained on this item may serve
    priority: int = 0

"""What the policy says about one item: `Route`, `Decision`, and the `Signals` it judged."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


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
    """Measurements of one item, gathered by `memory/` before the policy decides (defaults: a lone new item)."""

    content_hash: str = ""
    novelty: float = 1.0  # 1 - max cosine to items visible in its scope
    duplicate: bool = False  # same content hash, or cosine >= the policy's duplicate threshold
    duplicate_of: int | None = None
    recurrence: int = 1  # times seen within the recurrence window, this one included
    volatility: float = 0.0  # keyed facts: share of observations in the window that changed the value
    pii: frozenset[str] = field(default_factory=frozenset)
    length_tokens: int = 0
    source_trust: float = 0.5
    feedback: float | None = None  # from meta["feedback"]
    age_seconds: float = 0.0  # observation time minus the item's timestamp
    # A keyed fact's new value whose old value was queued or trained: the train scope the old value went to,
    # where the new one must be learned as a correction (None: nothing to correct in the weights).
    supersedes_learned: str | None = None

    def as_dict(self) -> dict:
        """Every signal as stored with the decision: unrounded, so that re-judging gives the same route."""
        return {"content_hash": self.content_hash, "novelty": self.novelty, "duplicate": self.duplicate,
                "duplicate_of": self.duplicate_of, "recurrence": self.recurrence, "volatility": self.volatility,
                "pii": sorted(self.pii), "length_tokens": self.length_tokens, "source_trust": self.source_trust,
                "feedback": self.feedback, "age_seconds": self.age_seconds,
                "supersedes_learned": self.supersedes_learned}

    @classmethod
    def from_dict(cls, data: dict) -> Signals:
        return cls(**{**data, "pii": frozenset(data.get("pii", ()))})


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    rule: str  # name of the rule that matched, or "default"
    reasons: tuple[str, ...]
    ttl_seconds: float | None = None
    train_scope: str | None = None  # the scope whose adapter may learn this item (None: not trained)
    priority: int = 0
    after_consolidation: str = "keep"  # keep | evict: may a `both` item leave the index once learned

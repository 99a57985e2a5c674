"""What a consolidation job will train, frozen in its folder (`plan.json`) before training starts, so that a
resumed job trains exactly the same round. Versioned: a plan written by another engramma is refused by name."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engramma.errors import InvalidInput

PLAN_SCHEMA = 1
PLAN_FILE = "plan.json"


@dataclass(frozen=True, slots=True)
class ConsolidationPlan:
    job_id: str
    train_scope: str
    new: list[int]  # the round's items, claimed by the job
    replay: list[int]  # earlier items replayed beside them
    parent: str | None  # the version trained on from (None: the base model)
    parent_path: str | None
    stacked: str | None  # the shared version a user-scope adapter is stacked on
    stacked_path: str | None
    base_model: str
    policy_hash: str
    settings: dict  # the policy's consolidation settings, as JSON
    replay_strategy: str
    pool_size: int  # how many items replay could choose from
    examples: dict[str, int] = field(default_factory=dict)  # training examples by role
    schema: int = PLAN_SCHEMA

    def write(self, folder: Path) -> None:
        """Atomically: a plan is there whole or not at all."""
        tmp = folder / f".{PLAN_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, folder / PLAN_FILE)

    @classmethod
    def read(cls, folder: Path) -> ConsolidationPlan:
        path = folder / PLAN_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InvalidInput(f"{path}: unreadable ({e}); the job cannot be resumed") from None
        if not isinstance(data, dict) or data.get("schema") != PLAN_SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else None
            raise InvalidInput(f"{path}: plan schema {found!r}, this engramma reads {PLAN_SCHEMA}; "
                               "the job cannot be resumed (its items return to the queue when its lease runs out)")
        try:
            return cls(**data)
        except TypeError as e:
            raise InvalidInput(f"{path}: not a plan this engramma wrote ({e})") from None

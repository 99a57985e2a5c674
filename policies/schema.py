"""The policy file: one YAML file configures routing, signals, the model, consolidation and the gate.

Every model forbids unknown keys, so a typo is an error naming the key, never a silently ignored setting.
"""
from __future__ import annotations

import enum
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from engramma.policies.decision import Route
from engramma.types import PII_KINDS, Kind

PiiKind = Literal["email", "phone", "credit_card", "iban", "ip_address", "api_key", "password", "national_id"]
assert set(PiiKind.__args__) == set(PII_KINDS)  # one list of PII kinds

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> float:
    """'30d', '12h', '15m', '45s', '2w', or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30d', '12h', '15m'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str) and (m := DURATION.match(value)):
        return float(m.group(1)) * UNIT_SECONDS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration; write a number of seconds or e.g. '30d', '12h', '15m', '45s'")


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _trust(value: float) -> float:
    if not 0 <= value <= 1:  # NaN fails too
        raise ValueError(f"trust is a number from 0 to 1, not {value:g}")
    return value


Trust = Annotated[float, AfterValidator(_trust)]


def _pii_none(value: object) -> object:
    """`pii_none: false` reads like a condition but would hold for every item; refuse it rather than ignore it."""
    if value is None or value is True or isinstance(value, list):
        return value
    raise ValueError(f"{value!r} is not accepted; write true (no PII at all) or a list of PII kinds: "
                     f"{', '.join(PiiKind.__args__)}")


def _meta_value(value: object) -> object:
    """`meta: {team: [a, b]}` reads like "any of"; a meta condition is one value the item's meta[key] equals."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    what = {list: "a list", dict: "a mapping"}.get(type(value), f"a {type(value).__name__} (quote it)")
    raise ValueError(f"{what} is not accepted; meta[key] equals one value: a string, a number, true, false or null")


MetaValue = Annotated[str | int | float | bool | None, BeforeValidator(_meta_value)]


def _check_bounds(bound: Range | DurationRange, fmt: str = "{:g}") -> None:
    if bound.gte is None and bound.lte is None:
        raise ValueError("give gte, lte or both")
    if bound.gte is not None and bound.lte is not None and bound.gte > bound.lte:
        raise ValueError(f"gte {fmt.format(bound.gte)} is above lte {fmt.format(bound.lte)}, so no value can "
                         "match; gte must be at most lte")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(Strict):
    """A numeric bound: `{gte: 0.3}`, `{lte: 0.1}` or both."""

    gte: float | None = None
    lte: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Range:
        _check_bounds(self)
        return self


class DurationRange(Strict):
    gte: Duration | None = None
    lte: Duration | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> DurationRange:
        _check_bounds(self, "{:.0f}s")
        return self


class When(Strict):
    """Conditions of a rule; all that are given must hold. An empty `when` always matches."""

    kind: list[Kind] | None = None
    source: list[str] | None = None
    scope: list[str] | None = Field(None, description="glob patterns such as 'user:*' or 'global'")
    pii_any: list[PiiKind] | None = None
    # true: no PII at all; a list: none of those kinds
    pii_none: Annotated[Literal[True] | list[PiiKind] | None, BeforeValidator(_pii_none)] = None
    novelty: Range | None = None
    recurrence: Range | None = None
    volatility: Range | None = None
    length: Range | None = None
    feedback: Range | None = None
    source_trust: Range | None = None
    age: DurationRange | None = None
    duplicate: bool | None = None
    has_probe: bool | None = None
    has_key: bool | None = None
    meta: dict[str, MetaValue] | None = None  # meta[key] equals value

    @model_validator(mode="before")
    @classmethod
    def _scope_as_list(cls, data):
        if isinstance(data, dict) and isinstance(data.get("scope"), str):
            data = {**data, "scope": [data["scope"]]}
        return data


class Rule(Strict):
    name: str = Field(min_length=1)
    when: When = When()
    route: Route
    ttl: Duration | None = None  # the item leaves recall this long after its timestamp
    priority: int = 0  # order within the training queue, higher first
    train_scope: Literal["own", "shared"] = "own"  # adapter of the item's own scope, or the shared (global) one
    after_consolidation: Literal["keep", "evict"] = "keep"  # `both` items may leave the index once learned


class SignalSettings(Strict):
    duplicate_threshold: float = Field(0.95, ge=0, le=1)  # cosine at or above which an item is a duplicate
    recurrence_threshold: float = Field(0.85, ge=0, le=1)  # cosine at or above which it counts as a recurrence
    recurrence_window: Duration = 30 * 86400
    volatility_window: Duration = 90 * 86400
    source_trust: dict[str, Trust] = Field(default_factory=dict)  # source -> trust
    default_trust: Trust = 0.5


class ModelSettings(Strict):
    name: str = "smollm2-135m-instruct"  # the bundled default, or any Hugging Face causal LM name or path
    max_length: int = Field(512, ge=16)


class LoraSettings(Strict):
    rank: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"


class TrainingSettings(Strict):
    learning_rate: float = Field(1e-3, gt=0)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    schedule: Literal["constant_with_warmup", "warmup_stable_decay"] = "constant_with_warmup"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    kl_weight: float = Field(0.0, ge=0)  # KL to the parent adapter on replay examples
    seed: int = 0


class ReplayName(str, enum.Enum):
    """Replay strategies (updater/replay.py registers one object per name)."""

    NONE = "none"
    RANDOM = "random"
    RESERVOIR = "reservoir"
    RETRIEVAL = "retrieval"
    MIR = "mir"


class AnchorSettings(Strict):
    """General instructions and the base model's own answers to them, mixed into every round (self-distillation)."""

    ratio: float = Field(1.0, ge=0)  # anchor examples per example of the round's items (new and replayed)
    prompts: str | None = None  # a file of the user's own (JSONL with "prompt", or one per line); None: shipped set
    heldout: int = Field(64, ge=0)  # prompts never trained on: the gate's measure of general ability
    kl_weight: float = Field(1.0, ge=0)  # KL to the base model on the anchors' completions
    max_new_tokens: int = Field(64, ge=8)  # length of the base model's answers


class AugmentSettings(Strict):
    """Each queued item becomes several training pairs: its statement, its probe and key, and questions the base
    model writes about it (kept only when their answer is a span of the item)."""

    questions: int = Field(4, ge=0)  # generated questions kept per item, at most
    generate: bool = True  # False: template pairs only (statement, probe, key)
    heldout: int = Field(1, ge=0)  # questions per item held out of training, for the gate
    probes: Literal["train", "heldout"] = "train"  # heldout: the user's probe is never trained verbatim
    context_share: float = Field(0.3, ge=0, le=1)  # questions asked with a recalled block, as the agent asks
    distractors: int = Field(2, ge=0)  # other items in that block
    replay_pairs: int = Field(2, ge=1)  # questions per replayed item
    # share of items that also teach declining: one of their questions about a made-up entity, answered "I don't know"
    decline_share: float = Field(0.25, ge=0, le=1)


class ConsolidationSettings(Strict):
    replay: ReplayName = ReplayName.RETRIEVAL
    replay_ratio: float = Field(1.0, ge=0)  # replayed examples per new example
    replay_budget: int = Field(512, ge=0)  # at most this many replayed examples per round
    neighbours: int = Field(4, ge=1)  # retrieval replay: nearest past examples per new item
    reservoir_size: int = Field(1000, ge=1)
    reservoir_fraction: float = Field(0.25, ge=0, le=1)
    min_items: int = Field(1, ge=1)  # consolidate only when this many items are queued
    lora: LoraSettings = LoraSettings()
    training: TrainingSettings = TrainingSettings()
    anchors: AnchorSettings = AnchorSettings()
    augment: AugmentSettings = AugmentSettings()


class GateSettings(Strict):
    min_new_accuracy: float = Field(0.5, ge=0, le=1)  # share of the round's new items the candidate must know
    # the same on questions held out of training: knowledge, not memorised wording
    min_heldout_accuracy: float = Field(0.25, ge=0, le=1)
    # general ability: word F1 of the candidate's answers to held-out anchor prompts with the base model's
    min_general_agreement: float = Field(0.4, ge=0, le=1)
    max_retention_drop: float = Field(0.05, ge=0, le=1)  # accuracy on earlier rounds' items, vs the parent
    max_perplexity_increase: float = Field(0.10, ge=0)  # on general text, relative to the parent
    # earlier rounds' items that have no probe: perplexity of their completions, relative to the parent
    max_retention_perplexity_increase: float = Field(0.25, ge=0)
    min_items: int = Field(1, ge=1)  # fewer new items than this: too little to judge, rejected
    promote: Literal["auto", "manual"] = "auto"  # manual: record the verdict, leave the candidate for a person
    retention_cap: int = Field(200, ge=1)  # earlier items probed per gate run (a stratified sample per round)
    heldout_items: int = Field(32, ge=0)  # indexed items never trained on, added to the general text
    general_text: str | None = None  # a UTF-8 file of general text (paragraphs) to measure perplexity on
    on_forget: Literal["rollback", "retrain", "both"] = "both"


class PolicyFile(Strict):
    version: Literal[1]
    name: str = Field(min_length=1)
    description: str = ""
    signals: SignalSettings = SignalSettings()
    rules: list[Rule] = Field(default_factory=list)
    default: Route  # required: what happens to an item no rule matched
    model: ModelSettings = ModelSettings()
    consolidation: ConsolidationSettings = ConsolidationSettings()
    gate: GateSettings = GateSettings()

    @model_validator(mode="after")
    def _unique_rule_names(self) -> PolicyFile:
        seen = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"two rules are named {rule.name!r}; rule names must be unique")
            seen.add(rule.name)
        return self

"""Value types that cross module boundaries: `Item` in, `Record` and `Hit` out, and the PII kinds. Memory and
policies both use them, so they live here and import nothing of the project but its errors."""
from __future__ import annotations

import copy
import enum
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from engramma.errors import InvalidItem


class Name(str, enum.Enum):
    """A closed set of names that compare equal to, print as and serialise to their plain strings (as
    `enum.StrEnum` does from Python 3.11)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Kind(str, enum.Enum):
    FACT = "fact"
    EVENT = "event"
    PREFERENCE = "preference"
    CORRECTION = "correction"
    SKILL = "skill"
    DOCUMENT = "document"
    CONVERSATION = "conversation"


# The personal data and secrets that memory/pii.py finds and policies name in `pii:` conditions.
PII_KINDS = ("email", "phone", "credit_card", "iban", "ip_address", "api_key", "password", "national_id")

KIND_NAMES = ", ".join(k.value for k in Kind)

# `global`, or `<agent|user|session>:<id>` where the id is 1-128 characters without whitespace or ':'.
SCOPE_PATTERN = re.compile(r"^(global|(agent|user|session):[^\s:]{1,128})$")


def check_scope(scope: object, field_name: str = "scope") -> str:
    if not isinstance(scope, str) or not SCOPE_PATTERN.match(scope):
        raise InvalidItem(
            f"{field_name}: {scope!r} is not a scope; use 'global', 'agent:<id>', 'user:<id>' or 'session:<id>'"
            " (the id without spaces or ':')"
        )
    return scope


def _check_encodable(name: str, value: str) -> None:
    """Text must be valid Unicode: a lone surrogate (from a broken decode upstream) cannot be stored or embedded."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidItem(f"{name}: not valid Unicode text (character {e.start} is a lone surrogate "
                          f"{value[e.start]!r}); decode the input as UTF-8 before observing it") from None


@dataclass(frozen=True, slots=True)
class Probe:
    """A question with its expected answer, used to check that an adapter learned an item."""

    question: str
    answer: str


@dataclass(frozen=True, slots=True)
class Item:
    """Something the agent met and may remember. Validated on construction; invalid fields raise `InvalidItem`."""

    text: str
    kind: Kind | str = Kind.FACT
    scope: str = "global"
    source: str | None = None
    key: str | None = None  # identity of a keyed fact whose value can change ("refund_window")
    prompt: str | None = None  # a demonstration pair, for skills
    response: str | None = None
    probe: Probe | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    ts: datetime | None = None  # when it happened; `observe` fills in now when missing

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise InvalidItem("text: must be a non-empty string")
        _check_encodable("text", self.text)
        try:
            kind = Kind(self.kind)
        except ValueError:
            raise InvalidItem(f"kind: {self.kind!r} is not one of {KIND_NAMES}") from None
        object.__setattr__(self, "kind", kind)
        check_scope(self.scope)
        for name in ("source", "key", "prompt", "response"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidItem(f"{name}: must be a non-empty string or None, got {value!r}")
            if value is not None:
                _check_encodable(name, value)
        if (self.prompt is None) != (self.response is None):
            raise InvalidItem("prompt/response: a demonstration needs both a prompt and a response")
        probe = self.probe
        if isinstance(probe, dict):
            try:
                probe = Probe(question=probe["question"], answer=probe["answer"])
            except (KeyError, TypeError):
                raise InvalidItem("probe: needs 'question' and 'answer'") from None
            object.__setattr__(self, "probe", probe)
        if probe is not None and not (
            isinstance(probe, Probe)
            and all(isinstance(s, str) and s.strip() for s in (probe.question, probe.answer))
        ):
            raise InvalidItem("probe: needs a non-empty question and a non-empty answer")
        if probe is not None:
            _check_encodable("probe.question", probe.question)
            _check_encodable("probe.answer", probe.answer)
        if not isinstance(self.meta, dict):
            raise InvalidItem(f"meta: must be a JSON object (a dict), got {type(self.meta).__name__}")
        try:
            json.dumps(self.meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidItem(f"meta: must be JSON-serialisable ({e})") from None
        ts = self.ts
        if isinstance(ts, str):
            try:
                ts = datetime.fromisoformat(ts)
            except ValueError:
                raise InvalidItem(f"ts: {ts!r} is not an ISO 8601 timestamp") from None
        if ts is not None:
            if not isinstance(ts, datetime):
                raise InvalidItem(f"ts: must be a datetime or ISO 8601 string, got {type(ts).__name__}")
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=timezone.utc)  # naive timestamps are taken as UTC
            object.__setattr__(self, "ts", ts)

    @property
    def content_hash(self) -> str:
        """sha256 of what makes two items the same memory: kind, scope, key and the texts."""
        parts = (self.kind.value, self.scope, self.key or "", self.text, self.prompt or "", self.response or "")
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    def with_ts(self, ts: datetime) -> Item:
        """A copy stamped with an aware `ts`; the other fields were validated when this item was made."""
        if not isinstance(ts, datetime) or ts.tzinfo is None:
            raise InvalidItem(f"ts: must be a timezone-aware datetime, got {ts!r}")
        stamped = copy.copy(self)
        object.__setattr__(stamped, "ts", ts)
        return stamped

    @classmethod
    def from_dict(cls, data: object) -> Item:
        """Build from a JSON object (a JSONL line); unknown keys are an error, not silently dropped."""
        if not isinstance(data, dict):
            raise InvalidItem(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidItem(f"{unknown[0]}: unknown field; accepted fields are {', '.join(sorted(known))}")
        if "text" not in data:
            raise InvalidItem("text: missing (every item needs a text)")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "kind": self.kind.value, "scope": self.scope}
        for name in ("source", "key", "prompt", "response"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.probe is not None:
            out["probe"] = {"question": self.probe.question, "answer": self.probe.answer}
        if self.meta:
            out["meta"] = self.meta
        if self.ts is not None:
            out["ts"] = self.ts.isoformat()
        return out


@dataclass(frozen=True, slots=True)
class Record:
    """An observed item as the store keeps it: its id, the item, and where the policy sent it."""

    id: int
    item: Item
    route: str
    rule: str
    observed_at: datetime
    in_index: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Hit:
    """One recall result; `score` is the cosine similarity to the query (1.0 is identical)."""

    id: int
    score: float
    item: Item

    @property
    def text(self) -> str:
        return self.item.text


@dataclass(frozen=True, slots=True)
class Stats:
    items: int  # items remembered now (forgotten and dropped ones are not counted)
    indexed: int  # vectors in the index view of this process
    forgotten: int
    events: int  # last event seq
    by_kind: dict[str, int]
    by_scope: dict[str, int]
    by_route: dict[str, int]  # every decision ever made, forgotten and dropped items included
    queued: int  # items waiting in the training queue
    index_kinds: dict[str, int]  # how many scopes use each index kind ("flat", "ivf")
    disk_bytes: int
    policy: str  # the policy file (or preset) in force


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why an item was routed as it was (see `Memory.explain`)."""

    id: int
    status: str  # kept | dropped | forgotten
    item: Item  # a dropped or forgotten item's text reads "(not stored)"
    route: str
    rule: str
    reasons: tuple[str, ...]
    signals: dict[str, Any]
    policy_name: str
    policy_hash: str
    traces: tuple[Any, ...]  # policies.RuleTrace: each rule tried, in order, up to the one that matched


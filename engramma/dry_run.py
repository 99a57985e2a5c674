"""`engramma policy test` as a library call: route items through a policy in a scratch store, and compare
with the routes they were expected to take."""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from engramma.errors import InvalidItem
from engramma.policies import Route, load_policy
from engramma.types import Item
from engramma.wiring import Memory

ROUTES = tuple(r.value for r in Route)


@dataclass(frozen=True, slots=True)
class Case:
    item: Item
    expected: str | None = None  # index | train | both | drop; None: routed, not checked
    label: str | int | None = None  # where the case came from (a line number), for messages


@dataclass(frozen=True, slots=True)
class Mismatch:
    label: str | int | None
    expected: str
    got: str
    rule: str
    text: str  # the item's first 80 characters


@dataclass(frozen=True, slots=True)
class DryRun:
    items: int
    checked: int  # cases with an expected route
    routes: dict[str, int]
    rules: dict[str, int]  # most used first
    mismatches: list[Mismatch] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = asdict(self)
        for m in out["mismatches"]:
            m["line"] = m.pop("label")
        return out


def dry_run(policy: str | os.PathLike, cases: Iterable[Case]) -> DryRun:
    """Route every case's item through `policy` (a file or `preset:NAME`) one by one, so that each sees those
    before it (duplicates, recurrence, supersession), in a scratch store deleted afterwards."""
    cases = list(cases)
    for case in cases:
        if case.expected is not None and case.expected not in ROUTES:
            where = f"{case.label}: " if case.label is not None else ""
            raise InvalidItem(f"{where}expected_route {case.expected!r} is not one of {', '.join(ROUTES)}")
    load_policy(policy)  # a broken policy fails here, before any work
    with tempfile.TemporaryDirectory(prefix="engramma-policy-test-") as scratch:
        with Memory.open(Path(scratch) / "store", policy=policy) as mem:
            records = [mem.observe(case.item) for case in cases]
    mismatches = [Mismatch(case.label, case.expected, record.route, record.rule, record.item.text[:80])
                  for case, record in zip(cases, records)
                  if case.expected is not None and case.expected != record.route]
    return DryRun(items=len(records), checked=sum(case.expected is not None for case in cases),
                  routes=dict(sorted(Counter(r.route for r in records).items())),
                  rules=dict(Counter(r.rule for r in records).most_common()), mismatches=mismatches)

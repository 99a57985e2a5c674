"""The single place where an item's route is decided.

`decide` is pure: no I/O and no clock reads; the caller gathers the signals. Until the policy engine lands
(YAML rules, first match wins), the built-in policy sends every item to the index and says so.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from engramma.memory.types import Item
from engramma.policies.decision import Decision, Route, Signals


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    default_route: Route

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(f"{self.name}\x1f{self.default_route.value}".encode()).hexdigest()[:16]


INDEX_EVERYTHING = Policy(name="builtin:index-everything", default_route=Route.INDEX)


def decide(item: Item, signals: Signals, policy: Policy = INDEX_EVERYTHING) -> Decision:
    return Decision(
        route=policy.default_route,
        rule="default",
        reasons=(f"policy {policy.name} has no rules; its default route is {policy.default_route.value}",),
    )

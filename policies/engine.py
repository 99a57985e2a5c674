"""The single place where an item's route is decided: a pure function of (item, signals, policy).

No I/O and no clock reads: `memory/` gathers the signals (age included) before calling `decide`. Rules are
compiled once per policy into small checks, so deciding costs microseconds even with many rules.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable

from engramma.policies.decision import Decision, Route, Signals
from engramma.policies.schema import PolicyFile, Range, Rule, When
from engramma.types import Item


@dataclass(frozen=True, slots=True)
class Check:
    """One condition of a rule: `test` decides, `observed` and `wanted` explain in words."""

    test: Callable[[Item, Signals], bool]
    observed: Callable[[Item, Signals], str]
    wanted: str


@dataclass(frozen=True, slots=True)
class CompiledRule:
    spec: Rule
    checks: tuple[Check, ...]


@dataclass(frozen=True, slots=True)
class RuleTrace:
    rule: str
    matched: bool
    why: tuple[str, ...]  # matched: every condition as it held; not matched: the first one that failed


@dataclass(frozen=True)
class Policy:
    spec: PolicyFile
    rules: tuple[CompiledRule, ...]
    origin: str  # file path, or preset:NAME
    text: str  # the YAML as loaded, kept with the store so past decisions stay explainable
    content_hash: str

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def compile(cls, spec: PolicyFile, *, origin: str, text: str, content_hash: str) -> Policy:
        return cls(spec, tuple(CompiledRule(rule, compile_when(rule.when)) for rule in spec.rules), origin, text,
                   content_hash)


def _range(name: str, value_of: Callable[[Item, Signals], float | None], bound: Range, fmt: str = "{:.3g}") -> Check:
    low, high = bound.gte, bound.lte

    def test(item: Item, signals: Signals) -> bool:
        value = value_of(item, signals)
        return value is not None and (low is None or value >= low) and (high is None or value <= high)

    def observed(item: Item, signals: Signals) -> str:
        value = value_of(item, signals)
        return f"{name} {'unknown' if value is None else fmt.format(value)}"

    wanted = " and ".join(part for part in (f">= {low:g}" if low is not None else "",
                                            f"<= {high:g}" if high is not None else "") if part)
    return Check(test, observed, wanted)


def _flag(name: str, value_of: Callable[[Item, Signals], bool], want: bool) -> Check:
    return Check(lambda i, s: value_of(i, s) == want, lambda i, s: f"{name} {str(value_of(i, s)).lower()}",
                 f"is {str(want).lower()}")


def compile_when(when: When) -> tuple[Check, ...]:
    checks: list[Check] = []
    if when.kind is not None:
        kinds = frozenset(when.kind)
        checks.append(Check(lambda i, s: i.kind in kinds, lambda i, s: f"kind {i.kind.value}",
                            f"in [{', '.join(k.value for k in when.kind)}]"))
    if when.source is not None:
        sources = frozenset(when.source)
        checks.append(Check(lambda i, s: i.source in sources, lambda i, s: f"source {i.source}",
                            f"in [{', '.join(when.source)}]"))
    if when.scope is not None:
        patterns = tuple(when.scope)
        checks.append(Check(lambda i, s: any(fnmatchcase(i.scope, p) for p in patterns),
                            lambda i, s: f"scope {i.scope}", f"matches {' or '.join(patterns)}"))
    if when.pii_any is not None:
        kinds_any = frozenset(when.pii_any)
        checks.append(Check(lambda i, s: bool(s.pii & kinds_any), _pii_found, f"any of [{', '.join(when.pii_any)}]"))
    if when.pii_none is True:
        checks.append(Check(lambda i, s: not s.pii, _pii_found, "none at all"))
    elif isinstance(when.pii_none, list):
        kinds_none = frozenset(when.pii_none)
        checks.append(Check(lambda i, s: not (s.pii & kinds_none), _pii_found, f"none of [{', '.join(when.pii_none)}]"))
    for name, value_of in (
        ("novelty", lambda i, s: s.novelty),
        ("recurrence", lambda i, s: s.recurrence),
        ("volatility", lambda i, s: s.volatility),
        ("length", lambda i, s: s.length_tokens),
        ("feedback", lambda i, s: s.feedback),
        ("source_trust", lambda i, s: s.source_trust),
    ):
        bound = getattr(when, name)
        if bound is not None:
            checks.append(_range(name, value_of, bound))
    if when.age is not None:
        checks.append(_range("age (s)", lambda i, s: s.age_seconds, Range(gte=when.age.gte, lte=when.age.lte), "{:.0f}"))
    if when.duplicate is not None:
        checks.append(_flag("duplicate", lambda i, s: s.duplicate, when.duplicate))
    if when.has_probe is not None:
        checks.append(_flag("has_probe", lambda i, s: i.probe is not None, when.has_probe))
    if when.has_key is not None:
        checks.append(_flag("has_key", lambda i, s: i.key is not None, when.has_key))
    for key, value in (when.meta or {}).items():
        checks.append(Check(lambda i, s, k=key, v=value: k in i.meta and i.meta[k] == v,
                            lambda i, s, k=key: f"meta.{k} {i.meta.get(k, '(absent)')!r}", f"equals {value!r}"))
    return tuple(checks)


def _pii_found(item: Item, signals: Signals) -> str:
    return f"PII found: {', '.join(sorted(signals.pii)) or 'none'}"


def decide(item: Item, signals: Signals, policy: Policy) -> Decision:
    """Route one item: the first rule whose conditions all hold, else the policy's default."""
    for rule in policy.rules:
        if all(check.test(item, signals) for check in rule.checks):
            why = [f"{c.observed(item, signals)} ({c.wanted})" for c in rule.checks] or ["the rule has no conditions"]
            return _finish(item, signals, rule.spec, rule.spec.route, rule.spec.name, why)
    return _finish(item, signals, None, policy.spec.default, "default",
                   [f"no rule matched; the default route is {policy.spec.default.value}"])


def _finish(item: Item, signals: Signals, rule: Rule | None, route: Route, name: str, why: list[str]) -> Decision:
    train_scope = None
    if route.trained:
        train_scope = "global" if rule is not None and rule.train_scope == "shared" else item.scope
    elif route is not Route.DROP and signals.supersedes_learned is not None:
        # The old value is in the weights (or on its way): the new one must reach the same adapter, or the
        # stale value would be answered from memory long after the index moved on.
        stale_scope = signals.supersedes_learned
        if signals.pii and stale_scope != item.scope:
            why.append(f"supersedes a value that was queued or trained for {stale_scope}, but carries PII "
                       f"({', '.join(sorted(signals.pii))}): not queued")
        else:
            route, train_scope = Route.BOTH, stale_scope
            why.append(f"supersedes a value that was queued or trained for {stale_scope}: queued as a correction there")
    # INVARIANT: personal data never trains an adapter wider than the item's own scope.
    if train_scope is not None and signals.pii and train_scope != item.scope:
        why.append(f"PII found ({', '.join(sorted(signals.pii))}): training limited to its own scope "
                   f"{item.scope}, not {train_scope}")
        train_scope = item.scope
    return Decision(route=route, rule=name, reasons=tuple(why),
                    ttl_seconds=rule.ttl if rule is not None else None, train_scope=train_scope,
                    priority=rule.priority if rule is not None else 0,
                    after_consolidation=rule.after_consolidation if rule is not None else "keep")


def explain(item: Item, signals: Signals, policy: Policy, *, shown: Item | None = None) -> list[RuleTrace]:
    """Every rule up to the one that matched: why it matched, or the first condition that failed.

    Conditions are tested on `item`; the words quote `shown` when given (the item as it may be kept once its
    text and meta are erased, for a dropped or forgotten item)."""
    shown = shown or item
    traces = []
    for rule in policy.rules:
        failed = next((c for c in rule.checks if not c.test(item, signals)), None)
        if failed is None:
            traces.append(RuleTrace(rule.spec.name, True,
                                    tuple(f"{c.observed(shown, signals)} ({c.wanted})" for c in rule.checks)))
            return traces
        traces.append(RuleTrace(rule.spec.name, False, (f"{failed.observed(shown, signals)}, needs {failed.wanted}",)))
    return traces

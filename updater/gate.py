"""No adapter reaches an agent unmeasured: judge a candidate's measurements (updater/measure.py) with the
policy's gate, then promote or reject it and record why either way.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from engramma.memory.policy_store import store_policy
from engramma.memory.store import Store
from engramma.policies.schema import GateSettings
from engramma.types import Name
from engramma.updater import queue, registry
from engramma.updater.activate import activate
from engramma.updater.measure import EvalMetrics, GateError, evaluate
from engramma.updater.model import LanguageModel
from engramma.updater.registry import AdapterStatus


class CheckName(Name):
    """The gate's checks (`judge`); the report has a look for each."""

    ITEMS = "items"
    NEW_ACCURACY = "new_accuracy"
    NEW_HELDOUT_ACCURACY = "new_heldout_accuracy"
    NEW_LIKELIHOOD = "new_likelihood"
    RETENTION_DROP = "retention_drop"
    RETENTION_HELDOUT_DROP = "retention_heldout_drop"
    RETENTION_PERPLEXITY_INCREASE = "retention_perplexity_increase"
    PERPLEXITY_INCREASE = "perplexity_increase"
    GENERAL_AGREEMENT = "general_agreement"
    UNTAINTED = "untainted"


class GateDecision(Name):
    PROMOTED = "promoted"
    REJECTED = "rejected"
    CANDIDATE = "candidate"  # passed, and the policy leaves promotion to a person


@dataclass(frozen=True, slots=True)
class Check:
    name: CheckName
    value: float | None
    threshold: float
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class GateReport:
    version: str
    passed: bool
    decision: GateDecision
    checks: tuple[Check, ...]
    metrics: EvalMetrics  # what was measured; the registry keeps it with the verdict (`AdapterVersion.metrics`)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


# -- pure: the verdict ------------------------------------------------------------------------------------------


def judge(metrics: EvalMetrics, settings: GateSettings, *, tainted: bool = False) -> tuple[Check, ...]:
    """The gate's checks on measured `metrics` (see `evaluate`)."""
    # A merge learned its items in other rounds; it is judged on how many it brings, new to its chain or not.
    merged = metrics.merged_items
    count, what = (merged, "merged") if merged else (metrics.new_items, "new")
    checks = [Check(CheckName.ITEMS, count, settings.min_items, count >= settings.min_items,
                    f"{count} {what} item(s), at least {settings.min_items} needed")]
    if metrics.new_probed:
        acc = metrics.new_accuracy
        checks.append(Check(CheckName.NEW_ACCURACY, acc, settings.min_new_accuracy, acc >= settings.min_new_accuracy,
                            f"answers {acc:.0%} of the {metrics.new_probed} new probes "
                            f"(parent {metrics.parent_new_accuracy:.0%}, base {metrics.base_new_accuracy:.0%})"))
    if metrics.new_heldout:  # wordings never trained on: knowledge rather than memorised text
        acc = metrics.new_heldout_accuracy
        checks.append(Check(CheckName.NEW_HELDOUT_ACCURACY, acc, settings.min_heldout_accuracy,
                            acc >= settings.min_heldout_accuracy,
                            f"answers {acc:.0%} of the {metrics.new_heldout} new items' held-out questions "
                            f"(base {metrics.base_new_heldout_accuracy:.0%})"))
    if metrics.new_unprobed:  # no probes: the new completions must at least have become likelier
        gain = metrics.new_logprob - metrics.parent_new_logprob
        checks.append(Check(CheckName.NEW_LIKELIHOOD, gain, 0.0, gain > 0,
                            f"mean log-probability of the {metrics.new_unprobed} unprobed new completions "
                            f"rose by {gain:.3f} over the parent"))
    if metrics.earlier_probed:
        drop = metrics.parent_retention - metrics.retention
        base = metrics.base_retention
        checks.append(Check(CheckName.RETENTION_DROP, drop, settings.max_retention_drop,
                            drop <= settings.max_retention_drop,
                            f"earlier rounds: {metrics.retention:.0%} vs the parent's "
                            f"{metrics.parent_retention:.0%} on {metrics.earlier_probed} probes"
                            + (f" (base {base:.0%})" if base is not None else "")))
    if metrics.earlier_heldout:
        drop = metrics.parent_retention_heldout - metrics.retention_heldout
        checks.append(Check(CheckName.RETENTION_HELDOUT_DROP, drop, settings.max_retention_drop,
                            drop <= settings.max_retention_drop,
                            f"earlier rounds' held-out questions: {metrics.retention_heldout:.0%} vs the "
                            f"parent's {metrics.parent_retention_heldout:.0%} on {metrics.earlier_heldout}"))
    if metrics.earlier_unprobed:  # earlier items without a probe: their completions must stay likely
        rise = math.exp(metrics.parent_retention_logprob - metrics.retention_logprob) - 1
        limit = settings.max_retention_perplexity_increase
        checks.append(Check(CheckName.RETENTION_PERPLEXITY_INCREASE, rise, limit, rise <= limit,
                            f"earlier rounds' {metrics.earlier_unprobed} unprobed completions: perplexity "
                            f"{rise:+.1%} vs the parent"))
    rise = metrics.perplexity / metrics.parent_perplexity - 1
    checks.append(Check(CheckName.PERPLEXITY_INCREASE, rise, settings.max_perplexity_increase,
                        rise <= settings.max_perplexity_increase,
                        f"general perplexity {metrics.perplexity:.2f} vs the parent's "
                        f"{metrics.parent_perplexity:.2f} ({rise:+.1%})"))
    if metrics.general_agreement is not None:
        agreement = metrics.general_agreement
        checks.append(Check(CheckName.GENERAL_AGREEMENT, agreement, settings.min_general_agreement,
                            agreement >= settings.min_general_agreement,
                            f"answers to {metrics.general_prompts} held-out general prompts agree with the base "
                            f"model's at word F1 {agreement:.2f}"))
    if tainted:
        checks.append(Check(CheckName.UNTAINTED, 1.0, 0.0, False, "trained on items that were forgotten since"))
    return tuple(checks)


# -- the verdict applied ------------------------------------------------------------------------------------


def gate(store: Store, lm: LanguageModel, version: str) -> GateReport:
    """Evaluate `version`, judge it with the store's policy, then promote it (or leave it for a person, when the
    policy says so) or reject it. The checks and every measurement are kept in the registry either way."""
    with store.transaction() as con:
        policy = store_policy(con).current()
        candidate = registry.get(con, store.folder, version)
    if candidate.status is not AdapterStatus.CANDIDATE:
        raise GateError(f"{version} is {candidate.status.value}, not a candidate; only candidates are gated")
    settings = policy.spec.gate
    lm = lm.bare()  # an agent of this process may be answering with adapters loaded into the same model
    metrics = evaluate(store, lm, version, settings, max_length=policy.spec.model.max_length,
                       seed=policy.spec.consolidation.training.seed, anchor_settings=policy.spec.consolidation.anchors)
    now = datetime.now(timezone.utc)
    with store.transaction() as con:
        checks = judge(metrics, settings, tainted=registry.get(con, store.folder, version).tainted)
        passed = all(c.passed for c in checks)
        registry.set_metrics(con, version, {**metrics.to_dict(), "gate": {
            "passed": passed, "policy": policy.content_hash, "checks": [asdict(c) for c in checks]}})
        if not passed:
            failing = "; ".join(c.detail for c in checks if not c.passed)
            registry.set_status(con, version, AdapterStatus.REJECTED, now, note=f"gate: {failing}")
            requeue_rejected(con, version)
            decision = GateDecision.REJECTED
        elif settings.promote == "auto":
            activate(con, store.folder, candidate.train_scope, version, now, note="gate: passed")
            decision = GateDecision.PROMOTED
        else:
            decision = GateDecision.CANDIDATE
    return GateReport(version, passed, decision, checks, metrics)


def requeue_rejected(con, version: str) -> int:
    """A rejected round's items go back to the queue (until they have been tried MAX_ATTEMPTS times). Returns how
    many of its new items are pending again."""
    queue.requeue_rejected(con, version)
    return queue.pending_among(con, registry.learned_by(con, [version], roles=("new",)))

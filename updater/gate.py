"""No adapter reaches an agent unmeasured: evaluate a candidate against its parent and the base model, judge it
with the policy's gate, then promote or reject it and record why either way.

Measured on three sets:
- new items (plasticity): the round's own items, by probe (greedy answer contains the expected one) and by
  the log-likelihood of their training completion;
- earlier items (retention): every earlier round of the scope's chain, a stratified sample up to
  `gate.retention_cap`, always including items evicted from the index (their only home is the weights);
- general text (general ability): perplexity on text the project writes, held-out indexed items never trained
  on, and the user's own file when the policy names one.

Every probe result is stored (`probe_results`), so the accuracy matrix across rounds is a query, and from it
average accuracy, backward transfer (BWT), forward transfer against the base model (FWT) and forgetting.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from engramma.errors import EngrammaError
from engramma.memory.policy_store import store_policy
from engramma.memory.store import ITEM_COLUMNS, Store, item_from_row, naive_utc, scalar
from engramma.policies.schema import AnchorSettings, GateSettings
from engramma.types import Item, Name
from engramma.updater import anchors, queue, registry
from engramma.updater.activate import activate
from engramma.updater import augment as augmentation
from engramma.updater.dataset import Example, ExampleRole, tokenize
from engramma.updater.evaluate import GENERAL_TEXT, generate, pooled_perplexity, score_items, word_f1
from engramma.updater.layout import system_message
from engramma.updater.model import LanguageModel
from engramma.updater.registry import AdapterStatus, AdapterVersion


class GateError(EngrammaError):
    """The gate could not evaluate a candidate (a missing file it was told to read, an unknown version)."""


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
    metrics: dict

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


# -- pure: the verdict and the continual-learning metrics ----------------------------------------------


def judge(metrics: dict, settings: GateSettings, *, tainted: bool = False) -> tuple[Check, ...]:
    """The gate's checks on measured `metrics` (see `evaluate`)."""
    # A merge learned its items in other rounds; it is judged on how many it brings, new to its chain or not.
    merged = metrics.get("merged_items", 0)
    count, what = (merged, "merged") if merged else (metrics["new_items"], "new")
    checks = [Check(CheckName.ITEMS, count, settings.min_items, count >= settings.min_items,
                    f"{count} {what} item(s), at least {settings.min_items} needed")]
    if metrics["new_probed"]:
        acc = metrics["new_accuracy"]
        checks.append(Check(CheckName.NEW_ACCURACY, acc, settings.min_new_accuracy, acc >= settings.min_new_accuracy,
                            f"answers {acc:.0%} of the {metrics['new_probed']} new probes "
                            f"(parent {metrics['parent_new_accuracy']:.0%}, base {metrics['base_new_accuracy']:.0%})"))
    if metrics.get("new_heldout"):  # wordings never trained on: knowledge rather than memorised text
        acc = metrics["new_heldout_accuracy"]
        checks.append(Check(CheckName.NEW_HELDOUT_ACCURACY, acc, settings.min_heldout_accuracy,
                            acc >= settings.min_heldout_accuracy,
                            f"answers {acc:.0%} of the {metrics['new_heldout']} new items' held-out questions "
                            f"(base {metrics['base_new_heldout_accuracy']:.0%})"))
    if metrics.get("new_unprobed"):  # no probes: the new completions must at least have become likelier
        gain = metrics["new_logprob"] - metrics["parent_new_logprob"]
        checks.append(Check(CheckName.NEW_LIKELIHOOD, gain, 0.0, gain > 0,
                            f"mean log-probability of the {metrics['new_unprobed']} unprobed new completions "
                            f"rose by {gain:.3f} over the parent"))
    if metrics["earlier_probed"]:
        drop = metrics["parent_retention"] - metrics["retention"]
        base = metrics.get("base_retention")
        checks.append(Check(CheckName.RETENTION_DROP, drop, settings.max_retention_drop,
                            drop <= settings.max_retention_drop,
                            f"earlier rounds: {metrics['retention']:.0%} vs the parent's "
                            f"{metrics['parent_retention']:.0%} on {metrics['earlier_probed']} probes"
                            + (f" (base {base:.0%})" if base is not None else "")))
    if metrics.get("earlier_heldout"):
        drop = metrics["parent_retention_heldout"] - metrics["retention_heldout"]
        checks.append(Check(CheckName.RETENTION_HELDOUT_DROP, drop, settings.max_retention_drop,
                            drop <= settings.max_retention_drop,
                            f"earlier rounds' held-out questions: {metrics['retention_heldout']:.0%} vs the "
                            f"parent's {metrics['parent_retention_heldout']:.0%} on {metrics['earlier_heldout']}"))
    if metrics.get("earlier_unprobed"):  # earlier items without a probe: their completions must stay likely
        rise = math.exp(metrics["parent_retention_logprob"] - metrics["retention_logprob"]) - 1
        limit = settings.max_retention_perplexity_increase
        checks.append(Check(CheckName.RETENTION_PERPLEXITY_INCREASE, rise, limit, rise <= limit,
                            f"earlier rounds' {metrics['earlier_unprobed']} unprobed completions: perplexity "
                            f"{rise:+.1%} vs the parent"))
    rise = metrics["perplexity"] / metrics["parent_perplexity"] - 1
    checks.append(Check(CheckName.PERPLEXITY_INCREASE, rise, settings.max_perplexity_increase,
                        rise <= settings.max_perplexity_increase,
                        f"general perplexity {metrics['perplexity']:.2f} vs the parent's "
                        f"{metrics['parent_perplexity']:.2f} ({rise:+.1%})"))
    if metrics.get("general_agreement") is not None:
        agreement = metrics["general_agreement"]
        checks.append(Check(CheckName.GENERAL_AGREEMENT, agreement, settings.min_general_agreement,
                            agreement >= settings.min_general_agreement,
                            f"answers to {metrics['general_prompts']} held-out general prompts agree with the base "
                            f"model's at word F1 {agreement:.2f}"))
    if tainted:
        checks.append(Check(CheckName.UNTAINTED, 1.0, 0.0, False, "trained on items that were forgotten since"))
    return tuple(checks)


def continual_metrics(matrix: dict[tuple[str, str], float], chain: list[str], base: dict[str, float]) -> dict:
    """From R[evaluated][task] (accuracy on the items a round learned), over `chain` (oldest round first, the
    candidate last): average accuracy, backward transfer, forward transfer against the base model, and the
    largest drop of each earlier round."""
    last = chain[-1]
    seen = [t for t in chain if (last, t) in matrix]
    earlier = [t for t in chain[:-1] if (last, t) in matrix and (t, t) in matrix]
    forward = [(prev, t) for prev, t in zip(chain, chain[1:]) if (prev, t) in matrix and t in base]
    forgetting = {}
    for n, task in enumerate(chain[:-1]):
        later = [matrix[(e, task)] for e in chain[n:-1] if (e, task) in matrix]
        if later and (last, task) in matrix:
            forgetting[task] = max(later) - matrix[(last, task)]

    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else None

    return {"average_accuracy": mean(matrix[(last, t)] for t in seen),
            "bwt": mean(matrix[(last, t)] - matrix[(t, t)] for t in earlier),
            "fwt": mean(matrix[(prev, t)] - base[t] for prev, t in forward),
            "forgetting": forgetting, "max_forgetting": max(forgetting.values()) if forgetting else None}


# -- evaluation: load the adapters, probe, store ---------------------------------------------------------


class Models:
    """One base model with the candidate's, the parent's and the shared adapters loaded beside each other;
    `use(which)` switches between candidate, parent and base without copying weights."""

    def __init__(self, lm: LanguageModel, candidate: AdapterVersion, parent: AdapterVersion | None,
                 stacked: AdapterVersion | None):
        from peft import PeftModel

        self.lm = lm
        self.model = PeftModel.from_pretrained(lm.model, str(candidate.path), adapter_name="candidate")
        self.stacks = {"candidate": ["candidate"], "parent": []}
        if stacked is not None:
            self.model.load_adapter(str(stacked.path), adapter_name="shared")
            self.stacks = {name: ["shared", *names] for name, names in self.stacks.items()}
        if parent is not None:
            self.model.load_adapter(str(parent.path), adapter_name="parent")
            self.stacks["parent"] = self.stacks["parent"] + ["parent"]
        self.model.eval()

    @contextlib.contextmanager
    def use(self, which: str):
        names = self.stacks.get(which, [])
        if not names:  # the base model (or a parent that is the base model)
            with self.model.disable_adapter():
                yield self.model
            return
        self.model.base_model.set_adapter(names if len(names) > 1 else names[0])
        yield self.model

    def close(self) -> None:
        self.model.unload()


def _sample_by_round(rows: list[tuple[int, str]], cap: int, seed: int) -> list[tuple[int, str]]:
    """At most `cap` of (item id, round), the same share from every round."""
    by_round: dict[str, list[int]] = {}
    for item_id, task in rows:
        by_round.setdefault(task, []).append(item_id)
    rng = random.Random(seed)
    out, rounds = [], sorted(by_round)
    for n, task in enumerate(rounds):
        share = (cap - len(out)) // (len(rounds) - n)
        ids = sorted(by_round[task])
        out += [(i, task) for i in (ids if len(ids) <= share else sorted(rng.sample(ids, share)))]
    return out


def evaluate(store: Store, lm: LanguageModel, version: str, settings: GateSettings, *, max_length: int,
             seed: int = 0, anchor_settings: AnchorSettings | None = None) -> dict:
    """Measure `version` against its parent and the base model; store every probe result; return the metrics.
    General ability is measured on general text and, with `anchor_settings`, on the held-out anchor prompts:
    perplexity of the base model's answers, and agreement of the candidate's own answers with them."""
    folder = store.folder
    with store.transaction() as con:
        candidate = registry.get(con, folder, version)
        parent = registry.get(con, folder, candidate.parent) if candidate.parent else None
        stacked_on = candidate.config.stacked_on
        stacked = registry.get(con, folder, stacked_on) if stacked_on else None
        chain = list(reversed(registry.ancestors(con, version)))  # oldest first, the candidate last
        # item -> the earliest round of the chain that learned it (as new, or through a merge: a merge's own
        # round holds the items its sources learned outside this chain). Only current items count: a value
        # superseded since is no longer what the adapter should answer.
        now = datetime.now(timezone.utc)
        first_learned = dict(con.execute(
            "SELECT l.item_id, min(CAST(substr(l.adapter_version, 2) AS INTEGER)) FROM lineage l JOIN items i "
            "ON i.id = l.item_id WHERE l.role IN ('new', 'merged') AND l.adapter_version IN (SELECT unnest($chain)) "
            "AND i.status = 'kept' AND (i.valid_to IS NULL OR i.valid_to > $now) GROUP BY ALL",
            {"chain": chain, "now": naive_utc(now)}).fetchall())
        task_of = {item_id: f"v{n}" for item_id, n in first_learned.items()}
        new_ids = [i for i, t in task_of.items() if t == version]
        merged_items = scalar(con, "SELECT count(*) FROM lineage WHERE adapter_version = ? AND role = 'merged'",
                              [version])
        earlier_rows = [(i, t) for i, t in task_of.items() if t != version]
        evicted = {r[0] for r in con.execute(
            "SELECT id FROM items WHERE status = 'kept' AND NOT in_index AND after_consolidation = 'evict' "
            "AND route = 'both' AND id IN (SELECT unnest(?))", [[i for i, _ in earlier_rows] or [-1]]).fetchall()}
        sampled = _sample_by_round([r for r in earlier_rows if r[0] not in evicted], settings.retention_cap, seed)
        earlier_ids = sorted(evicted) + [i for i, _ in sampled]
        items = _items(con, new_ids + earlier_ids)
        pairs = augmentation.load(con, new_ids + earlier_ids)
        heldout = [r[0] for r in con.execute(
            "SELECT text FROM items WHERE status = 'kept' AND route = 'index' AND scope = ? AND text IS NOT NULL "
            "AND id NOT IN (SELECT item_id FROM lineage) ORDER BY hash(content_hash) LIMIT ?",
            [candidate.train_scope, settings.heldout_items]).fetchall()]
    general = list(GENERAL_TEXT) + heldout
    if settings.general_text:
        path = Path(settings.general_text).expanduser()
        try:
            general += [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
        except OSError as e:
            raise GateError(f"gate.general_text: cannot read {path} ({e})") from None

    general_examples = [tokenize(Example(n, "general", None, t), lm.tokenizer, 256) for n, t in enumerate(general)]
    prompts, base_answers = [], {}
    if anchor_settings is not None and anchor_settings.heldout:
        _, prompts = anchors.split(anchors.load_prompts(anchor_settings.prompts), anchor_settings.heldout)
        base_answers = anchors.answers(lm, prompts, max_new_tokens=anchor_settings.max_new_tokens)
        general_examples += [tokenize(Example(-1 - n, ExampleRole.ANCHOR, p, base_answers[p][0],
                                              system=system_message(), ends=base_answers[p][1]),
                                      lm.tokenizer, max_length)
                             for n, p in enumerate(prompts) if base_answers[p][0]]

    models = Models(lm, candidate, parent, stacked)
    try:
        scored: dict[str, dict[int, tuple[bool | None, bool | None, float]]] = {}
        ppl: dict[str, float] = {}
        probed_items = {i: items[i] for i in new_ids + earlier_ids if i in items}
        for which in ("candidate", "base") + (("parent",) if parent is not None else ()):
            with models.use(which) as model:
                scored[which] = score_items(model, lm.tokenizer, probed_items, max_length=max_length, pairs=pairs)
                ppl[which] = pooled_perplexity(model, lm.tokenizer, general_examples)
        if parent is None:  # the first version's parent is the base model: measured once
            scored["parent"], ppl["parent"] = scored["base"], ppl["base"]
        agreement = None
        if prompts:
            with models.use("candidate") as model:
                said = generate(model, lm.tokenizer, prompts, system=system_message(),
                                max_new_tokens=anchor_settings.max_new_tokens)
            agreement = sum(word_f1(anchors.whole_sentences(a)[0], base_answers[p][0])
                            for p, a in zip(prompts, said)) / len(prompts)
    finally:
        models.close()

    now = datetime.now(timezone.utc)
    evaluated_as = {"candidate": version, "parent": parent.version if parent else None, "base": "base"}
    kept_only = "JOIN items i ON i.id = p.item_id AND i.status = 'kept'"  # forgotten items leave the matrix
    with store.transaction() as con:
        for which, results in scored.items():
            name = evaluated_as[which]
            if name is None or not results:
                continue
            ids = list(results)
            con.execute("DELETE FROM probe_results WHERE evaluated = ? AND item_id IN (SELECT unnest(?))", [name, ids])
            con.execute("INSERT INTO probe_results (evaluated, item_id, task, correct, heldout_correct, logprob, "
                        "evaluated_at) SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?), unnest(?), ?",
                        [name, ids, [task_of.get(i) for i in ids], [results[i][0] for i in ids],
                         [results[i][1] for i in ids], [results[i][2] for i in ids], naive_utc(now)])
        matrix = {(e, t): acc for e, t, acc in con.execute(
            f"SELECT p.evaluated, p.task, avg(CAST(p.correct AS INTEGER)) FROM probe_results p {kept_only} "
            "WHERE p.correct IS NOT NULL AND p.evaluated IN (SELECT unnest($chain)) "
            "AND p.task IN (SELECT unnest($chain)) GROUP BY ALL", {"chain": chain}).fetchall()}
        base = dict(con.execute(
            f"SELECT p.task, avg(CAST(p.correct AS INTEGER)) FROM probe_results p {kept_only} "
            "WHERE p.evaluated = 'base' AND p.correct IS NOT NULL AND p.task IN (SELECT unnest(?)) GROUP BY ALL",
            [chain]).fetchall())

    def accuracy(which: str, ids: list[int], column: int = 0) -> float | None:
        marks = [scored[which][i][column] for i in ids if i in scored[which] and scored[which][i][column] is not None]
        return sum(marks) / len(marks) if marks else None

    def logprob(which: str, ids: list[int]) -> float | None:
        values = [scored[which][i][2] for i in ids if i in scored[which]]
        return sum(values) / len(values) if values else None

    def heldout(ids: list[int]) -> list[int]:
        return [i for i in ids if i in scored["candidate"] and scored["candidate"][i][1] is not None]

    def probed(ids: list[int], with_probe: bool) -> list[int]:
        return [i for i in ids if i in scored["candidate"] and (scored["candidate"][i][0] is not None) == with_probe]

    unprobed_new, unprobed_earlier = probed(new_ids, False), probed(earlier_ids, False)
    return {
        "evaluated_at": now.isoformat(), "chain": chain,
        "new_items": len(new_ids), "new_probed": len(probed(new_ids, True)), "merged_items": merged_items,
        "new_accuracy": accuracy("candidate", new_ids), "parent_new_accuracy": accuracy("parent", new_ids),
        "base_new_accuracy": accuracy("base", new_ids),
        # items without a probe are judged by the log-likelihood of their completions
        "new_unprobed": len(unprobed_new), "new_logprob": logprob("candidate", unprobed_new),
        "parent_new_logprob": logprob("parent", unprobed_new),
        "new_heldout": len(heldout(new_ids)), "new_heldout_accuracy": accuracy("candidate", new_ids, 1),
        "parent_new_heldout_accuracy": accuracy("parent", new_ids, 1),
        "base_new_heldout_accuracy": accuracy("base", new_ids, 1),
        "earlier_heldout": len(heldout(earlier_ids)), "retention_heldout": accuracy("candidate", earlier_ids, 1),
        "parent_retention_heldout": accuracy("parent", earlier_ids, 1),
        "earlier_probed": len(probed(earlier_ids, True)), "evicted_checked": len(evicted),
        "retention": accuracy("candidate", earlier_ids), "parent_retention": accuracy("parent", earlier_ids),
        "base_retention": accuracy("base", earlier_ids),
        "earlier_unprobed": len(unprobed_earlier), "retention_logprob": logprob("candidate", unprobed_earlier),
        "parent_retention_logprob": logprob("parent", unprobed_earlier),
        "perplexity": ppl["candidate"], "parent_perplexity": ppl["parent"], "base_perplexity": ppl["base"],
        "general_texts": len(general), "general_prompts": len(prompts), "general_agreement": agreement,
        "matrix": {f"{e}|{t}": a for (e, t), a in sorted(matrix.items())},
        **continual_metrics(matrix, chain, base),
    }


def _items(con, ids: list[int]) -> dict[int, Item]:
    if not ids:
        return {}
    rows = con.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id IN (SELECT unnest(?))", [ids]).fetchall()
    return dict(item_from_row(r) for r in rows)


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
        tainted = bool(scalar(con, "SELECT tainted FROM adapters WHERE version = ?", [version]))
        checks = judge(metrics, settings, tainted=tainted)
        passed = all(c.passed for c in checks)
        record = {**metrics, "gate": {"passed": passed, "policy": policy.content_hash,
                                      "checks": [asdict(c) for c in checks]}}
        con.execute("UPDATE adapters SET metrics = ? WHERE version = ?", [json.dumps(record), version])
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
    return GateReport(version, passed, decision, checks, record)


def requeue_rejected(con, version: str) -> int:
    """A rejected round's items go back to the queue (until they have been tried MAX_ATTEMPTS times). Returns how
    many of its new items are pending again."""
    queue.requeue_rejected(con, version)
    return queue.pending_among(con, registry.learned_by(con, [version], roles=("new",)))

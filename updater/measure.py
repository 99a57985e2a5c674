"""Measure a candidate adapter against its parent and the base model, for the gate (updater/gate.py judges).

Three sets:
- new items (plasticity): the round's own items, by probe (greedy answer contains the expected one), by their
  held-out question, and by the log-likelihood of their training completion;
- earlier items (retention): every earlier round of the scope's chain, a stratified sample up to
  `gate.retention_cap`, always including items evicted from the index (their only home is the weights);
- general ability: perplexity on text the project writes, held-out indexed items never trained on, and the
  user's own file when the policy names one; with anchors, agreement with the base model's answers to the
  held-out anchor prompts.

This module owns the `probe_results` table: every probe result is stored, so the accuracy matrix across rounds
is a query, and from it average accuracy, backward transfer (BWT), forward transfer against the base model
(FWT) and forgetting.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from engramma.errors import EngrammaError
from engramma.memory import items as item_rows
from engramma.memory.store import Store, naive_utc
from engramma.policies.schema import AnchorSettings, GateSettings
from engramma.updater import anchors, registry
from engramma.updater import augment as augmentation
from engramma.updater.dataset import Example, ExampleRole, tokenize
from engramma.updater.evaluate import GENERAL_TEXT, generate, pooled_perplexity, score_items, word_f1
from engramma.updater.layout import system_message
from engramma.updater.model import LanguageModel
from engramma.updater.registry import AdapterVersion

SCHEMA = 1


class GateError(EngrammaError):
    """The gate could not evaluate a candidate (a missing file it was told to read, an unknown version)."""


@dataclass(frozen=True, slots=True)
class EvalMetrics:
    """What `evaluate` measured on one candidate. Accuracies are shares in [0, 1], None where nothing was asked;
    log-probabilities are mean nats per completion token; `parent_*` is the version the candidate would replace
    (the base model for a scope's first), `base_*` the base model."""

    evaluated_at: str  # ISO time, UTC
    chain: tuple[str, ...]  # the candidate's ancestry, oldest first, the candidate last
    # new items (plasticity)
    new_items: int  # items the candidate learned as new
    new_probed: int  # ... of them with a probe (or a demonstration)
    new_accuracy: float | None
    parent_new_accuracy: float | None
    base_new_accuracy: float | None
    new_unprobed: int  # ... without one: judged by log-likelihood
    new_logprob: float | None
    parent_new_logprob: float | None
    new_heldout: int  # ... with a question held out of training
    new_heldout_accuracy: float | None
    parent_new_heldout_accuracy: float | None
    base_new_heldout_accuracy: float | None
    # earlier items (retention)
    earlier_probed: int
    evicted_checked: int  # earlier items out of the index, always probed
    retention: float | None
    parent_retention: float | None
    base_retention: float | None
    earlier_heldout: int
    retention_heldout: float | None
    parent_retention_heldout: float | None
    earlier_unprobed: int
    retention_logprob: float | None
    parent_retention_logprob: float | None
    # general ability
    perplexity: float
    parent_perplexity: float
    base_perplexity: float
    general_texts: int
    general_prompts: int  # held-out anchor prompts answered
    general_agreement: float | None  # word F1 of the candidate's answers with the base model's
    # the accuracy matrix R[evaluated|task] over the chain, and what follows from it
    matrix: dict[str, float] = field(default_factory=dict)
    average_accuracy: float | None = None
    bwt: float | None = None
    fwt: float | None = None
    forgetting: dict[str, float] = field(default_factory=dict)
    max_forgetting: float | None = None
    merged_items: int = 0  # a merge: the items its sources learned

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self), "chain": list(self.chain)}

    @classmethod
    def from_dict(cls, data: dict) -> EvalMetrics:
        """Read a stored record (`AdapterVersion.metrics`). Keys it does not know (the gate's verdict, "schema")
        are left out; a field an older record lacks is None, or its default."""
        values = {f.name: None for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        values.update((k, v) for k, v in data.items() if k in _FIELDS)
        return cls(**{**values, "chain": tuple(values.get("chain") or ())})


_FIELDS = {f.name for f in fields(EvalMetrics)}


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
             seed: int = 0, anchor_settings: AnchorSettings | None = None) -> EvalMetrics:
    """Measure `version` against its parent and the base model; store every probe result; return the metrics.
    General ability is measured on general text and, with `anchor_settings`, on the held-out anchor prompts:
    perplexity of the base model's answers, and agreement of the candidate's own answers with them."""
    folder = store.folder
    now = datetime.now(timezone.utc)
    with store.transaction() as con:
        candidate = registry.get(con, folder, version)
        parent = registry.get(con, folder, candidate.parent) if candidate.parent else None
        stacked_on = candidate.config.stacked_on
        stacked = registry.get(con, folder, stacked_on) if stacked_on else None
        chain = list(reversed(registry.ancestors(con, version)))  # oldest first, the candidate last
        # item -> its round: the earliest of the chain that learned it. Only current items count: a value
        # superseded since is no longer what the adapter should answer.
        learned = registry.first_learned(con, chain)
        task_of = {i: learned[i] for i in item_rows.current(con, list(learned), now)}
        new_ids = [i for i, t in task_of.items() if t == version]
        merged_items = registry.roles(con, version).get("merged", 0)
        earlier_rows = [(i, t) for i, t in task_of.items() if t != version]
        evicted = item_rows.evicted_among(con, [i for i, _ in earlier_rows])
        sampled = _sample_by_round([r for r in earlier_rows if r[0] not in evicted], settings.retention_cap, seed)
        earlier_ids = sorted(evicted) + [i for i, _ in sampled]
        items = item_rows.load(con, new_ids + earlier_ids)
        pairs = augmentation.load(con, new_ids + earlier_ids)
        heldout = item_rows.untrained_texts(con, candidate.train_scope, exclude=registry.trained_items(con),
                                            limit=settings.heldout_items)
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
    with store.transaction() as con:
        for which, results in scored.items():
            if evaluated_as[which] is not None and results:
                _store_results(con, evaluated_as[which], results, task_of, now)
        measured = accuracy_matrix(con, evaluated=[*chain, "base"], tasks=chain)
    matrix = {(e, t): acc for (e, t), (acc, _) in measured.items() if e != "base"}
    base = {t: acc for (e, t), (acc, _) in measured.items() if e == "base"}

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
    return EvalMetrics(**{
        "evaluated_at": now.isoformat(), "chain": tuple(chain),
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
    })


# -- the probe results: written by `evaluate`, read by the gate's index settling and the report ---------------


def _store_results(con: duckdb.DuckDBPyConnection, evaluated: str, results: dict, task_of: dict[int, str],
                   now: datetime) -> None:
    ids = list(results)
    con.execute("DELETE FROM probe_results WHERE evaluated = ? AND item_id IN (SELECT unnest(?))", [evaluated, ids])
    con.execute("INSERT INTO probe_results (evaluated, item_id, task, correct, heldout_correct, logprob, "
                "evaluated_at) SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?), unnest(?), ?",
                [evaluated, ids, [task_of.get(i) for i in ids], [results[i][0] for i in ids],
                 [results[i][1] for i in ids], [results[i][2] for i in ids], naive_utc(now)])


def accuracy_matrix(con: duckdb.DuckDBPyConnection, *, evaluated: list[str] | None = None,
                    tasks: list[str] | None = None) -> dict[tuple[str, str], tuple[float, int]]:
    """(evaluated version, task) -> (probe accuracy, probes) over the probed items still kept (a forgotten item
    says nothing about what is remembered now), optionally for some versions and tasks only."""
    probed = [r[0] for r in con.execute("SELECT DISTINCT item_id FROM probe_results ORDER BY 1").fetchall()]
    return {(e, t): (acc, n) for e, t, acc, n in con.execute(
        "SELECT evaluated, task, avg(CAST(correct AS INTEGER)), count(*) FROM probe_results "
        "WHERE correct IS NOT NULL AND task IS NOT NULL AND item_id IN (SELECT unnest($ids)) "
        "AND ($all_e OR evaluated IN (SELECT unnest($evaluated))) AND ($all_t OR task IN (SELECT unnest($tasks))) "
        "GROUP BY ALL", {"ids": item_rows.kept(con, probed), "all_e": evaluated is None, "evaluated": evaluated or [],
                         "all_t": tasks is None, "tasks": tasks or []}).fetchall()}


def probe_marks(con: duckdb.DuckDBPyConnection, evaluated: str, item_ids: list[int]) -> dict[int, bool | None]:
    """item -> whether `evaluated` answered its probe (None: it has none), for those of `item_ids` measured."""
    return dict(con.execute("SELECT item_id, correct FROM probe_results WHERE evaluated = ? "
                            "AND item_id IN (SELECT unnest(?))", [evaluated, item_ids]).fetchall())

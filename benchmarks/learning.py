"""The learning benchmark: what each consolidation strategy learns, keeps, generalises and costs, on a stream of
dated facts, through engramma's public API only (Memory, consolidate, LocalAgent).

A *cell* is one (strategy, regime, seed). It observes the stream round by round into a fresh store under the
strategy's policy, runs the consolidation job after each round (which trains, gates and promotes or rejects as
shipped), and after each round asks the agent, from its weights alone, every fact taught so far and the next
round's (for forward transfer), in the training wording and in held-out wordings no strategy ever trains on.
After the last round it also asks the agent as shipped (recall plus adapters), the facts whose value changed,
and questions no memory answers. Every cell uses the same stream, model, LoRA settings and replay budget.

    python benchmarks/learning.py --quick            # tiny model, every strategy, both regimes: ~2-5 min
    python benchmarks/learning.py --small            # SmolLM2-135M, 3 rounds, naive/random/retrieval: ~30 min
    python benchmarks/learning.py --resume           # the full run (hours): each finished cell is saved, --resume skips it

Results: `benchmarks/results/learning-<name>.md` (tables), `...-round1.png` and `...-general.png` (plots),
`...json` (every aggregated number), and `learning-<name>/cells/*.json` (each cell's measurements and answers).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402

import learning_metrics as lm_metrics  # noqa: E402
from learning_data import FORMS, Stream, load_stream, read_general  # noqa: E402

VERSION = 1  # of what a cell measures: a cell saved under another version is measured again


@dataclass(frozen=True)
class Strategy:
    name: str
    replay: str | None  # the policy's consolidation.replay; None: nothing is ever trained
    about: str
    kl_weight: float = 0.0
    keyed_in_index: bool = False


STRATEGIES = {s.name: s for s in (
    Strategy("index", None, "index only: every fact recalled, answered by the base model; nothing trained"),
    Strategy("naive", "none", "LoRA on each round's facts, no replay"),
    Strategy("random", "random", "replay drawn uniformly from what earlier rounds learned"),
    Strategy("reservoir", "reservoir", "replay drawn from the store's reservoir sample"),
    Strategy("retrieval", "retrieval", "replay of each new fact's nearest past facts, plus a reservoir share"),
    Strategy("mir", "mir", "retrieval candidates re-ranked by the loss one trial step raises (MIR)"),
    Strategy("retrieval-kl", "retrieval", "retrieval replay with a KL term to the parent adapter on replay (weight 1)",
             kl_weight=1.0),
    Strategy("hybrid", "retrieval", "the policy keeps keyed (changeable) facts in the index only and trains the "
             "rest, with retrieval replay", keyed_in_index=True),
)}
SEEDED = ("naive", "random", "retrieval")  # where the claim is decided: every seed; the others the first only
REGIMES = ("gated", "ungated")
# The ungated regime promotes every candidate, so strategies are compared on what they learned, not on what
# the gate let through. (The gate still measures it; only its thresholds are opened.)
OPEN_GATE = {"min_new_accuracy": 0.0, "min_heldout_accuracy": 0.0, "min_general_agreement": 0.0,
             "max_retention_drop": 1.0, "max_perplexity_increase": 1e9, "max_retention_perplexity_increase": 1e9,
             "min_items": 1}
# Settings a cell owns: a --set that changed them would make the strategies unequal or the regimes the same.
OWNED = ("rules", "default", "consolidation.replay", "consolidation.training.kl_weight", "consolidation.training.seed")


@dataclass(frozen=True)
class Setting:
    model: str
    rounds: int
    per_round: int
    strategies: tuple[str, ...]
    regimes: tuple[str, ...] = REGIMES
    seeds: tuple[int, ...] = (0,)
    general: int | None = None  # how many general prompts and paragraphs (None: all)
    unanswerable: int | None = None
    max_new_tokens: int = 32
    context_tokens: int = 300  # the agent's recall budget (LocalAgent's default)
    batch_size: int = 32
    overrides: tuple[tuple[str, object], ...] = ()


TINY = "tiny"  # tests/tiny_lm.py's model, built once into benchmarks/.cache
SETTINGS = {
    # The tiny model learns from many epochs at a high rate (tests/tiny_lm.py); it knows no English, so its
    # numbers only prove the instrument works end to end.
    "quick": Setting(TINY, rounds=2, per_round=6, strategies=tuple(STRATEGIES), general=8, unanswerable=6,
                     max_new_tokens=12, context_tokens=120, overrides=(
                         ("model.max_length", 128), ("consolidation.lora.rank", 8), ("consolidation.lora.alpha", 16),
                         ("consolidation.training.learning_rate", 3e-3), ("consolidation.training.epochs", 10),
                         ("consolidation.training.batch_size", 4), ("gate.max_perplexity_increase", 1.0),
                         # it cannot write questions, and its answers to general prompts are noise
                         ("consolidation.augment.generate", False), ("consolidation.anchors.max_new_tokens", 12),
                         ("consolidation.anchors.heldout", 8), ("gate.min_general_agreement", 0.0))),
    "small": Setting("smollm2-135m-instruct", rounds=3, per_round=16,
                     strategies=("index", "naive", "random", "retrieval"), regimes=("gated",), general=24,
                     unanswerable=12),
    "full": Setting("smollm2-135m-instruct", rounds=5, per_round=24, strategies=tuple(STRATEGIES), seeds=(0, 1, 2)),
}


@dataclass(frozen=True)
class Cell:
    strategy: str
    regime: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.strategy}-{self.regime}-s{self.seed}"


@dataclass
class Run:
    """Everything every cell of a run shares."""

    name: str
    out: Path
    stream: Stream
    form: str
    setting: Setting
    model: str  # a name or folder for load_model
    config: dict = field(default_factory=dict)
    embedder: object = None
    base: dict = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)

    @property
    def cells_dir(self) -> Path:
        return self.out / self.name / "cells"

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:12]


# -- policies ---------------------------------------------------------------------------------------------


def _set(tree: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ValueError(f"--set {dotted}: {part} is not a section")
    tree[last] = value


def policy_for(strategy: Strategy, regime: str, seed: int, overrides) -> dict:
    """The shipped default preset's model, consolidation and gate sections, with the benchmark's rules: every
    fact goes to the index and the shared adapter (`both`), or to the index alone for `index` (and, for
    `hybrid`, keyed facts: the ones whose value can change)."""
    spec = yaml.safe_load(resources.files("engramma.policies").joinpath("presets", "default.yaml").read_text())
    facts = {"name": "facts", "when": {"kind": ["fact"]}, "route": "both", "train_scope": "shared"}
    if strategy.replay is None:
        rules = [{"name": "facts", "when": {"kind": ["fact"]}, "route": "index"}]
    elif strategy.keyed_in_index:
        rules = [{"name": "changeable-facts", "when": {"kind": ["fact"], "has_key": True}, "route": "index"}, facts]
    else:
        rules = [facts]
    spec.update(name=f"learning-{strategy.name}-{regime}", description=strategy.about, rules=rules, default="index")
    spec["consolidation"]["min_items"] = 1  # every round is consolidated, however few facts it brought
    for dotted, value in overrides:
        _set(spec, dotted, value)
    spec["consolidation"]["replay"] = strategy.replay or "none"
    spec["consolidation"]["training"]["kl_weight"] = strategy.kl_weight
    spec["consolidation"]["training"]["seed"] = seed
    if regime == "ungated":
        spec["gate"].update(OPEN_GATE)
    return spec


def parse_overrides(pairs: list[str]) -> tuple[tuple[str, object], ...]:
    out = []
    for pair in pairs:
        dotted, sep, value = pair.partition("=")
        if not sep or not dotted:
            raise SystemExit(f"learning.py: error: --set {pair!r}: write KEY=VALUE, e.g. consolidation.training.epochs=9")
        if any(dotted == o or dotted.startswith(o + ".") for o in OWNED):
            raise SystemExit(f"learning.py: error: --set {dotted}: each strategy sets this itself ({', '.join(OWNED)})")
        out.append((dotted, yaml.safe_load(value)))
    return tuple(out)


# -- asking -----------------------------------------------------------------------------------------------


def wordings(fact) -> list[tuple[str, str]]:
    """(which, question): the probe wording (the one the probe and pair forms train on) and the held-out ones."""
    return [("probe", fact.question)] + [("heldout", p) for p in fact.paraphrases]


def ask(agent, questions: list[str], *, recall: bool, batch_size: int) -> list[str]:
    return [a.text for a in asked(agent, questions, recall=recall, batch_size=batch_size)]


def asked(agent, questions: list[str], *, recall: bool, batch_size: int) -> list:
    """The agent's `Answer`s (text and recalled context)."""
    return agent.answer_many(questions, recall=recall, batch_size=batch_size) if questions else []


def accuracy_row(stream: Stream, columns: range, answer_of: dict[str, str]) -> dict[str, list[float | None]]:
    """Accuracy per round's stable facts, in the probe wording and in held-out wordings (None: not asked)."""
    row: dict[str, list[float | None]] = {"probe": [None] * len(stream.rounds), "heldout": [None] * len(stream.rounds)}
    for j in columns:
        for which in row:
            marks = [lm_metrics.matches(answer_of[q], f.answers) for f in stream.stable[j]
                     for w, q in wordings(f) if w == which and q in answer_of]
            row[which][j] = sum(marks) / len(marks) if marks else None
    return row


def asked_of_agent(fact) -> list[str]:
    """What the agent as shipped is asked: the held-out wordings (how users ask), else the probe wording."""
    return list(fact.paraphrases) or [fact.question]


def perplexity(model, tokenizer, texts: list[str], batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood per token) of plain texts, each after the BOS token when there is one."""
    import math

    import torch

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    nll, counted = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            encoded = [bos + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start:start + batch_size]]
            width = max(map(len, encoded))
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for n, e in enumerate(encoded):
                ids[n, :len(e)], mask[n, :len(e)] = torch.tensor(e), 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
            targets = ids[:, 1:].to(device).masked_fill(mask[:, 1:].to(device) == 0, -100)
            nll += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100,
                                                           reduction="sum"))
            counted += int((targets != -100).sum())
    return math.exp(nll / counted)


def known_text(run: Run, question: str, prompt: str) -> str:
    """What an answer may repeat without inventing it: every fact of the stream, the question, and what the
    model was shown (its system prompt, and for the agent its recalled context)."""
    return "\n".join(run.stream.texts + [question, prompt])


# -- the base model, measured once per run -----------------------------------------------------------------


def all_questions(run: Run) -> list[str]:
    stable = [q for r in run.stream.stable for f in r for _, q in wordings(f)]
    changed = [q for _, new in run.stream.changed for _, q in wordings(new)]
    return list(dict.fromkeys(stable + changed + unanswerable(run)))


def unanswerable(run: Run) -> list[str]:
    limit = run.setting.unanswerable
    return list(run.stream.unanswerable[:limit] if limit else run.stream.unanswerable)


def measure_base(run: Run) -> dict:
    """The base model's answers (no adapter, nothing recalled) to every question and general prompt, and its
    perplexity: the reference for forward transfer, agreement and perplexity change."""
    from engramma import Memory
    from engramma.agents import LocalAgent
    from engramma.updater import load_model

    path = run.out / run.name / "base.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("config") == run.config_hash:
            return saved
    lm = load_model(run.model)
    with tempfile.TemporaryDirectory(prefix="engramma-learning-") as tmp, \
            Memory.open(Path(tmp) / "store", embedder=run.embedder, policy="preset:index-only") as mem:
        agent = LocalAgent(lm, mem, max_new_tokens=run.setting.max_new_tokens,
                           context_tokens=run.setting.context_tokens)
        questions = all_questions(run)
        answers = ask(agent, questions, recall=False, batch_size=run.setting.batch_size)
        general = ask(agent, run.prompts, recall=False, batch_size=run.setting.batch_size)  # batched alone, as in cells
        system = agent.system
    answer_of = dict(zip(questions, answers))
    row = accuracy_row(run.stream, range(len(run.stream.rounds)), answer_of)
    unknown = unanswerable(run)
    invented = [bool(lm_metrics.invented_specifics(answer_of[q], known_text(run, q, system))) for q in unknown]
    base = {"config": run.config_hash, "answers": answer_of, "general": general,
            "accuracy": row, "perplexity": perplexity(lm.model, lm.tokenizer, run.paragraphs), "system": system,
            "invented": sum(invented) / len(invented) if invented else None}
    _write_json(path, base)
    return base


# -- one cell ---------------------------------------------------------------------------------------------


def run_cell(run: Run, cell: Cell, progress) -> dict:
    from engramma import Memory
    from engramma.agents import LocalAgent
    from engramma.updater import consolidate, load_model

    strategy = STRATEGIES[cell.strategy]
    policy = policy_for(strategy, cell.regime, cell.seed, run.setting.overrides)
    started = time.perf_counter()
    rounds, cache = [], {}
    with tempfile.TemporaryDirectory(prefix=f"engramma-learning-{cell.name}-") as tmp:
        policy_path = Path(tmp) / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
        lm = load_model(run.model)
        with Memory.open(Path(tmp) / "store", embedder=run.embedder, policy=policy_path) as mem:
            agent = LocalAgent(lm, mem, max_new_tokens=run.setting.max_new_tokens,
                               context_tokens=run.setting.context_tokens)
            for r, facts in enumerate(run.stream.rounds):
                progress(f"{cell.name}: round {r + 1}/{len(run.stream.rounds)}, observing and consolidating")
                records = mem.observe_many([f.item(run.form) for f in facts])
                routes = Counter(rec.route for rec in records)
                consolidated = []
                if strategy.replay is not None:
                    t = time.perf_counter()
                    results = consolidate(Path(tmp) / "store", model=lm, progress=False)
                    consolidated = [_consolidation(x, time.perf_counter() - t) for x in results]
                progress(f"{cell.name}: round {r + 1}/{len(run.stream.rounds)}, asking")
                t = time.perf_counter()
                weights, general = evaluate_weights(run, agent, strategy, r, cache)
                rounds.append({"round": r, "observed": len(records), "routes": dict(routes),
                               "consolidation": consolidated, "active": dict(agent.adapters.versions),
                               "weights": weights, "general": general, "eval_s": time.perf_counter() - t})
                _log(run, cell, rounds[-1])
            progress(f"{cell.name}: the agent as shipped, changed facts, unanswerable questions")
            final = evaluate_final(run, agent, strategy)
    matrix = {w: [r["weights"][w] for r in rounds] for w in ("probe", "heldout")}
    base = [run.base["accuracy"][w] for w in ("probe", "heldout")]
    return {"cell": asdict(cell), "config": run.config_hash, "version": VERSION, "policy": policy,
            "rounds": rounds, "final": final, "wall_s": time.perf_counter() - started,
            "metrics": {w: lm_metrics.continual(matrix[w], b) for w, b in zip(("probe", "heldout"), base)}}


def _consolidation(result, wall_s: float) -> dict:
    out = {"status": result.status, "version": result.version, "items_new": result.items_new,
           "items_replayed": result.items_replayed, "wall_s": wall_s, "note": result.note}
    if result.report is not None:
        out.update(tokens=result.report.tokens, train_s=result.report.wall_s, tokens_per_s=result.report.tokens_per_s,
                   steps=result.report.steps, final_loss=result.report.losses[-1] if result.report.losses else None)
    if result.gate is not None:
        m = result.gate.metrics.to_dict()
        out.update(decision=result.gate.decision, failed=[c.name for c in result.gate.failed],
                   checks=[{"name": c.name, "value": c.value, "threshold": c.threshold, "passed": c.passed,
                            "detail": c.detail} for c in result.gate.checks],
                   gate={k: m.get(k) for k in ("new_accuracy", "new_probed", "new_unprobed", "retention",
                                               "parent_retention", "earlier_probed", "perplexity",
                                               "parent_perplexity", "base_perplexity", "bwt", "fwt")})
    return out


def evaluate_weights(run: Run, agent, strategy: Strategy, r: int, cache: dict) -> tuple[dict, dict]:
    """After round r: from the weights alone, the stable facts of rounds 0..r+1 in every wording; general
    prompts against the base model's answers; perplexity against the base model's. `cache` holds what each set
    of active adapters answered already (after a rejected round the agent's weights have not changed)."""
    columns = range(min(r + 2, len(run.stream.rounds)))
    if strategy.replay is None:  # nothing trained: the weights are the base model's, measured once per run
        row = {w: [v if j in columns else None for j, v in enumerate(run.base["accuracy"][w])] for w in ("probe", "heldout")}
        return row, {"perplexity": run.base["perplexity"], "perplexity_change": 0.0, "agreement": 1.0, "identical": 1.0}
    agent.adapters.refresh()
    seen = cache.setdefault(json.dumps(agent.adapters.versions, sort_keys=True), {})  # a rejected round: same weights
    questions = list(dict.fromkeys(q for j in columns for f in run.stream.stable[j] for _, q in wordings(f)))
    # the general prompts in a call of their own, batched exactly as the base model's were
    for batch in ([q for q in questions if q not in seen], [p for p in run.prompts if p not in seen]):
        seen.update(zip(batch, ask(agent, batch, recall=False, batch_size=run.setting.batch_size)))
    row = accuracy_row(run.stream, columns, {q: seen[q] for q in questions})
    general = lm_metrics.agreement([seen[p] for p in run.prompts], run.base["general"])
    if "perplexity" not in seen:
        seen["perplexity"] = perplexity(agent.adapters.model, agent.lm.tokenizer, run.paragraphs)
    ppl = seen["perplexity"]
    return row, {"perplexity": ppl, "perplexity_change": ppl / run.base["perplexity"] - 1, **general}


def evaluate_final(run: Run, agent, strategy: Strategy) -> dict:
    """After the last round: the agent as shipped (recall plus adapters) on every stable fact, in its held-out
    wordings; for facts whose value changed, which value weights and agent answer, in every wording; on
    unanswerable questions, invented specifics."""
    stream = run.stream
    stable_q = list(dict.fromkeys(q for r in stream.stable for f in r for q in asked_of_agent(f)))
    changed_q = list(dict.fromkeys(q for _, new in stream.changed for _, q in wordings(new)))
    unknown_q = unanswerable(run)
    replies = asked(agent, stable_q + changed_q + unknown_q, recall=True, batch_size=run.setting.batch_size)
    agent_answers = [a.text for a in replies]
    recalled = {q: a.context for q, a in zip(stable_q + changed_q + unknown_q, replies)}
    if strategy.replay is None:
        weight_answers = [run.base["answers"][q] for q in changed_q + unknown_q]
    else:
        weight_answers = ask(agent, changed_q + unknown_q, recall=False, batch_size=run.setting.batch_size)
    by_agent = dict(zip(stable_q + changed_q + unknown_q, agent_answers))
    by_weights = dict(zip(changed_q + unknown_q, weight_answers))
    out = {"agent": accuracy_row(stream, range(len(stream.rounds)), by_agent), "changed": {}, "unanswerable": {},
           "answers": {"agent": [[q, by_agent[q]] for q in stable_q + changed_q + unknown_q],
                       "weights": [[q, by_weights[q]] for q in changed_q + unknown_q],
                       "recalled": [[q, recalled[q]] for q in unknown_q]}}
    for setting, answer_of in (("weights", by_weights), ("agent", by_agent)):
        values = Counter(lm_metrics.which_value(answer_of[q], old.answers, new.answers)
                         for old, new in stream.changed for _, q in wordings(new))
        out["changed"][setting] = {"asked": sum(values.values()), **values}
        # what the agent was shown (its recalled context) is known to it, not invented
        shown = {q: agent.system + ("\n" + recalled[q] if setting == "agent" else "") for q in unknown_q}
        invented = {q: lm_metrics.invented_specifics(answer_of[q], known_text(run, q, shown[q])) for q in unknown_q}
        out["unanswerable"][setting] = {"asked": len(unknown_q), "with_invented": sum(bool(v) for v in invented.values()),
                                        "invented": {q: v for q, v in invented.items() if v}}
    return out


def _log(run: Run, cell: Cell, row: dict) -> None:
    parts = [f"{cell.name} round {row['round'] + 1}/{len(run.stream.rounds)}:"]
    for c in row["consolidation"]:
        parts.append(f"{c.get('version')} {c.get('decision', c['status'])}"
                     + (f" (failed: {', '.join(c['failed'])})" if c.get("failed") else "") + f", {c['wall_s']:.0f} s")
    new = row["weights"]["probe"][row["round"]], row["weights"]["heldout"][row["round"]]
    parts.append("new facts " + "/".join("-" if v is None else f"{v:.2f}" for v in new) + " (probe/held-out)")
    parts.append(f"perplexity {row['general']['perplexity_change']:+.1%}, agreement {row['general']['agreement']:.2f}")
    print(" ".join(parts), file=sys.stderr, flush=True)


# -- the run ----------------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)  # a killed run never leaves half a cell


def cells_of(setting: Setting) -> list[Cell]:
    """Seed by seed (so a run stopped early has every strategy once), each strategy gated before ungated."""
    out = []
    for n, seed in enumerate(setting.seeds):
        for strategy in setting.strategies:
            if n and strategy not in SEEDED:  # one seed for the others
                continue
            # index trains nothing: both regimes are the same run (measured once, reported under both).
            for regime in setting.regimes[:1] if strategy == "index" else setting.regimes:
                out.append(Cell(strategy, regime, seed))
    return out


def tiny_model() -> str:
    folder = HERE / ".cache" / "tiny-lm"
    if not (folder / "config.json").is_file():
        sys.path.insert(0, str(HERE.parent / "tests"))
        import tiny_lm

        tiny_lm.build(folder)
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="setting",
                      help="the tiny model, 2 rounds of 6 facts, every strategy and regime (minutes)")
    size.add_argument("--small", action="store_const", const="small", dest="setting",
                      help="SmolLM2-135M, 3 rounds of 16, index/naive/random/retrieval, gated, 1 seed (~30 min)")
    parser.set_defaults(setting="full")
    parser.add_argument("--stream", choices=("invented", "situatedqa", "jsonl"), default="invented",
                        help="invented: benchmarks/data/invented_facts.jsonl (default); situatedqa: --data is its "
                             "folder; jsonl: --data is a file of {question, answer, date}")
    parser.add_argument("--data", type=Path, help="the stream's folder or file")
    parser.add_argument("--unanswerable", type=Path, help="a JSON Lines file of {question} no fact answers")
    parser.add_argument("--split", choices=("test", "dev"), default="test",
                        help="test: what results are reported on; dev: for choosing settings (default test)")
    parser.add_argument("--form", choices=FORMS, default="statement",
                        help="statement: the text only; probe: text and its probe; pair: a prompt/response "
                             "demonstration (default statement, what agents mostly observe)")
    parser.add_argument("--rounds", type=int, help="rounds of the stream (quick 2, small 3, full 5)")
    parser.add_argument("--facts-per-round", type=int, help="facts per round (quick 6, small 16, full 24)")
    parser.add_argument("--strategies", nargs="+", choices=tuple(STRATEGIES), help="the strategies to run")
    parser.add_argument("--regimes", nargs="+", choices=REGIMES, help="gated, ungated or both")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help=f"training seeds of {', '.join(SEEDED)} (the other strategies run the first only)")
    parser.add_argument("--model", help="a model name or folder (default: the setting's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a policy setting for every strategy, e.g. consolidation.training.epochs=9 (repeatable)")
    parser.add_argument("--name", help="the run's name: results go to RESULTS/learning-NAME* (default from the options)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="the results folder (default benchmarks/results)")
    parser.add_argument("--resume", action="store_true", help="keep the cells a run of the same configuration saved")
    parser.add_argument("--report-only", action="store_true", help="write the tables and plots from the saved cells")
    parser.add_argument("--no-reuse", action="store_true",
                        help="run an ungated cell even when its gated twin promoted every round (the same run)")
    args = parser.parse_args(argv)

    setting = SETTINGS[args.setting]
    setting = replace(
        setting, rounds=args.rounds or setting.rounds, per_round=args.facts_per_round or setting.per_round,
        strategies=tuple(args.strategies or setting.strategies), regimes=tuple(args.regimes or setting.regimes),
        seeds=tuple(args.seeds or setting.seeds), overrides=setting.overrides + parse_overrides(args.overrides))
    model = args.model or (tiny_model() if setting.model == TINY else setting.model)
    try:
        stream = load_stream(args.stream, data=args.data, split=args.split, rounds=setting.rounds,
                             per_round=setting.per_round, unanswerable=args.unanswerable)
    except ValueError as e:
        parser.error(str(e))
    name = args.name or "-".join(["learning", args.setting] + [v for v, default in (
        (args.stream, "invented"), (args.form, "statement"), (args.split, "test")) if v != default])
    prompts, paragraphs = read_general(setting.general)
    run = Run(name, args.out, stream, args.form, setting, model, prompts=prompts, paragraphs=paragraphs)
    content = hashlib.sha256(json.dumps([[[f.id, f.date.isoformat(), f.question, f.answers, f.statement,
                                             f.paraphrases, f.key] for f in r] for r in stream.rounds]
                                          + [paragraphs, list(stream.unanswerable)]).encode()).hexdigest()[:16]
    run.config = {"version": VERSION, "stream": args.stream, "data": str(args.data) if args.data else None,
                  "split": args.split, "form": args.form, "rounds": [[f.id for f in r] for r in stream.rounds],
                  "content": content,
                  "model": setting.model if args.model is None else args.model, "overrides": setting.overrides,
                  "max_new_tokens": setting.max_new_tokens, "context_tokens": setting.context_tokens,
                  "prompts": prompts, "paragraphs": len(paragraphs), "unanswerable": unanswerable(run)}

    import learning_report

    cells = cells_of(setting)
    if not args.report_only:
        saved = run.out / run.name / "run.json"
        done = {p.stem for p in run.cells_dir.glob("*.json")} if run.cells_dir.is_dir() else set()
        if done and not args.resume:
            parser.error(f"{run.cells_dir} holds {len(done)} saved cell(s): --resume keeps those of the same "
                         "configuration, or give another --name")
        if saved.is_file() and json.loads(saved.read_text())["hash"] != run.config_hash and done:
            parser.error(f"{saved}: saved by a run of another configuration (stream, rounds, model or --set); "
                         "give another --name")
        _write_json(saved, {"hash": run.config_hash, "config": run.config})
        execute(run, cells, resume=args.resume, reuse=not args.no_reuse)
    elif (base := run.out / run.name / "base.json").is_file():
        run.base = json.loads(base.read_text())
    path = learning_report.write(run, cells)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def reused(run: Run, cell: Cell) -> dict | None:
    """An ungated cell whose gated twin (same strategy and seed) promoted every round is that same run: the
    regimes differ only in the gate's verdicts, and training is seeded and deterministic. (`--no-reuse` measures
    it anyway; the quick test checks the two agree.)"""
    if cell.regime != "ungated":
        return None
    path = run.cells_dir / f"{Cell(cell.strategy, 'gated', cell.seed).name}.json"
    if not path.is_file():
        return None
    twin = json.loads(path.read_text())
    if twin.get("config") != run.config_hash or twin.get("version") != VERSION or "error" in twin:
        return None
    if not all(c.get("decision") == "promoted" for r in twin["rounds"] for c in r["consolidation"]):
        return None
    policy = policy_for(STRATEGIES[cell.strategy], cell.regime, cell.seed, run.setting.overrides)
    return {**twin, "cell": asdict(cell), "policy": policy, "same_as": path.stem}


def execute(run: Run, cells: list[Cell], *, resume: bool, reuse: bool = True) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from engramma.memory.embed import SentenceEmbedder

    todo = []
    for cell in cells:
        path = run.cells_dir / f"{cell.name}.json"
        if resume and path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("config") == run.config_hash and saved.get("version") == VERSION and "error" not in saved:
                continue
        todo.append(cell)
    run.embedder = SentenceEmbedder()
    steps = len(todo) * (2 * len(run.stream.rounds) + 2) + 1
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        task = bar.add_task(f"{run.name}: the base model's answers", total=steps)
        run.base = measure_base(run)
        bar.advance(task)

        def progress(what: str) -> None:
            bar.update(task, description=what, advance=1)

        for n, cell in enumerate(todo, 1):
            progress(f"[{n}/{len(todo)}] {cell.name}")
            try:
                result = reused(run, cell) if reuse else None
                if result is not None:
                    bar.advance(task, 2 * len(run.stream.rounds) + 1)
                    print(f"{cell.name}: the same run as {result['same_as']} (every round was promoted)",
                          file=sys.stderr, flush=True)
                else:
                    result = run_cell(run, cell, lambda what: progress(f"[{n}/{len(todo)}] {what}"))
            except Exception:  # the run goes on; --resume tries the cell again
                result = {"cell": asdict(cell), "config": run.config_hash, "version": VERSION,
                          "error": traceback.format_exc()}
                print(f"{cell.name} failed:\n{result['error']}", file=sys.stderr, flush=True)
            _write_json(run.cells_dir / f"{cell.name}.json", result)


if __name__ == "__main__":
    sys.exit(main())

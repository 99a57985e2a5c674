"""Choosing the recipe's defaults on the learning benchmark's training rounds (the dev split), never its test split.

Each configuration is the shipped default preset with a few `--set`-style overrides, as `learning.py` builds
it. One round of dev facts is observed in statement form (what agents mostly observe), consolidated and gated;
the candidate adapter, promoted or not, is then asked every fact's probe wording and its held-out paraphrases
from the weights alone, in the agent's layout. One JSON line per configuration goes to --out.

    python benchmarks/recipe_sweep.py --config "consolidation.training.learning_rate=5e-4" --config "..."
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import yaml  # noqa: E402

from learning import STRATEGIES, parse_overrides, policy_for  # noqa: E402
from learning_data import load_stream  # noqa: E402
from learning_metrics import invented_specifics  # noqa: E402


def run(config: str, facts, unknown, texts, lm, embedder, seed: int, form: str, count) -> dict:
    """One configuration's row. `count`: tokens in a text, for the recalled block's budget."""
    from peft import PeftModel

    from engramma.agents.context import context_block

    from engramma import Memory
    from engramma.updater import augment, consolidate, registry
    from engramma.updater.evaluate import answer_matches, generate
    from engramma.updater.layout import system_message

    overrides = parse_overrides([c for c in config.split(";") if c.strip()])
    policy = policy_for(STRATEGIES["retrieval"], "gated", seed, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        with Memory.open(Path(tmp) / "store", embedder=embedder, policy=path) as mem:
            mem.observe_many([f.item(form) for f in facts])
        started = time.perf_counter()
        [result] = consolidate(Path(tmp) / "store", model=lm, progress=False)
        seconds = time.perf_counter() - started
        model = PeftModel.from_pretrained(lm.model, str(Path(tmp) / "store" / "adapters" / result.version))
        try:
            def accuracy(questions: list[tuple[str, tuple[str, ...]]]) -> float:
                said = generate(model, lm.tokenizer, [q for q, _ in questions], system=system_message(),
                                max_new_tokens=32)
                return sum(any(answer_matches(a, s) for a in answers)
                           for (_, answers), s in zip(questions, said)) / len(questions)

            probe = accuracy([(f.question, f.answers) for f in facts])
            heldout = accuracy([(p, f.answers) for f in facts for p in f.paraphrases])
            # The agent as it would answer with this adapter: recall, then the candidate; and on questions no
            # fact answers, how often it states a number, date, name or price that no item holds.
            with Memory.open(Path(tmp) / "store", embedder=embedder) as mem:
                def recalled(q: str) -> str:
                    return system_message(context_block(mem, q, budget_tokens=300, count_tokens=count))

                asked = [(p, f.answers) for f in facts for p in f.paraphrases]
                systems = [recalled(q) for q, _ in asked] + [recalled(q) for q in unknown]
                known = ["\n".join(texts + [q, s]) for q, s in zip(unknown, systems[len(asked):])]
                rows = {}
                for name, use in (("candidate", model), ("base", None)):
                    context = model.disable_adapter() if use is None else contextlib.nullcontext()
                    with context:
                        said = generate(model, lm.tokenizer, [q for q, _ in asked] + list(unknown), system=systems,
                                        max_new_tokens=48)
                    rows[name] = (sum(any(answer_matches(a, s) for a in answers)
                                      for (_, answers), s in zip(asked, said)) / len(asked),
                                  sum(bool(invented_specifics(s, k)) for s, k in zip(said[len(asked):], known))
                                  / max(1, len(unknown)))
        finally:
            model.unload()
        with Memory.open(Path(tmp) / "store", embedder=embedder) as mem, mem.store.transaction() as con:
            examples = registry.get(con, mem.store.folder, result.version).config.examples
            made = augment.counts(con)
    metrics = result.gate.metrics.to_dict()
    return {"config": config, "seed": seed, "form": form, "facts": len(facts), "decision": result.gate.decision,
            "failed": [c.name for c in result.gate.failed], "probe_accuracy": probe, "heldout_accuracy": heldout,
            "gate_new_accuracy": metrics.get("new_accuracy"), "gate_heldout_accuracy": metrics.get("new_heldout_accuracy"),
            "gate_heldout_items": metrics.get("new_heldout"), "agreement": metrics.get("general_agreement"),
            "perplexity_increase": metrics["perplexity"] / metrics["base_perplexity"] - 1,
            "agent_heldout_accuracy": rows["candidate"][0], "base_agent_heldout_accuracy": rows["base"][0],
            "invented_rate": rows["candidate"][1], "base_invented_rate": rows["base"][1], "unanswerable": len(unknown),
            "examples": examples, "pairs": made, "tokens": result.report.tokens, "train_s": result.report.wall_s, "consolidate_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=[], help="overrides, KEY=VALUE joined by ';' "
                        "('' is the shipped defaults); repeatable")
    parser.add_argument("--facts", type=int, default=24, help="dev facts in the round (default 24)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--form", default="statement", choices=["statement", "probe"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recipe-sweep.jsonl")
    args = parser.parse_args()

    from engramma.memory.embed import SentenceEmbedder
    from engramma.updater import load_model

    stream = load_stream("invented", data=None, split="dev", rounds=1, per_round=args.facts)
    facts = list(stream.rounds[0])
    lm, embedder = load_model(), SentenceEmbedder()

    def count(text: str) -> int:
        return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    for config in args.config or [""]:
        row = run(config, facts, stream.unanswerable, list(stream.texts), lm, embedder, args.seed, args.form, count)
        print(json.dumps(row), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

"""LoCoMo with engramma: long conversations ingested session by session, questions answered three ways.

    python examples/locomo.py --data ../shared/datasets/locomo/locomo10.json [--conversations 1] [--questions 40]

For each conversation, an agent observes every turn, session by session, into its own store (each turn a
conversation item dated by its session, its dialogue id kept in meta). Then each question (categories 1-4:
single-hop, temporal, open-domain, multi-hop; category 5, adversarial, is left out by default) is answered by
the language model three ways:

  recall              the top-k recalled turns in the prompt, base model;
  recall + adapters   the same, with the LoRA adapters consolidated from the conversation's turns;
  full context        the whole conversation when it fits in --context-tokens, else its latest turns that do.

Reported per category: token F1 of the answer against the gold one (the dataset's usual score) and whether the
gold answer appears in it; and the recall of evidence turns (the share of a question's evidence dialogue ids
among the recalled turns). The data is read from --data and never copied into the project (CC BY-NC 4.0).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

from engramma import Item, Memory
from engramma.updater import ActiveAdapters, consolidate, load_model
from engramma.updater.dataset import normalise
from engramma.updater.evaluate import generate

console = Console(width=max(110, Console().width))
CATEGORIES = {1: "single-hop", 2: "temporal", 3: "open-domain", 4: "multi-hop", 5: "adversarial"}
POLICY = """\
version: 1
name: locomo-agent
rules:
  - {name: turns, when: {kind: [conversation]}, route: both, train_scope: own}
default: index
model: {name: MODEL, max_length: 128}
consolidation:
  replay: retrieval
  min_items: 1
  lora: {rank: 16, alpha: 32, dropout: 0.0}
  training: {learning_rate: 5.0e-4, epochs: 2, batch_size: 16, warmup_ratio: 0.05}
gate: {min_new_accuracy: 0.0, max_perplexity_increase: 0.25}
"""
SYSTEM = ("You answer questions about a conversation between friends, using the excerpts given. Answer with a "
          "short phrase.")


def session_time(text: str) -> datetime:
    """'1:56 pm on 8 May, 2023' -> a UTC datetime."""
    return datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=timezone.utc)


def turns_of(conversation: dict) -> list[tuple[int, datetime, dict]]:
    sessions = sorted(int(m.group(1)) for key in conversation if (m := re.fullmatch(r"session_(\d+)", key)))
    out = []
    for n in sessions:
        when = session_time(conversation[f"session_{n}_date_time"])
        out += [(n, when, turn) for turn in conversation[f"session_{n}"]]
    return out


def turn_text(turn: dict) -> str:
    text = f"{turn['speaker']}: {turn['text']}"
    if turn.get("blip_caption"):
        text += f" [shares a photo: {turn['blip_caption']}]"
    return text


def f1(prediction: str, gold: str) -> float:
    p, g = normalise(prediction).split(), normalise(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g or not common:
        return float(p == g)
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="path of locomo10.json")
    parser.add_argument("--conversations", type=int, default=1, help="how many conversations (of 10)")
    parser.add_argument("--questions", type=int, default=40, help="questions per conversation (0: all)")
    parser.add_argument("--categories", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--k", type=int, default=8, help="turns recalled per question")
    parser.add_argument("--context-tokens", type=int, default=2048, help="window for the full-context setting")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--store", type=Path, help="folder for the stores (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write every answer and score here")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"locomo.py: error: --data {args.data}: no such file (it is locomo10.json from LoCoMo)")
    data = json.loads(args.data.read_text())[: args.conversations]
    root = args.store or Path(tempfile.mkdtemp(prefix="engramma-locomo-"))
    root.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model)
    tokens = lambda text: len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731

    scores: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    contained: dict[str, dict[int, list[bool]]] = defaultdict(lambda: defaultdict(list))
    evidence_recall: dict[int, list[float]] = defaultdict(list)
    fitted = asked = 0
    log = []
    started = time.perf_counter()
    for conv in data:
        sample = conv["sample_id"]
        policy = root / f"{sample}.yaml"
        policy.write_text(POLICY.replace("MODEL", args.model))
        turns = turns_of(conv["conversation"])
        scope = f"agent:{sample}"
        with Memory.open(root / sample, policy=policy) as mem:
            by_session: dict[int, list[Item]] = defaultdict(list)
            for n, when, turn in turns:
                by_session[n].append(Item(text=turn_text(turn), kind="conversation", scope=scope, source="chat",
                                          ts=when, meta={"dia_id": turn["dia_id"]}))
            with console.status(f"{sample}: observing {len(turns)} turns in {len(by_session)} sessions"):
                for n in sorted(by_session):
                    mem.observe_many(by_session[n])
            console.print(f"{sample}: {len(turns)} turns, {len(by_session)} sessions observed; consolidating them")
            results = consolidate(root / sample, model=lm, progress=True)
            for r in results:
                console.print(f"  {r.train_scope}: {r.version} {r.gate.decision if r.gate else r.status} "
                              f"({r.items_new} turns, {r.report.steps if r.report else 0} steps)")
            questions = [q for q in conv["qa"] if q["category"] in args.categories]
            questions = questions[: args.questions] if args.questions else questions
            hits = mem.recall_many([q["question"] for q in questions], k=args.k, scope=scope)
            contexts = []
            for q, found in zip(questions, hits):
                dia = {h.item.meta.get("dia_id") for h in found}
                if q.get("evidence"):
                    evidence_recall[q["category"]].append(sum(e in dia for e in q["evidence"]) / len(q["evidence"]))
                contexts.append("\n".join(h.text for h in sorted(found, key=lambda h: h.item.ts)))
            whole = "\n".join(turn_text(t) for _, _, t in turns)
            fits = tokens(whole) <= args.context_tokens
            latest: list[str] = []
            budget = args.context_tokens
            for _, _, turn in reversed(turns):
                budget -= tokens(turn_text(turn)) + 1
                if budget < 0:
                    break
                latest.insert(0, turn_text(turn))
            full = whole if fits else "\n".join(latest)

            adapters = ActiveAdapters(lm, root / sample, scope=scope)
            settings = {"recall": (lm.model, contexts), "full context": (lm.model, [full] * len(questions))}
            answers = {}
            for name, (model, ctx) in settings.items():
                answers[name] = _answer(model, lm.tokenizer, questions, ctx, name)
            adapters.refresh()
            answers["recall + adapters"] = _answer(adapters.model, lm.tokenizer, questions, contexts,
                                                   "recall + adapters")
            if adapters.loaded:
                adapters.model.unload()
            asked += len(questions)
            fitted += len(questions) if fits else 0
            for n, q in enumerate(questions):
                gold = str(q.get("answer", q.get("adversarial_answer", "")))
                row = {"sample": sample, "question": q["question"], "gold": gold, "category": q["category"]}
                for name, said in answers.items():
                    scores[name][q["category"]].append(f1(said[n], gold))
                    contained[name][q["category"]].append(bool(normalise(gold)) and normalise(gold) in normalise(said[n]))
                    row[name] = said[n]
                log.append(row)

    table = Table(title=f"LoCoMo: {asked} questions from {len(data)} conversation(s), {lm.model_id}",
                  title_justify="left")
    table.add_column("category")
    table.add_column("n", justify="right")
    table.add_column("evidence recall@k", justify="right")
    for name in scores:
        table.add_column(f"{name}: F1 / contains", justify="right")
    for cat in sorted({c for s in scores.values() for c in s}):
        n = len(scores["recall"][cat])
        cells = [f"{sum(scores[name][cat]) / n:.2f} / {sum(contained[name][cat]) / n:.0%}" for name in scores]
        ev = evidence_recall.get(cat, [])
        table.add_row(f"{cat} {CATEGORIES[cat]}", str(n), f"{sum(ev) / len(ev):.0%}" if ev else "-", *cells)
    all_n = sum(len(v) for v in scores["recall"].values())
    overall = [f"{sum(sum(v) for v in scores[name].values()) / all_n:.2f} / "
               f"{sum(sum(v) for v in contained[name].values()) / all_n:.0%}" for name in scores]
    ev_all = [x for v in evidence_recall.values() for x in v]
    table.add_row("all", str(all_n), f"{sum(ev_all) / max(1, len(ev_all)):.0%}", *overall)
    console.print(table)
    console.print(f"full context: the whole conversation fitted in {args.context_tokens} tokens for {fitted} of "
                  f"{asked} questions; otherwise its latest turns that fit were given. k = {args.k} recalled turns. "
                  f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(log, indent=1))


def _answer(model, tokenizer, questions: list[dict], contexts: list[str], label: str) -> list[str]:
    with console.status(f"answering {len(questions)} questions: {label}"):
        out = []
        for q, context in zip(questions, contexts):  # one at a time: contexts differ a lot in length
            system = f"{SYSTEM}\n\nExcerpts:\n{context}"
            out += generate(model, tokenizer, [q["question"]], system=system, max_new_tokens=24, batch_size=1)
        return out


if __name__ == "__main__":
    main()

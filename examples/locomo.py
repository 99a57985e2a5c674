"""LoCoMo with engramma: long conversations ingested session by session, questions answered three ways.

    python examples/locomo.py --data ../shared/datasets/locomo/locomo10.json [--conversations 1] [--questions 40]

For each conversation an agent observes every turn, session by session, into its own store (each turn a
`conversation` item dated by its session, its dialogue id kept in meta), and runs the consolidation job every
`--consolidate-every` sessions and after the last one, as a long-running agent's periodic job would (a LoCoMo
session is a day of the friends' lives, so 1 is a nightly job). Then each question is answered by the language
model, greedily, three ways:

  recall              the top-k recalled turns in the prompt, base model;
  recall + adapters   the same turns, with the LoRA adapters the consolidation rounds promoted;
  full context (fits) the whole conversation when it fits in the model's window (--context-tokens), else
  / recent window     its latest turns that fit: the output names which one each conversation got.

Scores follow LoCoMo's own evaluator (snap-research/LoCoMo, task_eval/evaluation.py): answers and gold are
normalised (lower case; punctuation, commas and the words a/an/the/and removed), tokens are Porter-stemmed
(when nltk is installed; the output says), and
  1 multi-hop      the mean, over the comma-separated parts of the gold answer, of the best token F1 against
                   any comma-separated part of the answer;
  2 temporal, 4 single-hop   token F1;
  3 open-domain    token F1 against the gold answer's part before its first ';' (the rest is a rationale);
  5 adversarial    scored, not left out: the question asks about something the conversation never says (its
                   `adversarial_answer` is the trap, never the gold), so the answer scores 1 when it declines
                   ("not mentioned" / "no information available" in it) and 0 otherwise. The model is told to
                   answer "not mentioned" when the excerpts do not say, for every question alike.
Also reported: the share of answers that contain the normalised gold answer (declined, for category 5), the
evidence recall of the k recalled turns (the share of a question's evidence dialogue ids among them, with the
file's malformed ids normalised), and the share of evidence turns inside the full-context / recent window.

The data is read from --data and never copied into the project (CC BY-NC 4.0). Uses engramma's public API only.
On 2 shared CPU cores, `--sessions 10 --questions 40 --threads 1` takes ~15 minutes (benchmarks/LOCOMO.md).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import string
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

from rich.console import Console
from rich.table import Table

from engramma import Item, Memory
from engramma.updater import DEFAULT_MODEL, ActiveAdapters, consolidate, load_model

console = Console(width=max(120, Console().width))

# LoCoMo's category ids, as its own evaluator names them. Checked on locomo10.json: category 1 questions cite
# ~3.1 evidence turns on average (multi-hop), category 4 ~1.07 (single-hop).
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
ADVERSARIAL = 5
DECLINES = ("not mentioned", "no information available")  # LoCoMo's evaluator accepts either for category 5
SETTINGS = ("recall", "recall + adapters", "full context")
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
SYSTEM = ("You answer questions about a long conversation between two friends, using the excerpts given; each "
          "excerpt is dated by the day its session took place. Answer with a short phrase. If the excerpts do not "
          "say, answer: not mentioned.")


# -- the data ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    session: int
    when: datetime
    dia_id: str  # normalised: D<session>:<turn>
    text: str  # "Speaker: what they said [shares a photo: caption]"


@dataclass(frozen=True, slots=True)
class Session:
    number: int
    when: datetime
    turns: tuple[Turn, ...]


def session_time(text: str) -> datetime:
    """'1:56 pm on 8 May, 2023' -> a UTC datetime."""
    return datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=timezone.utc)


def day(when: datetime) -> str:
    return f"{when.day} {when:%B %Y}"


def turn_text(turn: dict) -> str:
    text = f"{turn['speaker']}: {turn['text']}"
    if turn.get("blip_caption"):
        text += f" [shares a photo: {turn['blip_caption']}]"
    return text


def sessions_of(conversation: dict) -> list[Session]:
    """The non-empty sessions of a LoCoMo `conversation` dict, in order (session_N keys, N numeric)."""
    numbers = sorted(int(m.group(1)) for key in conversation if (m := re.fullmatch(r"session_(\d+)", key)))
    out = []
    for n in numbers:
        if not conversation[f"session_{n}"]:
            continue
        when = session_time(conversation[f"session_{n}_date_time"])
        turns = tuple(Turn(n, when, dia_id(t["dia_id"]) or t["dia_id"], turn_text(t))
                      for t in conversation[f"session_{n}"])
        out.append(Session(n, when, turns))
    return out


_DIA_ID = re.compile(r"D:?(\d+):(\d+)")  # 'D:11:26' occurs once in the file: a stray colon, same id


def dia_id(raw: str) -> str | None:
    """One dialogue id normalised ('D30:05' -> 'D30:5'), or None when it cannot be read ('D')."""
    m = _DIA_ID.fullmatch(raw.strip())
    return f"D{int(m.group(1))}:{int(m.group(2))}" if m else None


def evidence_ids(evidence: Sequence[str]) -> list[str]:
    """A question's evidence ids, normalised: entries holding several ids ('D8:6; D9:17', 'D9:1 D4:4') are split
    on semicolons and spaces, unreadable parts are skipped, repeats kept once, order kept."""
    out: dict[str, None] = {}
    for entry in evidence:
        for part in re.split(r"[;\s]+", str(entry)):
            if part and (normalised := dia_id(part)) is not None:
                out[normalised] = None
    return list(out)


def gold_answer(question: dict) -> str | None:
    """The answer scored against; None for category 5 (the right answer is to decline)."""
    if question["category"] == ADVERSARIAL:
        return None
    return str(question["answer"])


def pick_questions(qa: Sequence[dict], categories: Sequence[int], limit: int,
                   sessions: set[int] | None = None) -> list[dict]:
    """Up to `limit` questions (0: all) of the given categories, taken in turn from each category in file order
    (the file groups questions by category, so its first N would be mostly one or two kinds). With `sessions`,
    only questions whose evidence all lies in those sessions (and that name readable evidence)."""
    pools: dict[int, list[dict]] = {c: [] for c in categories}
    for q in qa:
        if q["category"] not in pools:
            continue
        if sessions is not None:
            ids = evidence_ids(q.get("evidence", []))
            if not ids or any(int(e[1:].split(":")[0]) not in sessions for e in ids):
                continue
        pools[q["category"]].append(q)
    picked: list[dict] = []
    while any(pools.values()) and (not limit or len(picked) < limit):
        for c in categories:
            if pools[c] and (not limit or len(picked) < limit):
                picked.append(pools[c].pop(0))
    return sorted(picked, key=lambda q: qa.index(q))


# -- scores (LoCoMo's evaluator, see the module docstring) ------------------------------------------------


def _stemmer() -> Callable[[str], str]:
    try:
        from nltk.stem import PorterStemmer
    except ImportError:  # nltk is not an engramma dependency: unstemmed tokens, and the output says so
        return lambda word: word
    return PorterStemmer().stem


stem = _stemmer()
STEMMED = stem("answers") != "answers"


def normalise_answer(text: str) -> str:
    text = text.replace(",", "").lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the|and)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    predicted = [stem(w) for w in normalise_answer(prediction).split()]
    wanted = [stem(w) for w in normalise_answer(gold).split()]
    common = sum(min(predicted.count(w), wanted.count(w)) for w in set(wanted))
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def multi_answer_f1(prediction: str, gold: str) -> float:
    """Category 1: each comma-separated part of the gold answer against its best match among the answer's."""
    answers = [p.strip() for p in prediction.split(",")]
    golds = [g.strip() for g in gold.split(",")]
    return sum(max(token_f1(a, g) for a in answers) for g in golds) / len(golds)


def declines(prediction: str) -> bool:
    said = prediction.lower()
    return any(phrase in said for phrase in DECLINES)


def score(category: int, prediction: str, gold: str | None) -> float:
    if category == ADVERSARIAL:
        return float(declines(prediction))
    assert gold is not None
    if category == 1:
        return multi_answer_f1(prediction, gold)
    if category == 3:
        return token_f1(prediction, gold.split(";")[0].strip())
    return token_f1(prediction, gold)


def contains(category: int, prediction: str, gold: str | None) -> bool:
    """The lenient check: the normalised gold answer appears in the normalised answer (declined, category 5)."""
    if category == ADVERSARIAL:
        return declines(prediction)
    assert gold is not None
    if category == 3:
        gold = gold.split(";")[0]
    want = normalise_answer(gold)
    return bool(want) and f" {want} " in f" {normalise_answer(prediction)} "


# -- contexts ----------------------------------------------------------------------------------------------


def _order(dia: str) -> tuple[int, int]:
    session, turn = dia[1:].split(":")
    return int(session), int(turn)


def recalled_context(turns: Sequence[Turn]) -> str:
    """Recalled turns in conversation order, each dated by its session."""
    return "\n".join(f"[{day(t.when)}] {t.text}" for t in sorted(turns, key=lambda t: _order(t.dia_id)))


def session_header(session: Session) -> str:
    return f"Session {session.number}, {day(session.when)}:"


def conversation_window(sessions: Sequence[Session], budget: int, count: Callable[[str], int]
                        ) -> tuple[str, set[str], bool]:
    """The whole conversation when it fits in `budget` tokens, else its latest turns that do (each session's
    turns under a header line with its date). Returns (text, dialogue ids shown, whether it all fitted)."""
    blocks = [(session_header(s), list(s.turns)) for s in sessions]
    text = _render(blocks)
    if count(text) <= budget:
        return text, {t.dia_id for s in sessions for t in s.turns}, True
    kept: list[tuple[str, list[Turn]]] = []
    left = budget
    for header, turns in reversed(blocks):  # newest first, each line's tokens counted with its newline
        left -= count(header) + 1
        taken: list[Turn] = []
        for t in reversed(turns):
            left -= count(t.text) + 1
            if left < 0:
                break
            taken.insert(0, t)
        if taken:
            kept.insert(0, (header, taken))
        if left < 0:
            break
    text = _render(kept)
    while kept and count(text) > budget:  # tokens at line joins can differ from the sum: drop the oldest turns
        kept[0][1].pop(0)
        if not kept[0][1]:
            kept.pop(0)
        text = _render(kept)
    return text, {t.dia_id for _, turns in kept for t in turns}, False


def _render(blocks: Sequence[tuple[str, Sequence[Turn]]]) -> str:
    return "\n".join(line for header, turns in blocks for line in (header, *(t.text for t in turns)))


# -- answering ---------------------------------------------------------------------------------------------


def _chat_ids(tokenizer, context: str, question: str) -> list[int]:
    system = f"{SYSTEM}\n\nExcerpts:\n{context}" if context else SYSTEM
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def shared_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all `sequences` share, leaving each at least one token past it (generation must
    read one new token to start)."""
    length = min(len(seq) for seq in sequences) - 1
    first = sequences[0]
    for seq in sequences[1:]:
        length = next((i for i in range(length) if seq[i] != first[i]), length)
    return max(0, length)


def answer_all(model, tokenizer, asks: Sequence[tuple[str, str]], *, max_new_tokens: int, label: str) -> list[str]:
    """Greedy answers to (context, question) pairs. Pairs sharing a context reuse its prefilled key/value cache,
    so the long full-context prompt is read once per conversation, not once per question."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [_chat_ids(tokenizer, context, question) for context, question in asks]
    groups: dict[str, list[int]] = defaultdict(list)
    for n, (context, _) in enumerate(asks):
        groups[context].append(n)
    out: list[str] = [""] * len(asks)
    model.eval()
    with console.status(f"answering {len(asks)} questions: {label}"), torch.inference_mode():
        for members in groups.values():
            cached = shared_prefix([prompts[n] for n in members]) if len(members) > 1 else 0
            cache = None
            if cached:
                first = prompts[members[0]]
                cache = model(input_ids=torch.tensor([first[:cached]], device=device), use_cache=True).past_key_values
            for n in members:
                ids = torch.tensor([prompts[n]], device=device)
                extra = {"past_key_values": copy.deepcopy(cache)} if cache is not None else {}
                generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=max_new_tokens, pad_token_id=pad, **extra)
                out[n] = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True).strip()
    return out


# -- the run -----------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Everything measured, per setting and category."""

    scores: dict[str, dict[int, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    contained: dict[str, dict[int, list[bool]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    evidence_recall: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    evidence_window: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    full_kind: dict[str, str] = field(default_factory=dict)  # conversation -> "full context (fits)" | "recent window"
    window_fill: dict[str, str] = field(default_factory=dict)  # conversation -> its size and what the window held
    rounds: list[dict] = field(default_factory=list)  # consolidation rounds
    log: list[dict] = field(default_factory=list)  # one row per question
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # wall time per phase

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started


def model_window(lm) -> int:
    """The model's context length (its config's max_position_embeddings; SmolLM2-135M: 8192)."""
    limits = [getattr(lm.model.config, "max_position_embeddings", None),
              getattr(lm.tokenizer, "model_max_length", None)]
    return min(x for x in limits if isinstance(x, int) and 0 < x < 10**7)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="path of LoCoMo's locomo10.json (read, never copied)")
    parser.add_argument("--conversations", type=int, default=1, metavar="N",
                        help="how many conversations, from the first (of 10; default %(default)s)")
    parser.add_argument("--sessions", type=int, default=0, metavar="N",
                        help="ingest only each conversation's first N sessions and ask only questions whose evidence "
                             "lies in them (default 0: all sessions)")
    parser.add_argument("--questions", type=int, default=40, metavar="N",
                        help="questions per conversation, taken in turn from each category "
                             "(default %(default)s; 0: all)")
    parser.add_argument("--categories", type=int, nargs="+", default=[1, 2, 3, 4, 5], choices=sorted(CATEGORIES),
                        help="question categories (default: all): "
                             + ", ".join(f"{k} {v}" for k, v in CATEGORIES.items()))
    parser.add_argument("--k", type=int, default=8, help="turns recalled per question (default %(default)s)")
    parser.add_argument("--consolidate-every", type=int, default=5, metavar="N",
                        help="run the consolidation job after every N sessions and after the last one (1: nightly, "
                             "a session being a day; 0: once, after the last session; default %(default)s)")
    parser.add_argument("--context-tokens", type=int, default=0, metavar="N",
                        help="the prompt window of the full-context setting, answer included (0: the model's own "
                             "context length, 8192 for SmolLM2-135M; less runs faster on a CPU; default 0)")
    parser.add_argument("--max-new-tokens", type=int, default=24, metavar="N",
                        help="longest answer generated, in tokens (default %(default)s)")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="torch CPU threads (default 0: torch's own choice); 1 is much faster on a CPU shared with "
                             "other work")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="language model: the bundled default (%(default)s), a local hub id or a folder")
    parser.add_argument("--store", type=Path, help="folder for the stores (default: a new temporary one)")
    parser.add_argument("--json", type=Path, help="write every question, answer and score to this file")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("conversations", "k", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be at least 1")
    for name in ("sessions", "questions", "consolidate_every", "context_tokens", "threads"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')}: must be 0 or more")
    return args


def consolidation_points(numbers: Sequence[int], every: int) -> set[int]:
    """The sessions after which the job runs: every `every`-th one, and the last."""
    points = {n for i, n in enumerate(numbers, 1) if every and i % every == 0}
    return points | ({numbers[-1]} if numbers else set())


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.data.is_file():
        sys.exit(f"locomo.py: error: --data {args.data}: no such file (it is locomo10.json from LoCoMo)")
    data = json.loads(args.data.read_text())[: args.conversations]
    root = args.store or Path(tempfile.mkdtemp(prefix="engramma-locomo-"))
    root.mkdir(parents=True, exist_ok=True)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tally = Tally()
    with tally.timed("load model"), console.status(f"loading {args.model}"):
        lm = load_model(args.model)
    window = args.context_tokens or model_window(lm)
    count = lambda text: len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    for conv in data:
        run_conversation(conv, args, lm, root, window, count, tally)
    if not tally.log:
        sys.exit("locomo.py: no questions were asked")
    report(args, tally, model_id=lm.model_id, window=window, threads=torch.get_num_threads(),
           wall=time.perf_counter() - started)
    if args.json:
        args.json.write_text(json.dumps({"rounds": tally.rounds, "seconds": tally.seconds, "answers": tally.log},
                                        indent=1, default=str))


def run_conversation(conv: dict, args: argparse.Namespace, lm, root: Path, window: int,
                     count: Callable[[str], int], tally: Tally) -> None:
    """One conversation: observe it session by session with periodic consolidation, then ask its questions."""
    sample = conv["sample_id"]
    sessions = sessions_of(conv["conversation"])
    if args.sessions:
        sessions = sessions[: args.sessions]
    numbers = [s.number for s in sessions]
    questions = pick_questions(conv["qa"], args.categories, args.questions, set(numbers) if args.sessions else None)
    if not questions:
        console.print(f"{sample}: no questions of categories {args.categories} in these sessions; skipped")
        return
    policy = root / f"{sample}.yaml"
    policy.write_text(POLICY.replace("MODEL", args.model))
    scope = f"agent:{sample}"
    points = consolidation_points(numbers, args.consolidate_every)
    with Memory.open(root / sample, policy=policy) as mem:
        for s in sessions:
            with tally.timed("observe"), console.status(f"{sample}: session {s.number}: observing"):
                mem.observe_many([Item(text=t.text, kind="conversation", scope=scope, source="chat", ts=t.when,
                                       meta={"dia_id": t.dia_id, "session": t.session}) for t in s.turns])
            if s.number in points:
                with tally.timed("consolidate"):
                    _consolidate(root / sample, lm, sample, s.number, tally)

        with tally.timed("recall"):
            hits = mem.recall_many([q["question"] for q in questions], k=args.k, scope=scope)
        by_id = {t.dia_id: t for s in sessions for t in s.turns}
        recalled = []
        for q, found in zip(questions, hits):
            ids = {h.item.meta.get("dia_id") for h in found}
            recalled.append(recalled_context([by_id[i] for i in ids if i in by_id]))
            if evidence := evidence_ids(q.get("evidence", [])):
                tally.evidence_recall[q["category"]].append(sum(e in ids for e in evidence) / len(evidence))

    # Room for the instruction, the longest question and the answer; the rest is the conversation's.
    reserve = max(len(_chat_ids(lm.tokenizer, "", q["question"])) for q in questions) + args.max_new_tokens + 8
    full, shown, fits = conversation_window(sessions, window - reserve, count)
    tally.full_kind[sample] = "full context (fits)" if fits else "recent window"
    turns = sum(len(s.turns) for s in sessions)
    tally.window_fill[sample] = (f"conversation {count(_render([(session_header(s), s.turns) for s in sessions]))} "
                                 f"tokens, {len(shown)} of its {turns} turns shown")
    for q in questions:
        if evidence := evidence_ids(q.get("evidence", [])):
            tally.evidence_window[q["category"]].append(sum(e in shown for e in evidence) / len(evidence))

    asks = [q["question"] for q in questions]
    answers: dict[str, list[str]] = {}
    for name, contexts in (("recall", recalled), ("full context", [full] * len(asks))):
        with tally.timed(f"answer: {name}"):
            answers[name] = answer_all(lm.model, lm.tokenizer, list(zip(contexts, asks)),
                                       max_new_tokens=args.max_new_tokens, label=name)
    adapters = ActiveAdapters(lm, root / sample, scope=scope)  # wraps lm.model: the base answers come first
    adapters.refresh()
    if adapters.loaded:
        with tally.timed("answer: recall + adapters"):
            answers["recall + adapters"] = answer_all(adapters.model, lm.tokenizer, list(zip(recalled, asks)),
                                                      max_new_tokens=args.max_new_tokens, label="recall + adapters")
        adapters.model.unload()  # the next conversation starts from the base model
    else:
        console.print(f"{sample}: no adapter was promoted; recall + adapters is recall")
        answers["recall + adapters"] = answers["recall"]
    for n, q in enumerate(questions):
        gold, cat = gold_answer(q), q["category"]
        row = {"sample": sample, "category": cat, "question": q["question"], "gold": gold,
               "evidence": evidence_ids(q.get("evidence", [])), "adapters": adapters.versions}
        for name in SETTINGS:
            said = answers[name][n]
            tally.scores[name][cat].append(score(cat, said, gold))
            tally.contained[name][cat].append(contains(cat, said, gold))
            row[name] = {"answer": said, "score": tally.scores[name][cat][-1]}
        tally.log.append(row)


def _consolidate(store: Path, lm, sample: str, session: int, tally: Tally) -> None:
    """One run of the consolidation job, as the agent's periodic trigger would start it."""
    t0 = time.perf_counter()
    for r in consolidate(store, model=lm, progress=True):
        done = {"sample": sample, "after_session": session, "version": r.version,
                "decision": r.gate.decision if r.gate else r.status, "new": r.items_new, "replayed": r.items_replayed,
                "steps": r.report.steps if r.report else 0, "wall_s": round(time.perf_counter() - t0, 1),
                "failed": [c.detail for c in r.gate.failed] if r.gate else []}
        tally.rounds.append(done)
        failed = f"; failed: {'; '.join(done['failed'])}" if done["failed"] else ""
        console.print(f"{sample}: after session {session}: {done['version'] or '-'} {done['decision']} "
                      f"({done['new']} new turns, {done['replayed']} replayed, {done['steps']} steps, "
                      f"{done['wall_s']:.0f} s){failed}")


def paired_difference(base: Sequence[float], other: Sequence[float]) -> tuple[float, float]:
    """Mean of `other - base` over the same questions, and the half width of its 95% normal interval: how far
    apart two settings are, and how much of that a sample this small can tell."""
    diffs = [b - a for a, b in zip(base, other)]
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return mean, float("inf")
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, 1.96 * (variance / len(diffs)) ** 0.5


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _cell(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.0%}" if percent else f"{value:.3f}"


def report(args: argparse.Namespace, tally: Tally, *, model_id: str, window: int, threads: int, wall: float) -> None:
    log, scores, contained, rounds = tally.log, tally.scores, tally.contained, tally.rounds
    evidence_recall, evidence_window, full_kind = tally.evidence_recall, tally.evidence_window, tally.full_kind
    kinds = sorted(set(full_kind.values()))
    full_name = " / ".join(kinds)
    names = {"recall": "recall", "recall + adapters": "recall + adapters", "full context": full_name}
    cats = sorted({row["category"] for row in log})
    samples = sorted({row["sample"] for row in log})
    table = Table(title=f"LoCoMo, score per category (LoCoMo's F1; category 5: declined): {len(log)} questions from "
                        f"{', '.join(samples)}, {model_id}", title_justify="left")
    table.add_column("category")
    table.add_column("n", justify="right")
    for name in SETTINGS:
        table.add_column(names[name], justify="right")
    table.add_column(f"evidence recall@{args.k}", justify="right")
    table.add_column("evidence in window", justify="right")
    for cat in cats:
        table.add_row(f"{cat} {CATEGORIES[cat]}", str(len(scores["recall"][cat])),
                      *(_cell(_mean(scores[name][cat])) for name in SETTINGS),
                      _cell(_mean(evidence_recall.get(cat, [])), True),
                      _cell(_mean(evidence_window.get(cat, [])), True))
    flat = lambda per_cat: [x for cat in cats for x in per_cat.get(cat, [])]  # noqa: E731
    table.add_row("all", str(len(log)), *(_cell(_mean(flat(scores[name]))) for name in SETTINGS),
                  _cell(_mean(flat(evidence_recall)), True), _cell(_mean(flat(evidence_window)), True),
                  end_section=True)
    if len(cats) > 1 and ADVERSARIAL in cats:
        answerable = [c for c in cats if c != ADVERSARIAL]
        table.add_row("1-4", str(sum(len(scores["recall"][c]) for c in answerable)),
                      *(_cell(_mean([x for c in answerable for x in scores[name][c]])) for name in SETTINGS), "", "")
    console.print(table)

    lenient = Table(title="Answers containing the gold answer (category 5: declined)", title_justify="left")
    lenient.add_column("category")
    for name in SETTINGS:
        lenient.add_column(names[name], justify="right")
    lenient.add_column("declined (3 settings pooled)", justify="right")
    for cat in cats:
        declined = [declines(row[name]["answer"]) for row in log if row["category"] == cat for name in SETTINGS]
        lenient.add_row(f"{cat} {CATEGORIES[cat]}", *(_cell(_mean(contained[name][cat]), True) for name in SETTINGS),
                        _cell(_mean(declined), True))
    console.print(lenient)

    base = [row["recall"]["score"] for row in log]
    console.print("against recall, on the same questions (mean paired difference of the score, 95% interval): "
                  + "; ".join(f"{names[name]} {d:+.3f} ± {h:.3f}" for name in SETTINGS[1:]
                              for d, h in [paired_difference(base, [row[name]["score"] for row in log])]))
    promoted = [r for r in rounds if r["decision"] == "promoted"]
    console.print(
        f"full context: a window of {window} tokens (answer included); per conversation: "
        + ", ".join(f"{s} {k} ({tally.window_fill[s]})" for s, k in full_kind.items()) + ". "
        f"recall: k = {args.k} turns. consolidation "
        + (f"after every {args.consolidate_every} session(s) and the last" if args.consolidate_every
           else "once, after the last session")
        + f": {len(rounds)} round(s), {len(promoted)} promoted"
        + (f" ({', '.join(sorted({r['decision'] for r in rounds if r['decision'] != 'promoted'}))} otherwise)"
           if len(promoted) < len(rounds) else "") + ". "
        f"tokens {'Porter-stemmed (nltk)' if STEMMED else 'not stemmed (nltk missing)'}; greedy answers of at most "
        f"{args.max_new_tokens} tokens; torch threads {threads}. "
        f"Wall time {wall:.0f} s: " + ", ".join(f"{phase} {s:.0f} s" for phase, s in tally.seconds.items()) + ".")


if __name__ == "__main__":
    main()

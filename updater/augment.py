"""Knowledge augmentation: each item queued for training becomes several question-answer pairs in varied wording.

A model fine-tuned on one wording of a fact memorises that text and often cannot answer when asked another way;
shown the fact under many questions, it learns the fact (Allen-Zhu & Li, Physics of Language Models 3.1;
Ovadia et al., EMNLP 2024). The pairs come from the item itself (its probe, its key) and from the base model,
asked in a few-shot prompt to write questions the item answers; a statement with no probe thus gets questions
to be trained and judged on. A generated pair is kept only when it is
consistent with the item: its answer is a span of the item's text, and its question neither contains that
answer nor repeats another question. One kept question per item is held out of training, so the gate can ask
a wording the adapter never saw.

Pairs are made once, when a consolidation job plans, and stored beside the item (`augmentations`); `forget`
erases them with the item.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from engramma.types import Item
from engramma.updater.dataset import normalise

# Sources of a pair, in the order an item's pairs are numbered.
STATEMENT, PROBE, KEY, GENERATED = "statement", "probe", "key", "generated"

# Few-shot examples for the question writer: invented facts, each with questions whose answers are spans of it.
SHOTS = (
    "Statement: The Harbour Museum opens at 10 am on Sundays.\n"
    "Q: When does the Harbour Museum open on Sundays?\nA: 10 am\n"
    "Q: On which day does the Harbour Museum open at 10 am?\nA: Sundays\n"
    "Q: Which museum opens at 10 am on Sundays?\nA: The Harbour Museum\n\n"
    "Statement: Dr. Mira Patel leads the Oslo robotics lab, which has 14 engineers.\n"
    "Q: Who leads the Oslo robotics lab?\nA: Dr. Mira Patel\n"
    "Q: How many engineers work in the Oslo robotics lab?\nA: 14\n"
    "Q: Which lab does Dr. Mira Patel lead?\nA: the Oslo robotics lab\n\n"
)
# Each generated question starts with one of these words: greedy decoding then gives varied questions, and the
# same ones on every run.
OPENINGS = ("What", "Who", "Which", "How", "When", "Where")
MAX_ANSWER_WORDS = 10


@dataclass(frozen=True, slots=True)
class Pair:
    """One training or evaluation pair of an item. `question` None: the statement itself, as plain text.
    `answer`: what a right reply contains (a span of the item's text, or the probe's answer)."""

    question: str | None
    answer: str
    source: str  # statement | probe | key | generated
    heldout: bool = False  # never trained on: asked by the gate as a wording the adapter did not see


def _words(key: str) -> str:
    return re.sub(r"[_\-.]+", " ", key).strip()


def _content(text: str) -> set[str]:
    return {w for w in normalise(text).split() if len(w) >= 4}


def consistent(text: str, question: str, answer: str) -> bool:
    """Whether a generated (question, answer) agrees with the item's `text`: the answer is a short span of the
    text, not the whole of it, and not given away by the question, which ends as a question, and is about the
    item (it shares a content word with it)."""
    q, a, t = normalise(question), normalise(answer), normalise(text)
    return (question.strip().endswith("?") and 3 <= len(q.split()) <= 30
            and bool(a) and len(a.split()) <= MAX_ANSWER_WORDS and a != t
            and f" {a} " in f" {t} " and f" {a} " not in f" {q} "
            and bool(_content(question) & _content(text)))


def parse_pair(generated: str) -> tuple[str, str] | None:
    """The first `question?\\nA: answer` of a continuation that began after "Q: <opening>"."""
    match = re.match(r"\s*([^\n]*\?)\s*\n\s*A:\s*([^\n]+)", generated)
    return (match.group(1).strip(), match.group(2).strip().rstrip(".")) if match else None


def template_pairs(item: Item) -> list[Pair]:
    """The pair an item gives without a model: its probe; else the question its key asks; else its statement
    as plain text."""
    if item.prompt is not None:
        return [Pair(item.prompt, item.response, "demonstration")]
    if item.probe is not None:
        return [Pair(item.probe.question, item.probe.answer, PROBE)]
    if item.key is not None:
        return [Pair(f"What is the {_words(item.key)}?", item.text, KEY)]
    return [Pair(None, item.text, STATEMENT)]


def write_questions(lm, items: dict[int, Item]) -> dict[int, list[tuple[str, str]]]:
    """item id -> the (question, answer) candidates the model writes about it, one per opening word."""
    from engramma.updater.evaluate import generate

    ask = [(item_id, opening) for item_id in items for opening in OPENINGS]
    prompts = [f"{SHOTS}Statement: {items[i].text}\nQ: {opening}" for i, opening in ask]
    continuations = generate(lm.model, lm.tokenizer, prompts, raw=True, max_new_tokens=40) if prompts else []
    out: dict[int, list[tuple[str, str]]] = {}
    for (item_id, opening), continuation in zip(ask, continuations):
        if (parsed := parse_pair(opening + continuation)) is not None:
            out.setdefault(item_id, []).append(parsed)
    return out


def select_pairs(item: Item, candidates: list[tuple[str, str]], *, questions: int, heldout: int,
                 probes: str = "train") -> list[Pair]:
    """The item's pairs: its template pair, then up to `questions` of the candidates that are consistent with
    it and new, of which `heldout` are held out of training (only while the item keeps a trained question
    besides them). `probes` "heldout": the user's probe is never trained verbatim either."""
    pairs = template_pairs(item)
    if probes == "heldout":
        pairs = [Pair(p.question, p.answer, p.source, p.source == PROBE) for p in pairs]
    if item.prompt is not None:  # a demonstration is its own pair
        return pairs
    seen = {normalise(p.question) for p in pairs if p.question}
    kept: list[Pair] = []
    for question, answer in candidates:
        if len(kept) < questions and normalise(question) not in seen and consistent(item.text, question, answer):
            seen.add(normalise(question))
            kept.append(Pair(question, answer, GENERATED))
    trained_questions = sum(1 for p in pairs if p.question and not p.heldout) + len(kept)
    hold = min(max(0, heldout - sum(p.heldout for p in pairs)), max(0, trained_questions - 1))
    return pairs + [Pair(p.question, p.answer, p.source, n < hold) for n, p in enumerate(kept)]


def augment(lm, items: dict[int, Item], *, questions: int, heldout: int, generate_questions: bool = True,
            probes: str = "train") -> dict[int, list[Pair]]:
    """item id -> its pairs (`select_pairs`), from the questions `lm` writes about each item (none when
    `generate_questions` is False or `questions` is 0)."""
    writable = {i: item for i, item in items.items() if item.prompt is None}
    candidates = write_questions(lm, writable) if generate_questions and questions > 0 and writable else {}
    return {i: select_pairs(item, candidates.get(i, []), questions=questions, heldout=heldout, probes=probes)
            for i, item in items.items()}


# -- stored beside the item ---------------------------------------------------------------------------------


def load(con, item_ids: list[int]) -> dict[int, list[Pair]]:
    """The stored pairs of `item_ids` (items never augmented are left out)."""
    out: dict[int, list[Pair]] = {}
    for item_id, question, answer, source, heldout in con.execute(
            "SELECT item_id, question, answer, source, heldout FROM augmentations WHERE item_id IN (SELECT unnest(?)) "
            "ORDER BY item_id, n", [item_ids or [-1]]).fetchall():
        out.setdefault(item_id, []).append(Pair(question, answer, source, heldout))
    return out


def save(con, pairs: dict[int, list[Pair]], now) -> None:
    """Store each item's pairs, replacing any it had; items forgotten in the meantime get none."""
    from engramma.memory import items
    from engramma.memory.store import naive_utc

    kept = set(items.kept(con, list(pairs)))
    rows = [(i, n, p.question, p.answer, p.source, p.heldout) for i in sorted(kept) for n, p in enumerate(pairs[i])]
    con.execute("DELETE FROM augmentations WHERE item_id IN (SELECT unnest(?))", [sorted(kept) or [-1]])
    if rows:
        columns = list(zip(*rows))
        con.execute("INSERT INTO augmentations SELECT unnest(?), unnest(?), unnest(?), unnest(?), unnest(?), "
                    "unnest(?), ?", [*(list(c) for c in columns), naive_utc(now)])


def counts(con) -> dict[str, int]:
    """Stored pairs by source (template, generated)."""
    return dict(con.execute("SELECT source, count(*) FROM augmentations GROUP BY ALL ORDER BY 1").fetchall())


def erase(con, item_ids: list[int]) -> None:
    """Forgotten items' wordings go with them."""
    con.execute("DELETE FROM augmentations WHERE item_id IN (SELECT unnest(?))", [item_ids])

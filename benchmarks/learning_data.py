"""Streams for the learning benchmark: dated facts split into rounds, and the items each form makes of them.

A stream is a list of `Fact`s in date order, split into rounds of equal size. A fact's `key` names something
whose value can change: when a key appears in two rounds, the later fact is the current value and the earlier
one is history (the store supersedes it). Such *changed* facts are left out of the accuracy matrix (their
right answer moves) and measured on their own: which value each setting answers.

Sources:
- `invented`: `data/invented_facts.jsonl`, facts about invented entities with held-out wordings (see
  data/README.md), split `dev` (for choosing settings) or `test` (for reporting);
- `situatedqa`: SituatedQA temporal (Zhang & Choi, 2021) from its folder: each question's answers with the
  date each became current, the latest `rounds x per_round` of them; no held-out wordings;
- `jsonl`: any JSON Lines file of `{question, answer, date}` with optional `paraphrases`, `statement`, `key`,
  `aliases`, `split` and `round`.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from engramma import Item, Probe

DATA = Path(__file__).resolve().parent / "data"
FORMS = ("statement", "probe", "pair")


@dataclass(frozen=True, slots=True)
class Fact:
    id: str
    date: datetime
    question: str  # the probe wording: what the probe and pair forms train on
    answers: tuple[str, ...]  # accepted answers, the first one canonical
    statement: str  # what an agent observes
    paraphrases: tuple[str, ...] = ()  # held-out wordings: never trained on
    key: str | None = None
    round: int = -1  # the data's own round when it names one; `split_rounds` numbers the stream's

    def item(self, form: str) -> Item:
        """The item an agent observes, in one of the benchmark's forms."""
        common = dict(text=self.statement, kind="fact", source="docs", key=self.key, ts=self.date)
        if form == "statement":
            return Item(**common)
        if form == "probe":
            return Item(**common, probe=Probe(self.question, self.answers[0]))
        if form == "pair":
            return Item(**common, prompt=self.question, response=self.statement)
        raise ValueError(f"form: {form!r} is not one of {', '.join(FORMS)}")


@dataclass(frozen=True, slots=True)
class Stream:
    name: str
    rounds: tuple[tuple[Fact, ...], ...]
    unanswerable: tuple[str, ...]  # questions near the stream's topics that no fact answers

    @property
    def facts(self) -> list[Fact]:
        return [f for r in self.rounds for f in r]

    @property
    def changed(self) -> list[tuple[Fact, Fact]]:
        """(first value, last value) of every key whose value really changed in a later round: neither value's
        accepted answers match the other's ('Joe Biden' then 'Biden' is no change)."""
        from learning_metrics import matches

        pairs = []
        for fs in self._by_key().values():
            first, last = fs[0], fs[-1]
            if not any(matches(a, first.answers) for a in last.answers) and \
                    not any(matches(a, last.answers) for a in first.answers):
                pairs.append((first, last))
        return pairs

    @property
    def stable(self) -> list[list[Fact]]:
        """Per round, the facts whose right answer never moves: the accuracy matrix's columns. A key that
        recurs without a change counts once, in the round that first taught it (a later round teaching it
        again would otherwise count as remembering an earlier one)."""
        moved = {f.key for pair in self.changed for f in pair}
        first = {key: fs[0].id for key, fs in self._by_key().items()}
        return [[f for f in r if f.key is None or (f.key not in moved and first[f.key] == f.id)] for r in self.rounds]

    def _by_key(self) -> dict[str, list[Fact]]:
        by_key: dict[str, list[Fact]] = {}
        for f in self.facts:
            if f.key is not None:
                by_key.setdefault(f.key, []).append(f)
        return by_key

    @property
    def texts(self) -> list[str]:
        return [f.statement for f in self.facts]


def parse_date(value: object) -> datetime:
    """ISO dates, years ('2019'), and SituatedQA's 'March 3, 2020' / 'March 2020' / '3 March 2020'."""
    text = str(value).replace("\xa0", " ").strip()
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%d", "%Y", "%B %d, %Y", "%B %Y", "%d %B %Y", "%b %d, %Y"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"date: {value!r} is not a date (ISO 8601, a year, or 'March 3, 2020')") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def split_rounds(facts: list[Fact], rounds: int, per_round: int | None) -> tuple[tuple[Fact, ...], ...]:
    """The stream's rounds, each in date order. When the data names its rounds (`round`), the first `rounds` of
    them, `per_round` facts from each: those whose key changes within these rounds first (so that a short run
    still measures a change), then the earliest. Otherwise date order cut into `rounds` equal rounds of
    `per_round` (all the facts when None). A key seen twice in one round keeps its later value only: a round is
    observed as one batch."""
    if rounds < 1:
        raise ValueError("rounds: at least 1")
    ordered = sorted(facts, key=lambda f: (f.date, f.id))
    if ordered and all(f.round >= 0 for f in ordered):
        labels = sorted({f.round for f in ordered})[:rounds]
        if len(labels) < rounds:
            raise ValueError(f"the stream has {len(labels)} rounds, {rounds} asked")
        groups = [[f for f in ordered if f.round == label] for label in labels]
        keys = Counter(f.key for g in groups for f in g if f.key is not None)
        size = per_round or min(map(len, groups))
        if size > min(map(len, groups)):
            raise ValueError(f"a round of the stream has {min(map(len, groups))} facts: too few for {size} a round")
        chunks = [sorted(sorted(g, key=lambda f: (keys.get(f.key, 0) < 2, f.date, f.id))[:size],
                         key=lambda f: (f.date, f.id)) for g in groups]
    else:
        size = per_round if per_round is not None else len(ordered) // rounds
        if size < 1 or size * rounds > len(ordered):
            raise ValueError(f"the stream has {len(ordered)} facts: too few for {rounds} rounds of {size}")
        chunks = [ordered[r * size:(r + 1) * size] for r in range(rounds)]
    out = []
    for r, chunk in enumerate(chunks):
        last = {f.key: f.id for f in chunk if f.key is not None}
        out.append(tuple(_with_round(f, r) for f in chunk if f.key is None or last[f.key] == f.id))
    return tuple(out)


def _with_round(fact: Fact, n: int) -> Fact:
    from dataclasses import replace

    return replace(fact, round=n)


def _answers(value: object, aliases: object = ()) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else list(value or [])
    values += list(aliases or [])
    out = tuple(dict.fromkeys(str(v).strip() for v in values if str(v).strip()))
    if not out:
        raise ValueError("answer: missing")
    return out


def read_jsonl(path: Path, split: str | None = None) -> list[Fact]:
    """Facts from JSON Lines of {question, answer, date} (+ paraphrases, statement, key, aliases, split, id)."""
    facts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if split is not None and row.get("split", split) != split:
                    continue
                answers = _answers(row["answer"], row.get("aliases"))
                question = row["question"].strip()
                statement = row.get("statement") or f"{question} Answer: {answers[0]}."
                facts.append(Fact(id=str(row.get("id", n)), date=parse_date(row["date"]), question=question,
                                  answers=answers, statement=statement,
                                  paraphrases=tuple(row.get("paraphrases") or ()), key=row.get("key"),
                                  round=int(row.get("round", -1))))
            except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}:{n}: {e}") from None
    return facts


def read_unanswerable(path: Path, split: str | None) -> tuple[str, ...]:
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    return tuple(r["question"] for r in rows if split is None or r.get("split", split) == split)


def situatedqa(folder: Path, split: str, rounds: int, per_round: int) -> list[Fact]:
    """The latest `rounds x per_round` answer changes of SituatedQA temporal: each record whose `date_type` is
    'start' is the date an answer became current. Questions met more than once are keyed by their wording, so
    the later answer supersedes the earlier one, as news would."""
    name = {"dev": "qa_data_temp.dev.jsonl", "test": "qa_data_temp.test.jsonl"}[split]
    path = Path(folder) / name
    if not path.is_file():
        raise ValueError(f"{path}: not found; --data names the SituatedQA temporal folder (it holds {name})")
    rows = [r for r in map(json.loads, open(path, encoding="utf-8")) if r.get("date_type") == "start" and r.get("answer")]
    # A year alone ('2021') reads as 1 January; where the question also has finer dates, it is a coarse duplicate.
    finer = {str(r["id"]) for r in rows if not re.fullmatch(r"\d{4}", str(r["date"]).strip())}
    starts = []
    for row in rows:
        if re.fullmatch(r"\d{4}", str(row["date"]).strip()) and str(row["id"]) in finer:
            continue
        try:
            date = parse_date(row["date"])
        except ValueError:
            continue
        question = row["question"].strip()
        question = question[0].upper() + question[1:] + ("" if question.endswith("?") else "?")
        starts.append((date, str(row["id"]), question, _answers(row["answer"])))
    starts.sort()
    chosen = starts[-rounds * per_round:]
    seen: dict[str, int] = {}
    for _, qid, _, _ in chosen:
        seen[qid] = seen.get(qid, 0) + 1
    facts = []
    for n, (date, qid, question, answers) in enumerate(chosen):
        key = slug(question) if seen[qid] > 1 else None
        facts.append(Fact(id=f"{qid}@{date.date()}", date=date, question=question, answers=answers,
                          statement=f"{question} Answer: {answers[0]}.", key=key))
    return facts


def slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "fact"


def load_stream(source: str, *, data: Path | None, split: str, rounds: int, per_round: int | None,
                unanswerable: Path | None = None) -> Stream:
    if source == "invented":
        facts = read_jsonl(data or DATA / "invented_facts.jsonl", split)
        extra = read_unanswerable(unanswerable or DATA / "invented_unanswerable.jsonl", split)
    elif source == "situatedqa":
        if data is None:
            raise ValueError("--data: the SituatedQA temporal folder (../shared/datasets/situatedqa_temporal)")
        facts = situatedqa(data, split, rounds, per_round or 24)
        extra = read_unanswerable(unanswerable, None) if unanswerable else ()
    elif source == "jsonl":
        if data is None:
            raise ValueError("--data: the JSON Lines file of {question, answer, date}")
        facts = read_jsonl(data, split)
        if not facts:  # a file without splits: every line
            facts = read_jsonl(data, None)
        extra = read_unanswerable(unanswerable, None) if unanswerable else ()
    else:
        raise ValueError(f"stream: {source!r} is not one of invented, situatedqa, jsonl")
    return Stream(source, split_rounds(facts, rounds, per_round), extra)


def read_general(limit: int | None = None) -> tuple[list[str], list[str]]:
    """The benchmark's general prompts and general text paragraphs (`limit` of each, spread over the types)."""
    rows = [json.loads(line) for line in open(DATA / "general_prompts.jsonl", encoding="utf-8") if line.strip()]
    if limit is not None:  # every type in turn, so a short list still covers them all
        by_type: dict[str, list[str]] = {}
        for r in rows:
            by_type.setdefault(r["type"], []).append(r["prompt"])
        rows = [{"prompt": p} for group in zip(*by_type.values()) for p in group][:limit]
    paragraphs = [p.strip() for p in (DATA / "general_text.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return [r["prompt"] for r in rows], paragraphs[:limit] if limit else paragraphs

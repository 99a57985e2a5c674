"""Pure measures of the learning benchmark: answer matching, continual-learning metrics from an accuracy matrix,
agreement between two answers, invented specifics, and mean and spread over seeds. No model, no I/O.

The accuracy matrix R[i][j] is the accuracy, after round i, on the facts first taught in round j (rows and
columns 0-based, None where not measured). With T rounds and b[j] the base model's accuracy on round j:
- average accuracy: mean over j of R[T-1][j];
- BWT (backward transfer): mean over j < T-1 of R[T-1][j] - R[j][j] (negative: forgotten);
- FWT (forward transfer): mean over j > 0 of R[j-1][j] - b[j] (what earlier rounds did for a round not yet taught);
- forgetting: mean over j < T-1 of max over i in [j, T-2] of R[i][j], minus R[T-1][j]
  (Lopez-Paz & Ranzato 2017 for BWT and FWT; Chaudhry et al. 2018 for forgetting).
"""
from __future__ import annotations

import math
import re
import statistics
from collections import Counter

Matrix = list[list[float | None]]


def normalise(text: str) -> str:
    """Lower case; punctuation, articles and thousands separators removed; spaces collapsed."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())
    text = re.sub(r"[^\w\s]", " ", text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def matches(answer: str, accepted: tuple[str, ...] | list[str]) -> bool:
    """Some accepted answer appears in the answer as whole words ("9 pm" in "it closes at 9 pm", not "19 pm")."""
    said = f" {normalise(answer)} "
    return any((want := normalise(a)) and f" {want} " in said for a in accepted)


def which_value(answer: str, old: tuple[str, ...], new: tuple[str, ...]) -> str:
    """For a fact whose value changed: 'current', 'old', 'both' or 'neither'."""
    is_new, is_old = matches(answer, new), matches(answer, old)
    return "both" if is_new and is_old else "current" if is_new else "old" if is_old else "neither"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def continual(matrix: Matrix, base: list[float | None]) -> dict[str, float | None]:
    """Average accuracy, BWT, FWT and forgetting of a T x T matrix (see the module docstring)."""
    last = len(matrix) - 1
    final = matrix[last]
    return {
        "average_accuracy": _mean(final),
        "bwt": _mean(final[j] - matrix[j][j] for j in range(last)
                     if final[j] is not None and matrix[j][j] is not None) if last else None,
        "fwt": _mean(matrix[j - 1][j] - base[j] for j in range(1, last + 1)
                     if matrix[j - 1][j] is not None and base[j] is not None),
        "forgetting": _mean(max(v for i in range(j, last) if (v := matrix[i][j]) is not None) - final[j]
                            for j in range(last)
                            if final[j] is not None and any(matrix[i][j] is not None for i in range(j, last))),
        "new_accuracy": _mean(matrix[j][j] for j in range(last + 1)),  # each round's facts right after it
    }


def token_f1(a: str, b: str) -> float:
    """Unigram F1 of two answers' normalised words (1.0 when the same, 0.0 when nothing shared)."""
    x, y = normalise(a).split(), normalise(b).split()
    if not x and not y:
        return 1.0
    common = sum((Counter(x) & Counter(y)).values())
    if not common:
        return 0.0
    precision, recall = common / len(x), common / len(y)
    return 2 * precision * recall / (precision + recall)


def agreement(answers: list[str], reference: list[str]) -> dict[str, float]:
    """How closely answers follow the base model's: mean token F1, and the share that are word for word the same."""
    pairs = list(zip(answers, reference, strict=True))
    return {"agreement": sum(token_f1(a, r) for a, r in pairs) / len(pairs),
            "identical": sum(normalise(a) == normalise(r) for a, r in pairs) / len(pairs)}


# Words written with a capital that name nothing: the pronoun, contractions of it, and the assistant's own name.
NOT_NAMES = {"i", "i'm", "i've", "i'd", "i'll", "ai", "ok", "okay", "smollm", "hugging", "face"}
SENTENCE = re.compile(r"(?<=[.!?:;])\s+|\n+")
NUMBER = re.compile(r"\d[\d.:/-]*\d|\d")


def _numbers(text: str) -> set[str]:
    return set(NUMBER.findall(re.sub(r"(?<=\d),(?=\d)", "", text)))


def specifics(text: str) -> set[str]:
    """The specifics an answer states: numbers (prices, times, dates, counts: '3.80', '10:45', '2011') and
    names (capitalised words that do not start a sentence, possessive 's dropped), lower case."""
    found = _numbers(text)
    for sentence in SENTENCE.split(text):
        words = re.findall(r"[A-Za-z][A-Za-z'’-]*", sentence)
        for w in words[1:]:
            name = re.sub(r"['’]s$", "", w).strip("'’-").lower()
            if w[0].isupper() and name and name not in NOT_NAMES:
                found.add(name)
    return found


def invented_specifics(answer: str, known: str) -> list[str]:
    """Specifics of `answer` found nowhere in `known` (every item's text, the question, the prompt): a number
    must appear as that number, a name as those words."""
    numbers, words = _numbers(known), set(normalise(known).split())
    return sorted(s for s in specifics(answer)
                  if (s not in numbers if s[0].isdigit() else not set(normalise(s).split()) <= words))


def spread(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation or None for one value, n) over seeds, ignoring missing values."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return None, None, 0
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None, len(present)

"""A round's training examples, laid out as the agent asks: item pairs, replayed pairs, declines and anchors.

Every prompt is rendered under the agent's system message (`layout`). A share of the questions also carries
a recalled block, the item's own line among distractors, as `LocalAgent` shows it: the adapted model then keeps
reading its context, so weights and retrieval work together, and a value recalled now is what it repeats.
"""
from __future__ import annotations

import random

from engramma.types import Item
from engramma.policies.schema import ConsolidationSettings
from engramma.updater.augment import STATEMENT, Pair, template_pairs
from engramma.updater.dataset import Example, ExampleRole, normalise
from engramma.updater.layout import DECLINE, context_block, memory_line, system_message


def line(item: Item) -> str:
    return memory_line(item.kind.value, item.text, item.ts)


def _completion(item: Item, pair: Pair) -> str:
    """A question is answered with the item's text when it holds the answer (the fact in its own words), else
    with the pair's answer."""
    if pair.source == "demonstration":
        return pair.answer
    return item.text if normalise(pair.answer) in normalise(item.text) else pair.answer


def item_examples(item_id: int, item: Item, pairs: list[Pair] | None, role: ExampleRole,
                  settings: ConsolidationSettings, rng: random.Random, others: list[str]) -> list[Example]:
    """The examples of one item. New: every pair not held out. Replayed: its statement and up to
    `augment.replay_pairs` of its trained questions. `others`: recalled lines to draw distractors from."""
    augment = settings.augment
    pairs = pairs or template_pairs(item)
    trained = [p for p in pairs if not p.heldout]
    if role != ExampleRole.NEW:
        questions = [p for p in trained if p.question is not None]
        trained = [p for p in trained if p.question is None] + questions[:augment.replay_pairs]
    out = []
    for pair in trained:
        if pair.question is None:
            out.append(Example(item_id, role, None, item.text))
            continue
        context = ""
        if pair.source != STATEMENT and rng.random() < augment.context_share:
            lines = [line(item)] + distractors(others, augment.distractors, rng, line(item))
            rng.shuffle(lines)
            context = context_block(lines)
        out.append(Example(item_id, role, pair.question, _completion(item, pair), system=system_message(context)))
    return out


SYLLABLES = ("bra", "del", "fen", "gor", "hal", "kem", "lor", "mav", "nes", "pol", "quin", "rav", "sel", "tor",
             "ulm", "vel", "wyn", "zar")


def unknown_entity(question: str, rng: random.Random) -> str | None:
    """`question` about a made-up entity: each capitalised word after the first is replaced by an invented name
    (None when it names none). No memory holds anything about such a thing."""
    words = question.split()
    swapped = [w if n == 0 or not w[:1].isupper() else
               "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize() + w[len(w.rstrip("?,.'s")):]
               for n, w in enumerate(words)]
    return " ".join(swapped) if swapped != words else None


def distractors(others: list[str], count: int, rng: random.Random, item_line: str) -> list[str]:
    """Up to `count` recalled lines drawn from `others`, never the item's own."""
    return [d for d in rng.sample(others, min(count, len(others))) if d != item_line]


def decline_examples(items: dict[int, Item], pairs: dict[int, list[Pair]], share: float, rng: random.Random,
                     others: list[str], *, count: int) -> list[Example]:
    """For a share of the items, one of their questions turned to a made-up entity, answered by declining
    (`layout.DECLINE`), with nothing or only unrelated items recalled: near the items, yet answered by no
    memory, so the model learns to say so rather than invent specifics."""
    out = []
    for item_id, item in items.items():
        questions = [p.question for p in pairs.get(item_id) or template_pairs(item) if p.question and not p.heldout]
        if not questions or rng.random() >= share:
            continue
        if (question := unknown_entity(rng.choice(questions), rng)) is None:
            continue
        context = context_block(distractors(others, count, rng, line(item)) if rng.random() < 0.5 else [])
        out.append(Example(item_id, ExampleRole.DECLINE, question, DECLINE, system=system_message(context)))
    return out


def draw(prompts: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` of `prompts`, without repeats while there are enough."""
    if count <= 0 or not prompts:
        return []
    return [p for _ in range(-(-count // len(prompts))) for p in rng.sample(prompts, len(prompts))][:count]


def anchor_examples(answers: dict[str, tuple[str, bool]], drawn: list[str]) -> list[Example]:
    """The anchors of `drawn` prompts, each the base model's own answer in the agent's layout. Their example
    ids are negative: they belong to no item."""
    return [Example(-1 - n, ExampleRole.ANCHOR, p, answers[p][0], system=system_message(), ends=answers[p][1])
            for n, p in enumerate(drawn) if answers[p][0]]

"""From items to training tokens: a template per kind gives a prompt and a completion, the tokenizer's chat
template (when it has one) wraps them, the loss falls on the completion only, and examples are grouped by
length so that padding wastes little compute.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engramma.types import Item, Kind, Name

IGNORE = -100  # label of a token that carries no loss (prompt, padding)


class ExampleRole(Name):
    NEW = "new"  # an item of the round
    REPLAY = "replay"  # an earlier item, replayed so that it is not forgotten
    DECLINE = "decline"  # a question no memory answers, with the agent's decline
    ANCHOR = "anchor"  # a general prompt with the base model's own answer


@dataclass(frozen=True, slots=True)
class Example:
    """One training pair. `prompt` None: plain text, the loss covers all of `completion`. `system`: the system
    message the prompt is asked under (the agent's layout); `ends`: the completion is whole, so the model learns
    to stop after it (a truncated answer is learned without the end-of-turn token)."""

    item_id: int
    role: ExampleRole
    prompt: str | None
    completion: str
    system: str | None = None
    ends: bool = True


def _words(key: str) -> str:
    return re.sub(r"[_\-.]+", " ", key).strip()


# Kind -> (item -> (prompt, completion)), used when the item carries neither a demonstration nor a probe.
TEMPLATES: dict[Kind, Callable[[Item], tuple[str | None, str]]] = {}


def template(*kinds: Kind):
    def register(fn):
        for kind in kinds:
            if kind in TEMPLATES:
                raise ValueError(f"a template for {kind.value} is already registered")
            TEMPLATES[kind] = fn
        return fn
    return register


@template(Kind.FACT)
def _fact(item: Item) -> tuple[str | None, str]:
    if item.key is not None:  # a keyed fact answers the question its key asks
        return f"What is the {_words(item.key)}?", item.text
    return None, item.text


@template(Kind.PREFERENCE)
def _preference(item: Item) -> tuple[str | None, str]:
    return "What should you keep in mind about how I like things done?", item.text


@template(Kind.CORRECTION)
def _correction(item: Item) -> tuple[str | None, str]:
    return "What did you get wrong before, and what is right?", item.text


@template(Kind.EVENT, Kind.DOCUMENT, Kind.SKILL, Kind.CONVERSATION)
def _text(item: Item) -> tuple[str | None, str]:
    return None, item.text


def normalise(text: str) -> str:
    """Lower case, punctuation and articles removed, spaces collapsed (SQuAD-style answer matching)."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def example_for(item_id: int, item: Item, role: ExampleRole) -> Example:
    """A demonstration is its own pair; a probe's question is answered with the item's text (or the probe's
    answer when the text does not contain it); otherwise the template of the item's kind. Questions are asked
    under the agent's system message."""
    from engramma.updater.layout import system_message

    if item.prompt is not None and item.response is not None:
        return Example(item_id, role, item.prompt, item.response, system=system_message())
    if item.probe is not None:
        answer = item.text if normalise(item.probe.answer) in normalise(item.text) else item.probe.answer
        return Example(item_id, role, item.probe.question, answer, system=system_message())
    prompt, completion = TEMPLATES[item.kind](item)
    return Example(item_id, role, prompt, completion, system=system_message() if prompt is not None else None)


# -- tokens -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenizedExample:
    item_id: int
    role: ExampleRole
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE on the prompt

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def label_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def chat_prompt_ids(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of a user turn (after a system message, if given) followed by the assistant's cue, as
    generation sees them."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    return tokenizer((system + "\n\n" if system else "") + prompt + "\n", add_special_tokens=False)["input_ids"]


def _ids(encoded) -> list[int]:
    """apply_chat_template returns a list, or (transformers 5) a BatchEncoding."""
    if hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def tokenize(example: Example, tokenizer, max_length: int) -> TokenizedExample:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None and example.ends else []
    system = example.system
    if example.prompt is None:
        ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"] + eos
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        ids = bos + ids
        labels = [IGNORE] * len(bos) + ids[len(bos):]
    elif getattr(tokenizer, "chat_template", None) and example.ends:
        prompt_ids = chat_prompt_ids(tokenizer, example.prompt, system)
        ids = _ids(tokenizer.apply_chat_template(
            ([{"role": "system", "content": system}] if system else [])
            + [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.completion}],
            tokenize=True))
        if ids[:len(prompt_ids)] != prompt_ids:  # a template that renders the prompt differently once answered
            ids = prompt_ids + tokenizer(example.completion, add_special_tokens=False)["input_ids"] + eos
        labels = [IGNORE] * len(prompt_ids) + ids[len(prompt_ids):]
    else:
        prompt_ids = chat_prompt_ids(tokenizer, example.prompt, system)
        ids = prompt_ids + tokenizer(example.completion, add_special_tokens=False)["input_ids"] + eos
        labels = [IGNORE] * len(prompt_ids) + ids[len(prompt_ids):]
    if len(ids) > max_length:  # keep the end: the completion is what is learned
        ids, labels = ids[-max_length:], labels[-max_length:]
    return TokenizedExample(example.item_id, example.role, tuple(ids), tuple(labels))


# -- batches ----------------------------------------------------------------------------------------------


def length_batches(examples: list[TokenizedExample], batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """Indices of `examples` in batches of similar length, in a shuffled order that depends only on
    (seed, epoch): sorting by length keeps padding small, shuffling keeps the order of lengths random."""
    rng = np.random.default_rng([seed, epoch])
    tiebreak = rng.permutation(len(examples))
    order = sorted(range(len(examples)), key=lambda n: (len(examples[n]), tiebreak[n]))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    return [batches[n] for n in rng.permutation(len(batches))]


def padding_waste(examples: list[TokenizedExample], batches: list[list[int]]) -> float:
    """Share of the tokens computed that are padding, when each batch is padded to its longest example."""
    real = sum(len(examples[n]) for batch in batches for n in batch)
    computed = sum(max(len(examples[n]) for n in batch) * len(batch) for batch in batches if batch)
    return 1 - real / computed if computed else 0.0


def collate(examples: list[TokenizedExample], pad_id: int):
    """(input_ids, attention_mask, labels) tensors, right-padded to the longest example."""
    import torch

    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        input_ids[row, :len(e)] = torch.tensor(e.input_ids)
        labels[row, :len(e)] = torch.tensor(e.labels)
        mask[row, :len(e)] = 1
    return input_ids, mask, labels

"""Did an adapter learn an item? Probes answered by greedy generation, and completion log-likelihoods.

An item's probe is its `probe` (question and expected answer) when it has one, else its own demonstration
(prompt and response); an item with neither is measured by the log-likelihood of its training completion.
An answer is right when the normalised expected answer appears in the normalised generation, as whole words.
"""
from __future__ import annotations

from dataclasses import dataclass

from engramma.types import Item
from engramma.updater.dataset import TokenizedExample, chat_prompt_ids, collate, normalise


@dataclass(frozen=True, slots=True)
class ProbeResult:
    item_id: int
    question: str
    expected: str
    answer: str
    correct: bool


def probe_of(item: Item, pairs=None) -> tuple[str, str] | None:
    """The wording an item is probed in: its demonstration, its probe (unless held out), else its first trained
    generated question; None when it has none (it is then judged by log-likelihood alone)."""
    if item.prompt is not None and item.response is not None:
        return item.prompt, item.response
    held = {p.question for p in pairs or () if p.heldout}
    if item.probe is not None and item.probe.question not in held:
        return item.probe.question, item.probe.answer
    for pair in pairs or ():
        if pair.source == "generated" and not pair.heldout:
            return pair.question, pair.answer
    return None


def heldout_probe_of(pairs) -> tuple[str, str] | None:
    """An item's first question held out of training: the wording the adapter never saw."""
    return next(((p.question, p.answer) for p in pairs or () if p.heldout and p.question), None)


def generate(model, tokenizer, prompts: list[str], *, system: str | list[str | None] | None = None,
             max_new_tokens: int = 32, batch_size: int = 16, raw: bool = False) -> list[str]:
    """Greedy answers to user prompts (chat template when the tokenizer has one), in the order given.
    `system` is one system message for every prompt, or one per prompt; `raw`: the prompts are plain text to
    continue, with no chat template and no system message. Prompts are batched by length with
    left padding: on a CPU the prompt tokens are most of the cost, so padding would be paid in full."""
    import torch

    systems = list(system) if isinstance(system, (list, tuple)) else [system] * len(prompts)
    if len(systems) != len(prompts):
        raise ValueError(f"{len(systems)} system messages for {len(prompts)} prompts")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = ([tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts] if raw
               else [chat_prompt_ids(tokenizer, p, s) for p, s in zip(prompts, systems)])
    order = sorted(range(len(encoded)), key=lambda n: len(encoded[n]))
    out: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(encoded[n]) for n in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, n in enumerate(rows):
                ids[row, width - len(encoded[n]):] = torch.tensor(encoded[n])
                mask[row, width - len(encoded[n]):] = 1
            with torch.inference_mode():
                generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                           max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            for n, tokens in zip(rows, generated[:, width:]):
                out[n] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return out


def answer_matches(expected: str, answer: str) -> bool:
    """The normalised expected answer is the answer, or appears in it as whole words ("red" is not in "bored")."""
    want = normalise(expected)
    return bool(want) and f" {want} " in f" {normalise(answer)} "


def ask(model, tokenizer, probes: dict[int, tuple[str, str]], *, max_new_tokens: int = 32) -> list[ProbeResult]:
    """Put each (question, expected answer) to the model in the agent's layout, without recalled context."""
    from engramma.updater.layout import system_message

    asked = list(probes.items())
    answers = generate(model, tokenizer, [q for _, (q, _) in asked], system=system_message(),
                       max_new_tokens=max_new_tokens)
    return [ProbeResult(item_id, q, a, answer, answer_matches(a, answer))
            for (item_id, (q, a)), answer in zip(asked, answers)]


def run_probes(model, tokenizer, items: dict[int, Item], *, max_new_tokens: int = 32) -> list[ProbeResult]:
    """Probe every item that has a probe (or a demonstration); items without one are left out."""
    probes = {i: probe for i, item in items.items() if (probe := probe_of(item)) is not None}
    return ask(model, tokenizer, probes, max_new_tokens=max_new_tokens)


def probe_accuracy(model, tokenizer, items: dict[int, Item]) -> float:
    results = run_probes(model, tokenizer, items)
    return sum(r.correct for r in results) / len(results) if results else float("nan")


def word_f1(a: str, b: str) -> float:
    """Word-overlap F1 of two normalised texts (SQuAD-style): 1 for the same words, 0 for none shared."""
    from collections import Counter

    x, y = normalise(a).split(), normalise(b).split()
    if not x or not y:
        return float(x == y)
    common = sum((Counter(x) & Counter(y)).values())
    if not common:
        return 0.0
    precision, recall = common / len(x), common / len(y)
    return 2 * precision * recall / (precision + recall)


def completion_logprobs(model, tokenizer, examples: list[TokenizedExample], *, batch_size: int = 16) -> list[float]:
    """Mean log-probability per completion token of each example (higher is better learned)."""
    import torch

    from engramma.updater.train import completion_losses

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[float] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            ids, mask, labels = (t.to(device) for t in collate(examples[start:start + batch_size], pad))
            with torch.inference_mode():
                loss_sum, counted, _, _ = completion_losses(model, ids, mask, labels)
            out.extend((-loss_sum / counted.clamp(min=1)).tolist())
    finally:
        model.train(was_training)
    return out


# General text the project writes, for the perplexity check: plain, varied English prose. The gate adds
# held-out indexed items and, when the policy names one, a file of the user's own.
GENERAL_TEXT = (
    "The library opens at nine in the morning and closes at six in the evening on weekdays.",
    "Rain is expected in the north later today, with clearer skies moving in from the west by the weekend.",
    "To make a simple tomato sauce, soften an onion in olive oil, add chopped tomatoes and let it simmer.",
    "Please reply to this message with the order number, and we will look into it as soon as possible.",
    "The committee met on Tuesday to review the budget and agreed to postpone the decision until March.",
    "A good password is long, unique to one account and stored in a password manager.",
    "The train to the airport leaves every fifteen minutes from the second platform.",
    "She finished the report, checked the figures twice and sent it to her manager before lunch.",
)


def perplexity(model, tokenizer, texts: list[str], *, max_length: int = 256, batch_size: int = 8) -> float:
    """exp of the mean negative log-likelihood per token over plain `texts` (no chat template)."""
    from engramma.updater.dataset import Example, tokenize

    examples = [tokenize(Example(n, "general", None, t), tokenizer, max_length) for n, t in enumerate(texts) if t.strip()]
    return pooled_perplexity(model, tokenizer, examples, batch_size=batch_size)


def pooled_perplexity(model, tokenizer, examples: list[TokenizedExample], *, batch_size: int = 8) -> float:
    """exp of the mean negative log-likelihood per completion token, pooled over `examples`."""
    import math

    examples = [e for e in examples if e.label_tokens]
    if not examples:
        return float("nan")
    logprobs = completion_logprobs(model, tokenizer, examples, batch_size=batch_size)
    tokens = [e.label_tokens for e in examples]
    mean_nll = -sum(lp * n for lp, n in zip(logprobs, tokens)) / sum(tokens)
    return math.exp(mean_nll)


def score_items(model, tokenizer, items: dict[int, Item], *, max_length: int,
                pairs: dict | None = None) -> dict[int, tuple[bool | None, bool | None, float]]:
    """item id -> (its probe answered correctly, the same on its held-out question (None where it has no
    such question), mean completion log-probability of the item's training pair). `pairs`: each item's stored
    augmentation pairs."""
    from engramma.updater.dataset import example_for, tokenize

    pairs = pairs or {}
    ids = list(items)
    examples = [tokenize(example_for(i, items[i], "eval"), tokenizer, max_length) for i in ids]
    logprobs = completion_logprobs(model, tokenizer, examples)
    exact = {i: probe for i in ids if (probe := probe_of(items[i], pairs.get(i))) is not None}
    heldout = {i: probe for i in ids if (probe := heldout_probe_of(pairs.get(i))) is not None}
    both = {**{("exact", i): p for i, p in exact.items()}, **{("heldout", i): p for i, p in heldout.items()}}
    results = ask(model, tokenizer, dict(enumerate(both.values())))
    marks = {key: r.correct for key, r in zip(both, results)}
    return {i: (marks.get(("exact", i)), marks.get(("heldout", i)), lp) for i, lp in zip(ids, logprobs)}

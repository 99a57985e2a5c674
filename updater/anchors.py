"""Anchors: the base model's own answers to general instructions, mixed into every round to keep it whole.

Fine-tuning on a few facts moves the whole model; replaying its own behaviour on unrelated instructions holds
that behaviour in place (self-distillation), so even a first round, with nothing of its own to replay, keeps
general ability. The prompts are the project's set (`data/anchor_prompts.jsonl`: explanations, how-tos,
short writing, arithmetic, refusals of unsafe requests, ...) or a user's file. A fixed share of them is held
out of training: the gate asks those and compares the candidate's answers with the base model's.

The base model's answers depend only on the model's weights, the layout and the answer length, so each is
generated once, when a round first draws its prompt, and cached under the user cache directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from engramma.errors import InvalidInput
from engramma.updater.layout import system_message

PROMPTS = Path(__file__).parent / "data" / "anchor_prompts.jsonl"


def load_prompts(path: str | os.PathLike | None = None) -> list[str]:
    """The anchor prompts: the project's set, or a user's file (JSONL with a "prompt" per line, or plain text
    with one prompt per line)."""
    source = Path(path).expanduser() if path else PROMPTS
    try:
        lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise InvalidInput(f"consolidation.anchors.prompts: cannot read {source} ({e})") from None
    prompts = []
    for n, line in enumerate(lines, 1):
        if line.startswith("{"):
            try:
                line = json.loads(line)["prompt"]
            except (ValueError, KeyError, TypeError):
                raise InvalidInput(f"{source}:{n}: a JSON line needs a \"prompt\" string") from None
        prompts.append(str(line))
    if not prompts:
        raise InvalidInput(f"{source}: no anchor prompts in it")
    return prompts


def split(prompts: list[str], heldout: int) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts): the held-out ones are those whose hash sorts first, so the split
    does not depend on the file's order and never changes for a prompt."""
    ranked = sorted(prompts, key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    held = set(ranked[:min(heldout, max(0, len(prompts) - 1))])
    return [p for p in prompts if p not in held], [p for p in prompts if p in held]


def whole_sentences(text: str) -> tuple[str, bool]:
    """(text cut after its last full sentence, whether it is whole): an answer cut off by the token limit is
    trimmed to its last sentence end, or left as it is (and not whole) when it has none."""
    text = text.strip()
    if re.search(r"[.!?]['\")\]]?$", text):
        return text, True
    ends = [m.end() for m in re.finditer(r"[.!?]['\")\]]?(?=\s)", text)]
    return (text[:ends[-1]], True) if ends else (text, False)


def answers(lm, prompts: list[str], *, max_new_tokens: int, progress: bool = False) -> dict[str, tuple[str, bool]]:
    """prompt -> (the base model's greedy answer in the agent's layout, whether it is whole). Each answer is
    generated once per (model, layout, length) and cached: later rounds only ask prompts never asked before."""
    from engramma.updater.evaluate import generate
    from engramma.updater.model import cache_dir

    lm = lm.bare()
    key = hashlib.sha256(json.dumps([lm.fingerprint, system_message(), max_new_tokens]).encode()).hexdigest()[:24]
    path = cache_dir() / "anchors" / f"{key}.json"
    try:
        cached = {p: (a, bool(w)) for p, (a, w) in json.loads(path.read_text()).items()}
    except (OSError, ValueError, TypeError):
        cached = {}
    missing = sorted(set(prompts) - set(cached))
    if missing:
        if progress:
            print(f"anchors: the base model answers {len(missing)} general prompts (once, then cached)")
        texts = generate(lm.model, lm.tokenizer, missing, system=system_message(), max_new_tokens=max_new_tokens)
        cached.update({p: whole_sentences(t) for p, t in zip(missing, texts)})
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({p: list(v) for p, v in cached.items()}))
        os.replace(temporary, path)
    return {p: cached[p] for p in prompts}

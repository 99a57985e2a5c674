"""A local agent: a transformers model answering with the store's active adapters and what it recalls.

Before each answer it checks the registry (one stat() while nothing changed) and swaps in a newly promoted
adapter without restarting; the recalled context goes into the system message, within a token budget.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from engramma.agents.context import context_block
from engramma.wiring import Memory
from engramma.updater import ActiveAdapters, LanguageModel
from engramma.updater.evaluate import generate
from engramma.updater.layout import SYSTEM, system_message


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    context: str  # what was recalled and shown to the model ("" when nothing)
    adapters: dict[str, str]  # train scope -> adapter version in use


class LocalAgent:
    def __init__(self, lm: LanguageModel, memory: Memory, *, scope: str = "global", system: str = SYSTEM,
                 context_tokens: int = 300, max_new_tokens: int = 64):
        self.lm, self.memory, self.scope = lm, memory, scope
        self.system, self.context_tokens, self.max_new_tokens = system, context_tokens, max_new_tokens
        self.adapters = ActiveAdapters(lm, memory.folder, scope=scope)

    @classmethod
    def open(cls, store: str | os.PathLike, lm: LanguageModel, **kwargs) -> LocalAgent:
        return cls(lm, Memory.open(store), **kwargs)

    def _count(self, text: str) -> int:
        return len(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer(self, question: str, *, recall: bool = True) -> Answer:
        [answer] = self.answer_many([question], recall=recall)
        return answer

    def answer_many(self, questions: Sequence[str], *, recall: bool = True, batch_size: int = 16) -> list[Answer]:
        """`answer` for several questions at once: each gets its own recalled context, and the model answers
        them in batches (the same greedy answers as one by one, several times faster)."""
        self.adapters.refresh()
        contexts = [context_block(self.memory, q, scope=self.scope, budget_tokens=self.context_tokens,
                                  count_tokens=self._count) if recall else "" for q in questions]
        systems = [system_message(c, self.system) for c in contexts]
        texts = generate(self.adapters.model, self.lm.tokenizer, list(questions), system=systems,
                         max_new_tokens=self.max_new_tokens, batch_size=batch_size)
        return [Answer(t, c, self.adapters.versions) for t, c in zip(texts, contexts)]

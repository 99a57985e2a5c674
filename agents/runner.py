"""A local agent: a transformers model answering with the store's active adapters and what it recalls.

Before each answer it checks the registry (one stat() while nothing changed) and swaps in a newly promoted
adapter without restarting; the recalled context goes into the system message, within a token budget.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from engramma.agents.context import context_block
from engramma.memory import Memory
from engramma.updater import ActiveAdapters, LanguageModel
from engramma.updater.evaluate import generate

SYSTEM = "You are a helpful, concise support assistant."


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
        self.adapters.refresh()
        context = (context_block(self.memory, question, scope=self.scope, budget_tokens=self.context_tokens,
                                 count_tokens=self._count) if recall else "")
        system = self.system + ("\n\n" + context if context else "")
        [text] = generate(self.adapters.model, self.lm.tokenizer, [question], system=system,
                          max_new_tokens=self.max_new_tokens)
        return Answer(text, context, self.adapters.versions)

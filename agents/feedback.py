"""Turning what happens in a conversation into items the policy can route: turns, corrections and ratings."""
from __future__ import annotations

from datetime import datetime

from engramma.errors import InvalidItem
from engramma.memory import Item, Memory, Record


def observe_turn(memory: Memory, *, user: str, reply: str, scope: str, source: str = "chat",
                 ts: datetime | None = None) -> list[Record]:
    """A user message and the agent's reply, as conversation items of `scope` (the policy usually indexes them
    with a time to live)."""
    return memory.observe_many([
        Item(text=f"User: {user}", kind="conversation", scope=scope, source=source, ts=ts, meta={"role": "user"}),
        Item(text=f"Agent: {reply}", kind="conversation", scope=scope, source="agent", ts=ts, meta={"role": "agent"}),
    ])


def observe_correction(memory: Memory, *, question: str, right: str, scope: str, wrong: str | None = None,
                       source: str = "user", ts: datetime | None = None, probe_answer: str | None = None) -> Record:
    """A user's correction: the right answer to `question` becomes a `correction` item carrying the pair
    (question -> right answer) as its demonstration, so that consolidation can learn it. `probe_answer` (a
    short phrase the right answer must contain) lets the gate check it was learned."""
    text = f"Asked \"{question}\", the right answer is: {right}"
    if wrong:
        text += f" (not: {wrong})"
    probe = {"question": question, "answer": probe_answer} if probe_answer else None
    return memory.observe(Item(text=text, kind="correction", scope=scope, source=source, prompt=question,
                               response=right, probe=probe, ts=ts, meta={"wrong": wrong} if wrong else {}))


def observe_rating(memory: Memory, *, question: str, reply: str, rating: float, scope: str, source: str = "user",
                   ts: datetime | None = None) -> Record:
    """A rating in [0, 1] of a reply. The exchange becomes a `skill` demonstration with `meta.feedback`, which
    policies read through the `feedback` condition (e.g. train on replies rated 0.8 or more)."""
    if not 0.0 <= rating <= 1.0:
        raise InvalidItem(f"rating: {rating!r} is not between 0 and 1")
    return memory.observe(Item(text=f"{question} -> {reply}", kind="skill", scope=scope, source=source,
                               prompt=question, response=reply, ts=ts, meta={"feedback": rating}))

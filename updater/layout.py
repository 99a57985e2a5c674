"""How the agent puts a question to the model, shared by answering and training so that both see one layout.

A system message (the agent's instructions), then, when something was recalled, a block of remembered items
one per line; the user's question is the user turn. Training pairs are rendered the same way, so an adapter
learns facts in the layout it is later asked in, and keeps reading the recalled block it will be shown.
"""
from __future__ import annotations

from datetime import datetime

SYSTEM = "You are a helpful, concise support assistant."
HEADER = "What you remember that may help:"
# What the agent says when neither memory holds the answer: no invented specifics.
DECLINE = "I don't know; nothing I remember answers that."


def memory_line(kind: str, text: str, when: datetime | None = None) -> str:
    """One recalled item as the agent shows it: `- [kind, date] text`."""
    return f"- [{kind}{', ' + when.strftime('%Y-%m-%d') if when else ''}] {text}"


def context_block(lines: list[str], header: str = HEADER) -> str:
    """The recalled block for `lines` ("" when there are none)."""
    return "\n".join([header, *lines]) if lines else ""


def system_message(context: str = "", system: str = SYSTEM) -> str:
    """The system message: the agent's instructions, then the recalled block when there is one."""
    return system + ("\n\n" + context if context else "")

"""What the agent puts in front of the model: the memories most relevant to a query, within a token budget."""
from __future__ import annotations

from typing import Callable, Sequence

from engramma.memory import Hit, Memory


def approximate_tokens(text: str) -> int:
    """About 4 characters a token (English text with common tokenizers): used when no tokenizer is given."""
    return max(1, (len(text) + 3) // 4)


def format_hit(hit: Hit) -> str:
    item = hit.item
    when = item.ts.strftime("%Y-%m-%d") if item.ts else ""
    return f"- [{item.kind.value}{', ' + when if when else ''}] {item.text}"


def context_block(memory: Memory, query: str, *, scope: str | Sequence[str] = "global", budget_tokens: int = 400,
                  k: int = 20, min_score: float = 0.2, count_tokens: Callable[[str], int] = approximate_tokens,
                  header: str = "What you remember that may help:") -> str:
    """The best recalled items, most relevant first, as long as they fit in `budget_tokens` (header included).
    Returns "" when nothing relevant enough (cosine below `min_score`) is remembered."""
    lines = [header]
    used = count_tokens(header)
    for hit in memory.recall(query, k=k, scope=scope):
        if hit.score < min_score:
            break
        line = format_hit(hit)
        cost = count_tokens(line)
        if used + cost > budget_tokens:
            continue  # a shorter one further down may still fit
        lines.append(line)
        used += cost
    return "\n".join(lines) if len(lines) > 1 else ""

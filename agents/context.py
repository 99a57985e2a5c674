"""What the agent puts in front of the model: the memories most relevant to a query, within a token budget."""
from __future__ import annotations

from typing import Callable, Sequence

from engramma.memory import Hit, Memory
from engramma.updater.layout import HEADER, memory_line


def approximate_tokens(text: str) -> int:
    """About 4 characters a token (English text with common tokenizers): used when no tokenizer is given."""
    return max(1, (len(text) + 3) // 4)


def format_hit(hit: Hit) -> str:
    return memory_line(hit.item.kind.value, hit.item.text, hit.item.ts)


def context_block(memory: Memory, query: str, *, scope: str | Sequence[str] = "global", budget_tokens: int = 400,
                  k: int = 20, min_score: float = 0.2, count_tokens: Callable[[str], int] = approximate_tokens,
                  header: str = HEADER) -> str:
    """The best recalled items, most relevant first, as long as the whole block fits in `budget_tokens` (header
    and line breaks included: the block itself is counted, since tokens do not add up line by line). Returns ""
    when nothing relevant enough (cosine below `min_score`) is remembered."""
    block = header
    for hit in memory.recall(query, k=k, scope=scope):
        if hit.score < min_score:
            break
        longer = block + "\n" + format_hit(hit)
        if count_tokens(longer) <= budget_tokens:
            block = longer  # else a shorter one further down may still fit
    return block if block != header else ""

"""Signals for a batch of observed items: what the policy judges. Computed under the write lock, after the
view has caught up with other writers, so two processes never judge against different pasts.

Similarity signals (novelty, duplicate, recurrence) compare an item with the *indexed* items visible in its
scope and with the earlier items of its own batch; an exact repeat of a train-only item is found by hash.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import numpy as np

from engramma.memory.pii import find_pii
from engramma.memory.types import Item
from engramma.memory.view import IndexView
from engramma.policies.decision import Signals
from engramma.policies.schema import SignalSettings

NEIGHBOURS = 32  # nearest indexed items looked at per new item
TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True, slots=True)
class KeyedObservation:
    """An earlier observation of a keyed fact (dropped repeats included: they keep their hash)."""

    scope: str
    key: str
    content_hash: str
    ts: datetime


def gather_signals(
    items: list[Item],
    vectors: np.ndarray,
    ids: list[int],
    *,
    view: IndexView,
    scopes_of: Callable[[str], list[str]],
    settings: SignalSettings,
    now: datetime,
    keyed_history: list[KeyedObservation],
    current_hashes: dict[str, int],
    dropped_repeats: Callable[[set[int], datetime], dict[int, int]],
) -> list[Signals]:
    """`current_hashes`: content hash -> id of a current kept item; `dropped_repeats(ids, since)`: how many
    dropped duplicates of each id were observed since a time (they count as recurrences)."""
    visible = [scopes_of(item.scope) for item in items]
    neighbours = view.search_many(vectors, visible, NEIGHBOURS)
    within_batch = vectors @ vectors.T  # (n, n) cosine
    earliest = min(item.ts for item in items) - timedelta(seconds=settings.recurrence_window)
    candidates = {i for found in neighbours for i, score in found if score >= settings.recurrence_threshold}
    repeats = dropped_repeats(candidates, earliest) if candidates else {}
    history: dict[tuple[str, str], list[tuple[datetime, str]]] = {}
    for obs in keyed_history:
        history.setdefault((obs.scope, obs.key), []).append((obs.ts, obs.content_hash))

    out = []
    for j, item in enumerate(items):
        content_hash = item.content_hash
        window_start = item.ts - timedelta(seconds=settings.recurrence_window)
        best = -1.0  # closest current item: novelty
        repeat, repeat_id = -1.0, None  # closest current item that is not an earlier value of this key
        recurrence = 1

        def consider(other: Item, other_id: int, score: float, current: bool) -> None:
            nonlocal best, repeat, repeat_id
            if not current:
                return
            best = max(best, score)
            # "30 days" after "45 days" for the same key is an update, however alike the sentences are
            new_value = item.key is not None and other.key == item.key and other.content_hash != content_hash
            if not new_value and score > repeat:
                repeat, repeat_id = score, other_id

        for other_id, score in neighbours[j]:
            other = view.items[other_id]
            consider(other, other_id, score, view.is_current(other_id, now))
            if score >= settings.recurrence_threshold and window_start <= other.ts <= item.ts:
                recurrence += 1 + repeats.get(other_id, 0)
        seen_scopes = set(visible[j])
        for i in range(j):
            if items[i].scope not in seen_scopes:
                continue
            score = float(within_batch[j, i])
            consider(items[i], ids[i], score, True)
            if score >= settings.recurrence_threshold and window_start <= items[i].ts <= item.ts:
                recurrence += 1
        same = current_hashes.get(content_hash)
        duplicate = same is not None or repeat >= settings.duplicate_threshold
        out.append(Signals(
            content_hash=content_hash,
            novelty=float(min(1.0, max(0.0, 1.0 - best))),
            duplicate=duplicate,
            duplicate_of=(same if same is not None else repeat_id) if duplicate else None,
            recurrence=recurrence,
            volatility=_volatility(item, history, settings.volatility_window),
            pii=find_pii(" ".join(t for t in (item.text, item.prompt, item.response) if t)),
            length_tokens=len(TOKEN.findall(item.text)),
            source_trust=settings.source_trust.get(item.source or "", settings.default_trust),
            feedback=_feedback(item),
            age_seconds=(now - item.ts).total_seconds(),
        ))
        if item.key is not None:  # later items of the batch see this one as history
            history.setdefault((item.scope, item.key), []).append((item.ts, content_hash))
    return out


def _volatility(item: Item, history: dict, window_seconds: float) -> float:
    """Share of consecutive observations of the key, within the window and this one included, that changed it."""
    if item.key is None:
        return 0.0
    start = item.ts - timedelta(seconds=window_seconds)
    earlier = sorted((ts, h) for ts, h in history.get((item.scope, item.key), ()) if start <= ts <= item.ts)
    values = [h for _, h in earlier] + [item.content_hash]
    if len(values) < 2:
        return 0.0
    changes = sum(a != b for a, b in zip(values, values[1:]))
    return changes / (len(values) - 1)


def _feedback(item: Item) -> float | None:
    value = item.meta.get("feedback")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

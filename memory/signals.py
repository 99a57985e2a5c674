"""Signals for a batch of observed items: what the policy judges. Computed under the write lock, after the
view has caught up with other writers, so two processes never judge against different pasts.

Similarity signals (novelty, duplicate, recurrence) compare an item with the kept items visible in its scope
(indexed or not: the view's shadow holds the vectors of train-only and evicted items) and with the earlier
items of its own batch. An item with the same content hash as a current one is a duplicate at any cosine.
A batch is measured item by item, each judged before the next is measured (`BatchSignals.measure`, then
`record`), so that `observe_many(items)` routes every item exactly as observing them one by one would:
a repeat dropped earlier in the batch is not indexed, a value superseded earlier in the batch is no longer
current. The batch's own similarities are computed in row blocks with numpy, not pair by pair.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import numpy as np

from engramma.memory.pii import find_pii
from engramma.types import Item
from engramma.memory.view import IndexView
from engramma.policies.decision import Route, Signals
from engramma.policies.schema import SignalSettings

NEIGHBOURS = 16  # nearest indexed items looked at per new item (repeats beyond are counted by hash)
BLOCK = 512  # batch rows whose similarities are computed at once: bounds memory for a very large batch
TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True, slots=True)
class KeyedObservation:
    """An earlier observation of a keyed fact (dropped repeats included: they keep their hash)."""

    scope: str
    key: str
    content_hash: str
    ts: datetime


def _codes(values: list) -> np.ndarray:
    """Equal values get equal small integers; None gets -1."""
    table: dict = {}
    return np.array([-1 if v is None else table.setdefault(v, len(table)) for v in values], np.int64)


class BatchSignals:
    """Measures the items of one batch in order; `record` tells it how each one was judged."""

    def __init__(self, items: list[Item], vectors: np.ndarray, ids: list[int], *, view: IndexView,
                 scopes_of: Callable[[str], list[str]], settings: SignalSettings, now: datetime,
                 keyed_history: list[KeyedObservation],
                 dropped_repeats: Callable[[set[int], datetime], dict[int, int]]):
        """`dropped_repeats(ids, since)`: how many dropped duplicates of each id were observed since a time
        (they count as recurrences)."""
        self.items, self.vectors, self.ids = items, vectors, ids
        self.view, self.settings, self.now = view, settings, now
        n = len(items)
        self.row_of = {item_id: j for j, item_id in enumerate(ids)}
        visible = [scopes_of(item.scope) for item in items]
        self.neighbours = view.search_many(vectors, visible, NEIGHBOURS, shadow=True)
        earliest = min(item.ts for item in items) - timedelta(seconds=settings.recurrence_window)
        candidates = {i for found in self.neighbours for i, score in found if score >= settings.recurrence_threshold}
        self.repeats: dict[int, int] = dropped_repeats(candidates, earliest) if candidates else {}
        self.superseded: set[int] = set()  # indexed items whose key got a new value earlier in this batch
        self.history: dict[tuple[str, str], list[tuple[datetime, str]]] = {}
        for obs in keyed_history:
            self.history.setdefault((obs.scope, obs.key), []).append((obs.ts, obs.content_hash))

        # The batch's own rows, as numpy arrays the block comparisons read.
        scope_of = _codes([item.scope for item in items])
        first_row = {int(code): j for j, code in reversed(list(enumerate(scope_of)))}
        # may_see[a, b]: an item of scope code a sees the items of scope code b (recall's visibility rule)
        self.may_see = np.array([[items[first_row[b]].scope in visible[first_row[a]] for b in range(len(first_row))]
                                 for a in range(len(first_row))])
        self.scope_of = scope_of
        self.key_of = _codes([item.key for item in items])
        self.hash_of = _codes([item.content_hash for item in items])
        self.ts = np.array([item.ts.timestamp() for item in items])
        self.kept = np.zeros(n, bool)  # judged so far and not dropped
        self.current_until = np.full(n, n, np.int64)  # current for rows up to and including this one
        self.dropped_onto = np.zeros(n, np.int64)  # dropped repeats of each row, earlier in the batch
        self._block_start, self._block = -1, np.zeros((0, 0), np.float32)

    def _scores(self, j: int) -> np.ndarray:
        """Cosine of row j with rows 0..j-1, -inf where j's scope cannot see them."""
        start = j - j % BLOCK
        if start != self._block_start:  # one matrix product per block of rows
            stop = min(len(self.items), start + BLOCK)
            self._block_start, self._block = start, self.vectors[start:stop] @ self.vectors[:stop].T
        scores = self._block[j - start, :j]
        return np.where(self.may_see[self.scope_of[j], self.scope_of[:j]], scores, -np.inf)

    def measure(self, j: int) -> Signals:
        item, settings = self.items[j], self.settings
        content_hash = item.content_hash
        window_start = item.ts - timedelta(seconds=settings.recurrence_window)
        best = -1.0  # closest current item: novelty
        repeat, repeat_id = -1.0, None  # closest current item that is not an earlier value of this key
        same = None  # a current item with this very content
        recurrence = 1
        for other_id, score in self.neighbours[j]:  # best first
            if score < settings.recurrence_threshold and repeat_id is not None:
                break  # nothing further down can count as a recurrence or be a closer current item
            other = self.view.item(other_id)
            if score >= settings.recurrence_threshold and window_start <= other.ts <= item.ts:
                recurrence += 1 + self.repeats.get(other_id, 0)
            if not self.view.is_current(other_id, self.now) or other_id in self.superseded:
                continue
            best = max(best, score)
            if same is None and other.content_hash == content_hash:
                same = other_id
            # "30 days" after "45 days" for the same key is an update, however alike the sentences are
            new_value = item.key is not None and other.key == item.key and other.content_hash != content_hash
            if not new_value and score > repeat:
                repeat, repeat_id = score, other_id

        if j:
            scores = np.where(self.kept[:j], self._scores(j), -np.inf)
            in_window = (self.ts[:j] >= self.ts[j] - settings.recurrence_window) & (self.ts[:j] <= self.ts[j])
            recurring = (scores >= settings.recurrence_threshold) & in_window
            recurrence += int(recurring.sum() + self.dropped_onto[:j][recurring].sum())
            current = np.where(self.current_until[:j] >= j, scores, -np.inf)
            if current.max() > best:
                best = float(current.max())
            if self.key_of[j] >= 0:
                current = np.where((self.key_of[:j] == self.key_of[j]) & (self.hash_of[:j] != self.hash_of[j]),
                                   -np.inf, current)
            row = int(current.argmax())
            if current[row] > repeat:
                repeat, repeat_id = float(current[row]), self.ids[row]
            if same is None:
                identical = np.flatnonzero((self.hash_of[:j] == self.hash_of[j]) & (current > -np.inf))
                same = self.ids[int(identical[0])] if len(identical) else None

        duplicate = same is not None or repeat >= settings.duplicate_threshold
        volatility = _volatility(item, self.history, settings.volatility_window)
        if item.key is not None:  # later items of the batch see this one as history
            self.history.setdefault((item.scope, item.key), []).append((item.ts, content_hash))
        return Signals(
            content_hash=content_hash,
            novelty=float(min(1.0, max(0.0, 1.0 - best))),
            duplicate=duplicate,
            duplicate_of=(same if same is not None else repeat_id) if duplicate else None,
            recurrence=recurrence,
            volatility=volatility,
            pii=find_pii(_trainable_text(item)),
            length_tokens=len(TOKEN.findall(item.text)),
            source_trust=settings.source_trust.get(item.source or "", settings.default_trust),
            feedback=_feedback(item),
            age_seconds=(self.now - item.ts).total_seconds(),
        )

    def record(self, j: int, route: Route, signals: Signals, *, current: bool, supersedes: int | None) -> None:
        """How item j was judged: its route, whether it is current (not expired, not an old value heard
        late), and which item's value it replaced, so that later items of the batch see what it changed."""
        if route is Route.DROP:
            if signals.duplicate_of is not None:
                target = self.row_of.get(signals.duplicate_of)
                if target is None:
                    self.repeats[signals.duplicate_of] = self.repeats.get(signals.duplicate_of, 0) + 1
                else:
                    self.dropped_onto[target] += 1
            return
        self.kept[j] = True
        if not current:
            self.current_until[j] = j
        if supersedes is not None:
            row = self.row_of.get(supersedes)
            if row is None:
                self.superseded.add(supersedes)
            else:
                self.current_until[row] = j


def _trainable_text(item: Item) -> str:
    """Every text of an item that training may put into weights: its probe too (the templates ask its question
    and teach its answer), so personal data there keeps the item out of shared adapters like anywhere else."""
    parts = [item.text, item.prompt, item.response]
    if item.probe is not None:
        parts += [item.probe.question, item.probe.answer]
    return "\n".join(p for p in parts if p)


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

"""Replay selection: which past examples to train again beside the new ones, so that an update does not
overwrite what earlier adapters learned. Strategies are small objects in a registry keyed by the policy's
`consolidation.replay` name; each returns item ids and does no I/O (the job gathers the pool first).

- none: nothing.
- random: uniform over the pool.
- reservoir: uniform over the store's reservoir, a bounded sample of everything consolidated so far.
- retrieval: for each new item its nearest past examples (the likeliest to interfere), round-robin over
  the new items so every one gets neighbours, plus a reservoir share for coverage.
- mir: retrieval candidates (several times the budget) re-ranked by how much one virtual training step on the
  new items raises their loss (maximally interfered retrieval, Aljundi et al. 2019).

The pool is what may be replayed (`consolidate.replay_pool`): items this scope's adapters learned, and items
the policy queued for this scope that an earlier consolidation learned in a version since rejected or rolled
back, still kept and current. Items the policy kept out of this scope's weights are never in it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from engramma.policies.schema import ReplayName


@dataclass(frozen=True)
class ReplayRequest:
    new_ids: list[int]
    new_vectors: np.ndarray  # (len(new_ids), dim), L2-normalised
    pool_ids: list[int]
    pool_vectors: np.ndarray  # (len(pool_ids), dim)
    reservoir_ids: list[int]  # the scope's reservoir (a subset of the pool, current items only)
    budget: int  # at most this many replayed examples
    neighbours: int  # retrieval: nearest past examples per new item
    reservoir_fraction: float  # retrieval: share of the budget drawn from the reservoir
    seed: int
    # mir: item ids -> loss increase after one virtual step on the new items (computed by the job's model)
    interference: Callable[[list[int]], dict[int, float]] | None = field(default=None, compare=False)


class ReplayStrategy(Protocol):
    name: ReplayName

    def select(self, request: ReplayRequest) -> list[int]: ...


REPLAY: dict[ReplayName, ReplayStrategy] = {}


def register(strategy: type) -> type:
    instance = strategy()
    name = ReplayName(instance.name)  # only names the policy schema accepts
    if name in REPLAY:
        raise ValueError(f"replay strategy {name.value!r} is already registered")
    REPLAY[name] = instance
    return strategy


def select_replay(strategy: ReplayName | str, request: ReplayRequest) -> list[int]:
    try:
        strategy = ReplayName(strategy)
    except ValueError:
        raise ValueError(f"replay: {strategy!r} is not one of {', '.join(n.value for n in REPLAY)}") from None
    if request.budget <= 0 or not request.pool_ids:
        return []
    chosen = REPLAY[strategy].select(request)
    assert len(chosen) == len(set(chosen)) <= request.budget and not set(chosen) & set(request.new_ids)
    return chosen


def _rng(request: ReplayRequest, salt: int) -> np.random.Generator:
    return np.random.default_rng([request.seed, salt, len(request.new_ids), len(request.pool_ids)])


def _sample(ids: list[int], n: int, rng: np.random.Generator, exclude: set[int] = frozenset()) -> list[int]:
    candidates = [i for i in ids if i not in exclude]
    if n >= len(candidates):
        return candidates
    return [candidates[j] for j in sorted(rng.choice(len(candidates), size=n, replace=False))]


@register
class NoReplay:
    name = ReplayName.NONE

    def select(self, request: ReplayRequest) -> list[int]:
        return []


@register
class RandomReplay:
    name = ReplayName.RANDOM

    def select(self, request: ReplayRequest) -> list[int]:
        return _sample(request.pool_ids, request.budget, _rng(request, 1))


@register
class ReservoirReplay:
    name = ReplayName.RESERVOIR

    def select(self, request: ReplayRequest) -> list[int]:
        return _sample(request.reservoir_ids, request.budget, _rng(request, 2))


def nearest_past(request: ReplayRequest, limit: int) -> list[int]:
    """Up to `limit` pool items nearest to the new items: each new item's neighbours in turn (its nearest
    first, then every item's second nearest, ...), so that no new item is left without replay."""
    import faiss

    k = min(len(request.pool_ids), max(request.neighbours, -(-limit // max(1, len(request.new_ids)))))
    index = faiss.IndexFlatIP(request.pool_vectors.shape[1])
    index.add(np.ascontiguousarray(request.pool_vectors, dtype=np.float32))
    _, rows = index.search(np.ascontiguousarray(request.new_vectors, dtype=np.float32), k)
    chosen: dict[int, None] = {}
    for rank in range(k):
        for row in rows[:, rank]:
            if row >= 0 and len(chosen) < limit:
                chosen.setdefault(request.pool_ids[row], None)
    return list(chosen)


@register
class RetrievalReplay:
    name = ReplayName.RETRIEVAL

    def select(self, request: ReplayRequest) -> list[int]:
        from_reservoir = round(request.budget * request.reservoir_fraction)
        per_item = min(request.budget - from_reservoir, request.neighbours * len(request.new_ids))
        chosen = nearest_past(request, per_item)
        extra = _sample(request.reservoir_ids or request.pool_ids, request.budget - len(chosen), _rng(request, 3),
                        exclude=set(chosen))
        return chosen + extra


@register
class MirReplay:
    name = ReplayName.MIR
    candidates_per_slot = 3

    def select(self, request: ReplayRequest) -> list[int]:
        if request.interference is None:
            raise ValueError("replay: mir needs a model to measure interference; the consolidation job provides it")
        candidates = nearest_past(request, request.budget * self.candidates_per_slot)
        candidates += _sample(request.reservoir_ids, round(request.budget * request.reservoir_fraction),
                              _rng(request, 4), exclude=set(candidates))
        increase = request.interference(candidates)
        ranked = sorted(candidates, key=lambda i: (-increase.get(i, 0.0), i))
        return ranked[:request.budget]


assert set(REPLAY) == set(ReplayName), "every replay name the policy accepts has a strategy"

"""Route a batch of observed items, under the write lock: gather signals, decide, then apply what follows
from each decision: a new value for a key supersedes the current one (its valid-to is set). Whether the old
value was already queued or trained is a signal, so that `decide` queues the new one as a correction."""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np

from engramma.memory import items as item_rows
from engramma.memory.signals import BatchSignals, KeyedObservation
from engramma.types import Item
from engramma.memory.view import IndexView
from engramma.policies import Decision, Policy, Route, Signals, decide


@dataclass(frozen=True, slots=True)
class Routed:
    """What a batch becomes: one decision per item, and the writes it implies beyond the item rows."""

    signals: list[Signals]
    decisions: list[Decision]
    valid_to: list[datetime | None]  # per new item: ttl expiry, or the later value it is already history to
    superseded: dict[int, datetime]  # existing (or earlier-in-batch) item id -> the time it stopped being current
    corrects: list[int | None]  # per new item: the stale item it corrects in the weights


def route_batch(con, items: list[Item], vectors: np.ndarray, ids: list[int], *, view: IndexView, scopes_of,
                policy: Policy, now: datetime, naive, learned_scopes) -> Routed:
    """`learned_scopes(con, ids)`: the train scope each item was queued for or trained into (the weights')."""
    keys = sorted({item.key for item in items if item.key is not None})
    history: list[KeyedObservation] = []
    current: dict[tuple[str, str], tuple[int, str, datetime]] = {}  # (scope, key) -> (id, hash, ts)
    learned: dict[int, str] = {}  # current keyed item -> the train scope it was queued or trained for
    if keys:
        rows = item_rows.keyed(con, keys)
        wanted = {(item.scope, item.key) for item in items if item.key is not None}
        for item_id, scope, key, content_hash, ts, status, valid_to in rows:
            if (scope, key) not in wanted:
                continue
            ts = ts.replace(tzinfo=now.tzinfo)
            history.append(KeyedObservation(scope, key, content_hash, ts))
            if status == "kept" and valid_to is None:
                current[(scope, key)] = (item_id, content_hash, ts)
        if current:
            learned = learned_scopes(con, [v[0] for v in current.values()])

    def dropped_repeats(candidates: set[int], since: datetime) -> dict[int, int]:
        return item_rows.dropped_repeats(con, sorted(candidates), naive(since))

    measure = BatchSignals(items, vectors, ids, view=view, scopes_of=scopes_of, settings=policy.spec.signals,
                           now=now, keyed_history=history,
                           dropped_repeats=dropped_repeats)
    signals: list[Signals] = []
    decisions: list[Decision] = []
    valid_to: list[datetime | None] = []
    # Supersession: the value with the latest timestamp is current; the others become history. Each item is
    # judged after the ones before it have been applied, as if observed one by one.
    superseded: dict[int, datetime] = {}
    replaced_by: list[int | None] = [None] * len(items)
    batch_row = {item_id: n for n, item_id in enumerate(ids)}
    corrects: list[int | None] = [None] * len(items)
    for n, item in enumerate(items):
        s = measure.measure(n)
        slot = (item.scope, item.key) if item.key is not None else None
        old = current.get(slot) if slot is not None else None
        # The value this item would replace, if it is newer: the policy must know whether that one is in the
        # weights, because then the new value has to be learned there too (decide() queues it as a correction).
        stale = old[0] if old is not None and old[1] != item.content_hash and item.ts >= old[2] else None
        if stale is not None and stale in learned:
            s = replace(s, supersedes_learned=learned[stale])
        decision = decide(item, s, policy)
        signals.append(s)
        decisions.append(decision)
        valid_to.append(item.ts + timedelta(seconds=decision.ttl_seconds) if decision.ttl_seconds is not None
                        else None)
        if slot is not None and decision.route is not Route.DROP:
            if stale is not None:
                superseded[stale] = item.ts
                if stale in batch_row:
                    valid_to[batch_row[stale]] = item.ts
                replaced_by[n] = stale
                if decision.route.trained and stale in learned:
                    corrects[n] = stale
            elif old is not None and old[1] != item.content_hash:  # an older value heard late: history from the start
                valid_to[n] = old[2]
            if replaced_by[n] is not None or old is None or old[1] == item.content_hash:
                current[slot] = (ids[n], item.content_hash, item.ts)
            if decision.route.trained:  # a later value in this batch corrects this one where it was queued
                learned[ids[n]] = decision.train_scope
        measure.record(n, decision.route, s, current=valid_to[n] is None or valid_to[n] > now,
                       supersedes=replaced_by[n])
    return Routed(signals, decisions, valid_to, superseded, corrects)

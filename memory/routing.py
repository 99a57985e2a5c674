"""Route a batch of observed items, under the write lock: gather signals, decide, then apply what the
policy alone cannot see: a new value for a key supersedes the current one, and a fact whose old value was
already queued or trained is queued as a correction so that the weights unlearn the stale value."""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np

from engramma.memory.signals import BatchSignals, KeyedObservation
from engramma.memory.types import Item
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
                policy: Policy, now: datetime, naive, unindexed_kept: int) -> Routed:
    keys = sorted({item.key for item in items if item.key is not None})
    history: list[KeyedObservation] = []
    current: dict[tuple[str, str], tuple[int, str, datetime]] = {}  # (scope, key) -> (id, hash, ts)
    if keys:
        rows = con.execute(
            "SELECT id, scope, key, content_hash, ts, status, valid_to FROM items "
            "WHERE status != 'forgotten' AND key IN (SELECT unnest(?))", [keys]).fetchall()
        wanted = {(item.scope, item.key) for item in items if item.key is not None}
        for item_id, scope, key, content_hash, ts, status, valid_to in rows:
            if (scope, key) not in wanted:
                continue
            ts = ts.replace(tzinfo=now.tzinfo)
            history.append(KeyedObservation(scope, key, content_hash, ts))
            if status == "kept" and valid_to is None:
                current[(scope, key)] = (item_id, content_hash, ts)

    current_hashes: dict[str, int] = {}
    if unindexed_kept:  # exact repeats of train-only items are not in the index: find them by hash
        current_hashes = dict(con.execute(
            "SELECT content_hash, id FROM items WHERE status = 'kept' AND NOT in_index "
            "AND (valid_to IS NULL OR valid_to > ?) AND content_hash IN (SELECT unnest(?))",
            [naive(now), [item.content_hash for item in items]]).fetchall())

    def dropped_repeats(candidates: set[int], since: datetime) -> dict[int, int]:
        return dict(con.execute(
            "SELECT duplicate_of, count(*) FROM items WHERE status = 'dropped' "
            "AND duplicate_of IN (SELECT unnest(?)) AND ts >= ? GROUP BY ALL",
            [sorted(candidates), naive(since)]).fetchall())

    measure = BatchSignals(items, vectors, ids, view=view, scopes_of=scopes_of, settings=policy.spec.signals,
                           now=now, keyed_history=history, current_hashes=current_hashes,
                           dropped_repeats=dropped_repeats)
    signals: list[Signals] = []
    decisions: list[Decision] = []
    valid_to: list[datetime | None] = []
    # Supersession: the value with the latest timestamp is current; the others become history. Each item is
    # judged after the ones before it have been applied, as if observed one by one.
    superseded: dict[int, datetime] = {}
    replaced_by: list[int | None] = [None] * len(items)
    batch_row = {item_id: n for n, item_id in enumerate(ids)}
    for n, item in enumerate(items):
        s = measure.measure(n)
        decision = decide(item, s, policy)
        signals.append(s)
        decisions.append(decision)
        valid_to.append(item.ts + timedelta(seconds=decision.ttl_seconds) if decision.ttl_seconds is not None
                        else None)
        if item.key is not None and decision.route is not Route.DROP:
            slot = (item.scope, item.key)
            old = current.get(slot)
            if old is not None and old[1] != item.content_hash:
                old_id, _, old_ts = old
                if item.ts >= old_ts:
                    superseded[old_id] = item.ts
                    if old_id in batch_row:
                        valid_to[batch_row[old_id]] = item.ts
                    replaced_by[n] = old_id
                else:  # an older value heard late: history from the start
                    valid_to[n] = old_ts
            if replaced_by[n] is not None or old is None or old[1] == item.content_hash:
                current[slot] = (ids[n], item.content_hash, item.ts)
        measure.record(n, decision.route, s, current=valid_to[n] is None or valid_to[n] > now,
                       supersedes=replaced_by[n])

    corrects: list[int | None] = [None] * len(items)
    stale = [old for old in replaced_by if old is not None]
    if stale:
        learned = {r[0] for r in con.execute(
            "SELECT item_id FROM queue WHERE item_id IN (SELECT unnest($ids)) "
            "UNION SELECT item_id FROM lineage WHERE item_id IN (SELECT unnest($ids))", {"ids": stale}).fetchall()}
        learned |= {ids[batch_row[old]] for old in stale if old in batch_row and decisions[batch_row[old]].route.trained}
        for n, old in enumerate(replaced_by):
            if old is None or old not in learned:
                continue
            corrects[n] = old
            decision = decisions[n]
            if decision.route.trained:
                continue
            if signals[n].pii:
                decisions[n] = replace(decision, reasons=decision.reasons + (
                    f"supersedes item {old}, which was queued or trained, but carries PII: not queued",))
                corrects[n] = None
                continue
            decisions[n] = replace(decision, route=Route.BOTH, train_scope=items[n].scope, reasons=decision.reasons + (
                f"supersedes item {old}, which was queued or trained: queued as a correction",))
    return Routed(signals, decisions, valid_to, superseded, corrects)

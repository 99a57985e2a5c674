"""The write path of `Memory`: the rows an observation or a forget adds and changes, under the write lock.

A write goes in one order, in one transaction: the caller catches its view up with other writers first, then
the rows are written, the events appended after the view's seq, and the head moved *before* the commit: a
reader that sees the new head waits for our lock, then replays what we committed. Once the write is committed
the writer's own view takes it in without a replay (`SyncedView.wrote`, `add_to_view`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa

from engramma.errors import ItemNotFound
from engramma.memory import events
from engramma.memory import items as item_rows
from engramma.memory.explain import traces_before_erasing, traces_json
from engramma.memory.routing import Routed
from engramma.memory.store import naive_utc
from engramma.memory.sync import SyncedView
from engramma.memory.view import IndexView
from engramma.memory.weights import Weights
from engramma.policies import Decision, LivePolicy, Policy, Route
from engramma.types import Item


@dataclass(frozen=True, slots=True)
class Written:
    """What a write did, for its own view to take in once committed."""

    ids: list[int]  # the items observed, or forgotten
    seq: int  # its last event
    head: bytes  # what it wrote to the head file


def observe(con: duckdb.DuckDBPyConnection, synced: SyncedView, ids: list[int], items: list[Item],
            vectors: np.ndarray, routed: Routed, *, policy: Policy, now: datetime, weights: Weights,
            schema: pa.Schema) -> Written:
    """Write a routed batch: the item rows, the trained ones' place in the queue, the values they supersede,
    the events; then move the head."""
    decisions = routed.decisions
    insert_items(con, ids, items, routed, vectors, now, policy, schema)
    trained = [n for n, d in enumerate(decisions) if d.route.trained]
    if trained:
        weights.enqueue(con, [ids[n] for n in trained],
                        train_scopes=[decisions[n].train_scope for n in trained],
                        priorities=[decisions[n].priority for n in trained],
                        corrects=[routed.corrects[n] for n in trained], now=now)
    old = sorted(i for i in routed.superseded if i not in set(ids))
    if old:
        item_rows.supersede(con, old, [routed.superseded[i] for i in old])
    seq = synced.view.seq
    events.append(con, list(range(seq + 1, seq + 1 + len(ids))), "observe", ids, [item.scope for item in items], now)
    seq += len(ids)
    if old:
        events.append(con, list(range(seq + 1, seq + 1 + len(old))), "supersede", old, [None] * len(old), now)
        seq += len(old)
    head = synced.write_head(seq)  # before commit: a reader that sees it waits for our lock, then syncs
    return Written(ids, seq, head)


def insert_items(con: duckdb.DuckDBPyConnection, ids: list[int], items: list[Item], routed: Routed,
                 vectors: np.ndarray, now: datetime, policy: Policy, schema: pa.Schema) -> None:
    n = len(ids)
    decisions: list[Decision] = routed.decisions
    kept = [d.route is not Route.DROP for d in decisions]

    def unless_dropped(values: list) -> list:  # a dropped item's text is never stored
        return [v if k else None for v, k in zip(values, kept)]

    item_rows.add(con, {
        "id": ids,
        "status": ["kept" if k else "dropped" for k in kept],
        "content_hash": [item.content_hash for item in items],
        "text": unless_dropped([item.text for item in items]),
        "kind": [item.kind.value for item in items],
        "scope": [item.scope for item in items],
        "source": [item.source for item in items],
        "key": [item.key for item in items],
        "prompt": unless_dropped([item.prompt for item in items]),
        "response": unless_dropped([item.response for item in items]),
        "probe_question": unless_dropped([item.probe.question if item.probe else None for item in items]),
        "probe_answer": unless_dropped([item.probe.answer if item.probe else None for item in items]),
        "meta": unless_dropped([json.dumps(item.meta) for item in items]),
        "ts": [naive_utc(item.ts) for item in items],
        "observed_at": [naive_utc(now)] * n,
        "valid_to": [naive_utc(t) if t is not None else None for t in routed.valid_to],
        "in_index": [d.route.indexed for d in decisions],
        "vector": pa.FixedSizeListArray.from_arrays(  # straight from the numpy buffer, null where dropped
            pa.array(np.ascontiguousarray(vectors, np.float32).ravel()), vectors.shape[1],
            mask=pa.array([not k for k in kept])),
        "route": [d.route.value for d in decisions],
        "rule": [d.rule for d in decisions],
        "reasons": [json.dumps(list(d.reasons)) for d in decisions],
        "ttl_seconds": [d.ttl_seconds for d in decisions],
        "train_scope": [d.train_scope for d in decisions],
        "priority": [d.priority for d in decisions],
        "policy_name": [policy.name] * n,
        "policy_hash": [policy.content_hash] * n,
        "after_consolidation": [d.after_consolidation for d in decisions],
        "duplicate_of": [s.duplicate_of for s in routed.signals],
        "signals": [json.dumps(s.as_dict()) for s in routed.signals],
        "traces": [None if k else traces_json(item, sig, policy) for item, sig, k in zip(items, routed.signals, kept)],
    }, schema)


def add_to_view(view: IndexView, ids: list[int], items: list[Item], vectors: np.ndarray, routed: Routed) -> None:
    """Put a committed batch into the writer's own view."""
    decisions = routed.decisions
    for shadow in (False, True):  # indexed items to the recall index, train-only ones to the shadow
        rows = [n for n, d in enumerate(decisions) if d.route is not Route.DROP and d.route.indexed != shadow]
        if rows:
            view.add([ids[n] for n in rows], [items[n] for n in rows], vectors[rows], shadow=shadow)
        view.set_valid_to({ids[n]: routed.valid_to[n] for n in rows if routed.valid_to[n] is not None})
    view.set_valid_to({item_id: until for item_id, until in routed.superseded.items()
                       if item_id in view.items or item_id in view.shadow_items})


def forget(con: duckdb.DuckDBPyConnection, synced: SyncedView, item_id: int | None, scope: str | None,
           now: datetime, *, weights: Weights, live_policy: LivePolicy) -> Written | None:
    """Erase the kept item `item_id`, or every kept item of `scope` (None if it has none); then move the head,
    and reach the weights. An unknown id raises `ItemNotFound`."""
    ids = item_rows.kept_ids(con, item_id=item_id, scope=scope)
    if item_id is not None and not ids:
        raise ItemNotFound(f"no item {item_id} in {synced.folder} (never observed, dropped or forgotten)")
    if not ids:
        return None
    item_rows.erase(con, ids, traces_before_erasing(con, ids), now)
    seqs = list(range(synced.view.seq + 1, synced.view.seq + 1 + len(ids)))
    events.append(con, seqs, "forget", ids, [None] * len(ids), now)
    head = synced.write_head(seqs[-1])
    # Forgetting reaches the weights: adapters that saw the items are tainted, then rolled back or
    # queued for a rebuild, as the policy says. Its own events (items returning to the index when an
    # adapter is rolled back) come after ours and move the head on; the next read replays them.
    weights.forget(con, synced.folder, ids, live_policy.current().spec.gate.on_forget, now)
    synced.read_next_id(con)
    return Written(ids, seqs[-1], head)

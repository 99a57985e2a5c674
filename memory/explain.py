"""Why an item went where it went, even after its text is gone.

A kept item is judged again with the policy that decided it (every policy that decided is kept, by hash). A
dropped item never had its text, probe and meta stored, and forgetting erases them, so such an item cannot be
judged again: the rules as tried while it was whole are kept with it (`items.traces`), quoting which fields it
had but not what they said.
"""
from __future__ import annotations

import json
from datetime import timezone
from pathlib import Path

from engramma.errors import ItemNotFound
from engramma.memory import items as item_rows
from engramma.memory import policy_store
from engramma.memory.store import item_from_row
from engramma.types import Explanation, Item, Probe
from engramma.policies import Policy, RuleTrace, Signals, explain, parse_policy

NOT_STORED = "(not stored)"


def erased(item: Item) -> Item:
    """The item as it may be quoted once its text and meta are gone (dropped, or forgotten): which fields it
    had, not what they said."""
    return Item(text=NOT_STORED, kind=item.kind, scope=item.scope, source=item.source, key=item.key,
                probe=Probe(NOT_STORED, NOT_STORED) if item.probe is not None else None,
                meta={key: NOT_STORED for key in item.meta}, ts=item.ts)


def traces_json(item: Item, signals: Signals, policy: Policy) -> str:
    """The rules as tried for `item`, quoting only its erased form: kept for items whose text is not."""
    return json.dumps([[t.rule, t.matched, list(t.why)] for t in explain(item, signals, policy, shown=erased(item))])


def traces_before_erasing(con, ids: list[int]) -> list[str | None]:
    """For each id, its explanation while its text and meta are still there (see `traces_json`)."""
    policies: dict[str, Policy] = {}
    traces: dict[int, str | None] = {}
    for row in item_rows.with_decisions(con, ids):
        item_id, item = item_from_row(row[:12])
        signals, policy_hash, policy_name = row[12:]
        policy_text = policy_store.text_of(con, policy_hash)
        if policy_text is None:
            traces[item_id] = None
            continue
        if policy_text not in policies:
            policies[policy_text] = parse_policy(policy_text, f"policy {policy_name}")
        traces[item_id] = traces_json(item, Signals.from_dict(json.loads(signals)), policies[policy_text])
    return [traces.get(i) for i in ids]


def explain_item(con, folder: Path, item_id: int) -> Explanation:
    """An item's signals, the rule that matched and why each earlier one did not (see the module docstring)."""
    row = item_rows.decided(con, item_id)
    if row is None:
        raise ItemNotFound(f"no item {item_id} in {folder}")
    (status, kind, scope, source, key, text, pq, pa_, meta, ts, route, rule, reasons, signals, policy_name,
     policy_hash, stored_traces) = row
    policy_text = policy_store.text_of(con, policy_hash)
    item = Item(text=text or NOT_STORED, kind=kind, scope=scope, source=source, key=key,
                probe=Probe(pq, pa_) if pq else None, meta=json.loads(meta) if meta else {},
                ts=ts.replace(tzinfo=timezone.utc))
    sig = Signals.from_dict(json.loads(signals))
    if stored_traces is not None:  # dropped or forgotten: the rules as they were tried while it was whole
        traces = [RuleTrace(rule_name, matched, tuple(why)) for rule_name, matched, why in json.loads(stored_traces)]
    elif status == "kept" and policy_text:
        traces = explain(item, sig, parse_policy(policy_text, f"policy {policy_name}"))
    else:  # erased by an engramma older than store schema 4, which kept no traces
        traces = []
    return Explanation(id=int(item_id), status=status, item=item, route=route, rule=rule,
                       reasons=tuple(json.loads(reasons)), signals=sig.as_dict(), policy_name=policy_name,
                       policy_hash=policy_hash, traces=tuple(traces))

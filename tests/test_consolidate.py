"""Consolidation on a real store with the tiny model: facts are learned, replay keeps them, the registry,
lineage and queue record it, a failed job gives its items back, hot swap follows promotions."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import duckdb
import pytest
import tiny_lm

from engramma import Memory
from engramma.errors import InvalidInput
from engramma.memory.store import open_existing
from engramma.updater import ActiveAdapters, ModelNotFound, consolidate, load_model
from engramma.updater import registry
from engramma.updater.evaluate import probe_accuracy


def rows(store, sql, params=()):
    with duckdb.connect(str(store / "engramma.duckdb"), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def observe(store, policy, items, embedder):
    with Memory.open(store, embedder=embedder, policy=policy) as mem:
        return {r.id: r.item for r in mem.observe_many(items)}


def promote(store, version):
    db = open_existing(store)
    try:
        with db.transaction() as con:
            registry.promote(con, store, version, datetime.now(timezone.utc))
            registry.write_active_pointer(con, store)
    finally:
        db.close()


def accuracy_with(lm, store, version, items) -> float:
    from peft import PeftModel

    model = PeftModel.from_pretrained(lm.model, str(store / "adapters" / version))
    try:
        return probe_accuracy(model, lm.tokenizer, items)
    finally:
        model.unload()


def test_new_facts_are_learned_and_recorded(tmp_path, embedder, tiny):
    store = tmp_path / "store"
    facts = observe(store, tiny_lm.facts_policy(tmp_path), tiny_lm.colour_facts(tiny_lm.TAUGHT[:20], seed=0), embedder)
    assert probe_accuracy(tiny.model, tiny.tokenizer, facts) <= 0.3, "the base model must not know them already"

    [result] = consolidate(store, model=tiny, progress=False, gate=False)
    assert (result.status, result.version, result.parent, result.items_new) == ("trained", "v1", None, 20)
    assert accuracy_with(tiny, store, "v1", facts) >= 0.9

    (version, status, scope, path, base, items_new, replayed, tokens, steps, tps, base_hash, policy_hash, wall_s,
     peak_mb, config, parent), = rows(
        store, "SELECT version, status, train_scope, path, base_model, items_new, items_replayed, tokens, steps, "
               "tokens_per_s, base_model_hash, policy_hash, wall_s, peak_mem_mb, config, parent FROM adapters")
    assert (version, status, scope, path, items_new, replayed, parent) == ("v1", "candidate", "global", "adapters/v1",
                                                                           20, 0, None)
    assert tokens > 0 and steps == result.report.steps > 0 and tps > 0 and base_hash == tiny.fingerprint
    assert base == tiny.model_id and 0 < wall_s == pytest.approx(result.report.wall_s) and peak_mb > 0
    config = json.loads(config)
    assert config["settings"]["lora"]["rank"] == 8 and config["replay_strategy"] == "retrieval"
    assert config["processes"] == 1 and config["padding_waste"] < 0.10 and config["final_loss"] > 0
    assert policy_hash and (store / "adapters" / "v1" / "adapter_model.safetensors").is_file()
    assert sorted(rows(store, "SELECT item_id, role FROM lineage")) == [(i, "new") for i in sorted(facts)]
    assert rows(store, "SELECT DISTINCT status, adapter_version FROM queue") == [("done", "v1")]
    assert rows(store, "SELECT status FROM jobs") == [("done",)]
    assert not (store / "adapters" / ".jobs").exists() or not any((store / "adapters" / ".jobs").iterdir()), \
        "a finished job keeps no copy of its items' tokens"
    assert result.report.padding_waste < 0.10


def test_an_empty_queue_trains_nothing_and_a_missing_model_is_one_clear_error(tmp_path, embedder, tiny):
    store = tmp_path / "store"
    observe(store, "preset:index-only", tiny_lm.colour_facts(tiny_lm.TAUGHT[:3], seed=0), embedder)
    assert consolidate(store, model=tiny, progress=False, gate=False) == []
    observe(store, tiny_lm.facts_policy(tmp_path), tiny_lm.colour_facts(tiny_lm.TAUGHT[3:5], seed=0), embedder)
    with pytest.raises(ModelNotFound, match="could not be loaded offline"):
        consolidate(store, model=str(tmp_path / "no-such-model"), progress=False, gate=False)
    assert rows(store, "SELECT DISTINCT status FROM queue") == [("pending",)], "nothing was claimed"
    with pytest.raises(InvalidInput, match="no interrupted consolidation job"):
        consolidate(store, model=tiny, resume=True, progress=False, gate=False)


def test_too_few_items_wait_for_the_next_round(tmp_path, embedder, tiny):
    store = tmp_path / "store"
    policy = tiny_lm.facts_policy(tmp_path)
    policy.write_text(policy.read_text().replace("min_items: 1", "min_items: 5"))
    observe(store, policy, tiny_lm.colour_facts(tiny_lm.TAUGHT[:3], seed=0), embedder)
    [result] = consolidate(store, model=tiny, progress=False, gate=False)
    assert result.status == "skipped" and "3 item(s) waiting" in result.note
    assert rows(store, "SELECT DISTINCT status, lease_owner FROM queue") == [("pending", None)]
    assert rows(store, "SELECT count(*) FROM adapters") == [(0,)]


def test_a_failed_job_leaves_its_items_pending_and_no_adapter(tmp_path, embedder, tiny):
    store = tmp_path / "store"
    facts = tiny_lm.colour_facts(tiny_lm.TAUGHT[:4], seed=0)
    observe(store, tiny_lm.facts_policy(tmp_path), facts, embedder)
    tiny.tokenizer.add_tokens(["<beyond-the-embedding-table>"])  # an id the model has no embedding for
    from engramma import Item
    observe(store, None, [Item(text="The colour of project zz is <beyond-the-embedding-table>.", kind="fact",
                               probe={"question": "What is the colour of project zz?",
                                      "answer": "<beyond-the-embedding-table>"})], embedder)
    with pytest.raises(IndexError):
        consolidate(store, model=tiny, progress=False, gate=False)
    assert rows(store, "SELECT DISTINCT status, lease_owner FROM queue") == [("pending", None)]
    assert rows(store, "SELECT count(*) FROM adapters") == [(0,)]
    [(status, error)] = rows(store, "SELECT status, error FROM jobs")
    assert status == "failed" and "IndexError" in error
    assert [p.name for p in (store / "adapters").iterdir() if not p.name.startswith(".")] == []


def round_accuracy(tmp_path, embedder, lm, replay: str) -> tuple[float, float, float]:
    """Round 1 learns facts A; round 2 learns facts B with `replay`. Returns (A after 1, A after 2, B after 2)."""
    store = tmp_path / f"store-{replay}"
    policy = tiny_lm.facts_policy(tmp_path, replay=replay, name=f"{replay}.yaml")
    a = observe(store, policy, tiny_lm.colour_facts(tiny_lm.TAUGHT[:20], seed=0), embedder)
    [first] = consolidate(store, model=lm, progress=False, gate=False)
    promote(store, first.version)
    b = observe(store, policy, tiny_lm.colour_facts(tiny_lm.TAUGHT[20:40], seed=0), embedder)
    [second] = consolidate(store, model=lm, progress=False, gate=False)
    assert second.parent == first.version
    assert second.items_replayed == (20 if replay != "none" else 0)
    replayed = {r[0] for r in rows(store, "SELECT item_id FROM lineage WHERE adapter_version = ? AND role = 'replay'",
                                   [second.version])}
    assert replayed <= set(a)
    return (accuracy_with(lm, store, first.version, a), accuracy_with(lm, store, second.version, a),
            accuracy_with(lm, store, second.version, b))


def test_retrieval_replay_keeps_round_one_and_no_replay_forgets_it(tmp_path, embedder, tiny):
    before, kept, learned = round_accuracy(tmp_path, embedder, tiny, "retrieval")
    assert before >= 0.9 and learned >= 0.9
    assert kept >= before - 0.05, f"retrieval replay: round-1 accuracy {before:.2f} -> {kept:.2f}"
    before_none, kept_none, learned_none = round_accuracy(tmp_path, embedder, tiny, "none")
    assert before_none >= 0.9 and learned_none >= 0.9
    assert kept_none <= before_none - 0.15, f"without replay round 1 should be overwritten: {before_none} -> {kept_none}"
    assert kept >= kept_none + 0.15, f"retrieval replay kept {kept:.2f} of round 1, no replay {kept_none:.2f}"


def test_hot_swap_follows_promotions_without_a_restart(tmp_path, embedder, tiny):
    store = tmp_path / "store"
    policy = tiny_lm.facts_policy(tmp_path)
    a = observe(store, policy, tiny_lm.colour_facts(tiny_lm.TAUGHT[:12], seed=0), embedder)
    consolidate(store, model=tiny, progress=False, gate=False)
    b = observe(store, policy, tiny_lm.colour_facts(tiny_lm.TAUGHT[12:24], seed=0), embedder)
    consolidate(store, model=tiny, progress=False, gate=False)

    running = ActiveAdapters(load_model(str(tiny.model.name_or_path)), store)
    assert running.refresh() is False and running.loaded == {}, "nothing promoted yet: the base model runs"
    promote(store, "v1")
    assert running.refresh() is True and running.versions == {"global": "v1"}
    assert probe_accuracy(running.model, running.lm.tokenizer, a) >= 0.9
    assert running.refresh() is False, "an unchanged registry costs a stat, not a reload"
    promote(store, "v2")  # v2 continued v1 without replay from its own queue: knows b
    assert running.refresh() is True and running.versions == {"global": "v2"}
    assert probe_accuracy(running.model, running.lm.tokenizer, b) >= 0.9
    pointer = json.loads((store / "adapters" / "active.json").read_text())
    assert pointer["schema"] == 1 and pointer["active"]["global"]["version"] == "v2"

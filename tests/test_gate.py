"""Evaluation, the gate, registry transitions, unlearning, index/weights consistency, merging and the report."""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

import pytest
import tiny_lm

from engramma import Item, Memory
from engramma.memory.store import open_existing
from engramma.policies.schema import GateSettings
from engramma.updater import AdapterError, consolidate
from engramma.updater import registry
from engramma.updater.activate import activate
from engramma.updater.gate import judge as judge_metrics
from engramma.updater.measure import EvalMetrics, continual_metrics
from engramma.updater.merge import merge
from engramma.updater.report import write_report
from test_consolidate import accuracy_with, rows

GATE = """
gate:
  min_new_accuracy: 0.8
  max_retention_drop: 0.05
  max_perplexity_increase: 2.0  # the tiny model's general perplexity is ~10^4, and a sound round moves it 40-60%
  on_forget: ON_FORGET
"""


def gated_policy(tmp_path, *, lr="3.0e-3", epochs=60, on_forget="both", evict=False, name="policy.yaml"):
    path = tiny_lm.facts_policy(tmp_path, epochs=epochs, name=name)
    text = path.read_text().replace("learning_rate: 3.0e-3", f"learning_rate: {lr}") + GATE.replace(
        "ON_FORGET", on_forget)
    if evict:
        text = text.replace("train_scope: shared}", "train_scope: shared, after_consolidation: evict}")
    path.write_text(text)
    return path


def observe(store, items, embedder, policy=None):
    with Memory.open(store, embedder=embedder, policy=policy) as mem:
        return {r.id: r.item for r in mem.observe_many(items)}


def facts(start, stop):
    return tiny_lm.colour_facts(tiny_lm.TAUGHT[start:stop], seed=0)


def with_db(store, fn):
    db = open_existing(store)
    try:
        with db.transaction() as con:
            return fn(con)
    finally:
        db.close()


# -- pure parts ---------------------------------------------------------------------------------------------


def roll_back(con, store, now, scope="global"):
    """What `engramma adapters rollback` does: back to the version the active one replaced."""
    retired, target = registry.rollback_target(con, store, scope)
    activate(con, store, scope, target.version if target else None, now, note="rolled back", rollback=True)
    return retired, target


def judge(metrics: dict, settings: GateSettings, **kw):
    """The gate's verdict on measurements given as a stored record (fields it lacks are None)."""
    return judge_metrics(EvalMetrics.from_dict(metrics), settings, **kw)


def test_continual_metrics_from_a_small_accuracy_matrix():
    matrix = {("v1", "v1"): 1.0, ("v2", "v1"): 0.8, ("v2", "v2"): 0.9, ("v3", "v1"): 0.6, ("v3", "v2"): 0.9,
              ("v3", "v3"): 1.0, ("v1", "v2"): 0.2, ("v2", "v3"): 0.1}
    got = continual_metrics(matrix, ["v1", "v2", "v3"], {"v1": 0.0, "v2": 0.1, "v3": 0.0})
    assert got["average_accuracy"] == pytest.approx((0.6 + 0.9 + 1.0) / 3)
    assert got["bwt"] == pytest.approx(((0.6 - 1.0) + (0.9 - 0.9)) / 2)
    assert got["fwt"] == pytest.approx(((0.2 - 0.1) + (0.1 - 0.0)) / 2)
    assert got["forgetting"] == pytest.approx({"v1": 0.4, "v2": 0.0}) and got["max_forgetting"] == pytest.approx(0.4)


def test_items_without_probes_are_judged_by_likelihood_and_a_merge_by_what_it_brings():
    metrics = {"new_items": 4, "new_probed": 2, "new_accuracy": 1.0, "parent_new_accuracy": 0.0,
               "base_new_accuracy": 0.0, "new_unprobed": 2, "new_logprob": -2.0, "parent_new_logprob": -1.5,
               "earlier_probed": 0, "earlier_unprobed": 3, "retention_logprob": -1.0, "parent_retention_logprob": -0.5,
               "perplexity": 10.0, "parent_perplexity": 10.0}
    checks = {c.name: c for c in judge(metrics, GateSettings())}
    assert not checks["new_likelihood"].passed, "unprobed new completions became less likely"
    rise = checks["retention_perplexity_increase"]
    assert not rise.passed and rise.value == pytest.approx(2.718281828 ** 0.5 - 1)
    ok = {c.name: c for c in judge({**metrics, "new_logprob": -1.0, "retention_logprob": -0.55}, GateSettings())}
    assert all(c.passed for c in ok.values())
    merge = {**metrics, "new_items": 0, "new_probed": 0, "new_unprobed": 0, "merged_items": 7}
    assert [c.detail for c in judge(merge, GateSettings(min_items=5)) if c.name == "items"] == [
        "7 merged item(s), at least 5 needed"]
    assert not next(c for c in judge({**metrics, "new_items": 0, "new_probed": 0, "new_unprobed": 0},
                                     GateSettings()) if c.name == "items").passed


def test_retention_is_a_sample_of_every_round_up_to_the_cap():
    from engramma.updater.measure import _sample_by_round

    rows_ = [(i, "v1") for i in range(10)] + [(i, "v2") for i in range(10, 15)] + [(i, "v3") for i in range(15, 60)]
    sample = _sample_by_round(rows_, 30, seed=0)
    per_round = {t: sum(1 for _, r in sample if r == t) for t in ("v1", "v2", "v3")}
    assert per_round == {"v1": 10, "v2": 5, "v3": 15} and len(sample) == 30
    assert _sample_by_round(rows_, 30, seed=0) == sample, "seeded"
    assert sorted(_sample_by_round(rows_, 100, seed=0)) == sorted(rows_)


def test_the_gate_names_each_failing_check():
    metrics = {"new_items": 10, "new_probed": 10, "new_accuracy": 0.3, "parent_new_accuracy": 0.1,
               "base_new_accuracy": 0.0, "earlier_probed": 20, "retention": 0.7, "parent_retention": 0.95,
               "perplexity": 30.0, "parent_perplexity": 20.0}
    checks = {c.name: c for c in judge(metrics, GateSettings(max_perplexity_increase=0.1))}
    assert {n for n, c in checks.items() if not c.passed} == {"new_accuracy", "retention_drop", "perplexity_increase"}
    assert checks["retention_drop"].value == pytest.approx(0.25) and "70% vs the parent's 95%" in checks["retention_drop"].detail
    assert checks["items"].passed
    assert not [c for c in judge({**metrics, "new_accuracy": 0.9, "retention": 0.95, "perplexity": 21.0},
                                 GateSettings(max_perplexity_increase=0.1)) if not c.passed]
    assert [c.name for c in judge({**metrics, "new_accuracy": 0.9, "retention": 0.95, "perplexity": 21.0},
                                  GateSettings(), tainted=True) if not c.passed] == ["untainted"]


# -- the gate on real candidates ----------------------------------------------------------------------------


def test_the_gate_rejects_a_candidate_that_wrecks_retention_and_promotes_a_sound_one(tmp_path, embedder, tiny):
    sound = tmp_path / "sound"
    policy = gated_policy(tmp_path)
    observe(sound, facts(0, 12), embedder, policy)
    [first] = consolidate(sound, model=tiny, progress=False)
    assert first.gate.decision == "promoted" and first.gate.metrics.new_accuracy >= 0.8
    wrecked = tmp_path / "wrecked"
    shutil.copytree(sound, wrecked)

    observe(sound, facts(12, 24), embedder)
    [good] = consolidate(sound, model=tiny, progress=False)
    assert good.gate.decision == "promoted", [c.detail for c in good.gate.failed]
    assert good.gate.metrics.retention >= good.gate.metrics.parent_retention - 0.05
    assert with_db(sound, lambda con: registry.active(con, sound, "global").version) == "v2"
    assert rows(sound, "SELECT version, status FROM adapters ORDER BY version") == [("v1", "retired"), ("v2", "active")]

    wrecking = gated_policy(tmp_path, lr="0.3", name="wrecking.yaml")
    observe(wrecked, facts(12, 24), embedder, wrecking)
    [bad] = consolidate(wrecked, model=tiny, progress=False)
    assert bad.gate.decision == "rejected" and not bad.gate.passed
    failed = {c.name for c in bad.gate.failed}
    assert "retention_drop" in failed, [c.detail for c in bad.gate.checks]
    (status, note, metrics), = rows(wrecked, "SELECT status, note, metrics FROM adapters WHERE version = 'v2'")
    assert status == "rejected" and note.startswith("gate:") and "earlier rounds" in note
    assert {c["name"] for c in json.loads(metrics)["gate"]["checks"] if not c["passed"]} == failed
    assert with_db(wrecked, lambda con: registry.active(con, wrecked, "global").version) == "v1", "v1 stays active"
    assert rows(wrecked, "SELECT DISTINCT status FROM queue WHERE adapter_version IS NULL") == [("pending",)], \
        "a rejected round's items wait for the next one"
    # The rejected round's items are learned at the next consolidation, and replay goes on working after it.
    with Memory.open(wrecked, embedder=embedder, policy=gated_policy(tmp_path, name="sound-again.yaml")):
        pass
    [retried] = consolidate(wrecked, model=tiny, progress=False)
    assert (retried.version, retried.items_new, retried.gate.decision) == ("v3", 12, "promoted")
    observe(wrecked, facts(24, 30), embedder)
    [later] = consolidate(wrecked, model=tiny, progress=False)
    assert later.items_replayed == 6 and later.parent == "v3"

    matrix = rows(sound, "SELECT evaluated, task, avg(CAST(correct AS INTEGER)) FROM probe_results "
                         "WHERE task IS NOT NULL GROUP BY ALL ORDER BY ALL")
    assert {(e, t) for e, t, _ in matrix} >= {("v1", "v1"), ("v2", "v1"), ("v2", "v2"), ("v1", "v2"), ("base", "v2")}
    assert good.gate.metrics.bwt is not None and good.gate.metrics.fwt is not None


def test_promote_rollback_reject_and_retire(tmp_path, embedder, tiny):
    store = tmp_path / "store"
    observe(store, facts(0, 6), embedder, gated_policy(tmp_path, epochs=30))
    consolidate(store, model=tiny, progress=False, gate=False)
    observe(store, facts(6, 12), embedder)
    consolidate(store, model=tiny, progress=False, gate=False)  # v2: a candidate beside v1, both from the base
    observe(store, facts(12, 18), embedder)
    consolidate(store, model=tiny, progress=False, gate=False)
    status = lambda: dict(rows(store, "SELECT version, status FROM adapters"))  # noqa: E731

    def run(fn):
        return with_db(store, fn)

    now = datetime.now(timezone.utc)
    run(lambda con: registry.promote(con, store, "v1", now))
    assert status() == {"v1": "active", "v2": "candidate", "v3": "candidate"}
    run(lambda con: registry.promote(con, store, "v2", now))
    assert status() == {"v1": "retired", "v2": "active", "v3": "candidate"}
    run(lambda con: registry.reject(con, store, "v3", now, "not now"))
    with pytest.raises(AdapterError, match="needs --reason"):
        run(lambda con: registry.promote(con, store, "v3", now))
    with pytest.raises(AdapterError, match="only a candidate can be rejected"):
        run(lambda con: registry.reject(con, store, "v2", now, "no"))
    retired, active = run(lambda con: roll_back(con, store, now))
    assert (retired.version, active.version) == ("v2", "v1") and status()["v2"] == "retired"
    actives = rows(store, "SELECT version, path FROM adapters WHERE status = 'active'")
    assert actives == [("v1", "adapters/v1")] and (store / "adapters/v1/adapter_config.json").is_file()
    retired, active = run(lambda con: roll_back(con, store, now))
    assert (retired.version, active) == ("v1", None), "v1 replaced nothing: the base model answers again"
    assert set(status().values()) == {"retired", "rejected"}
    shutil.rmtree(store / "adapters" / "v3")
    with pytest.raises(AdapterError, match="missing or incomplete"):
        run(lambda con: registry.promote(con, store, "v3", now, note="by hand"))
    assert rows(store, "SELECT count(*) FROM adapters WHERE status = 'active'") == [(0,)]
    # A rollback passes over a version whose folder is gone, rather than activate it.
    run(lambda con: registry.promote(con, store, "v1", now, note="again"))
    run(lambda con: registry.promote(con, store, "v2", now, note="again"))
    shutil.rmtree(store / "adapters" / "v1")
    retired, active = run(lambda con: roll_back(con, store, now))
    assert (retired.version, active) == ("v2", None), "v1's folder is gone: the base model answers instead"


def test_forget_then_retrain_leaves_no_active_adapter_with_the_item(tmp_path, embedder, tiny):
    store = tmp_path / "store"
    learned = observe(store, facts(0, 8), embedder, gated_policy(tmp_path, epochs=40))
    [first] = consolidate(store, model=tiny, progress=False)
    assert first.gate.decision == "promoted"
    secret = next(iter(learned))
    with Memory.open(store, embedder=embedder) as mem:
        mem.forget(secret)
    assert rows(store, "SELECT version, status, tainted FROM adapters") == [("v1", "retired", True)], \
        "rolled back at once: v1 saw the item"
    assert json.loads((store / "adapters" / "active.json").read_text()) == {"schema": 1, "active": {}}
    assert rows(store, "SELECT train_scope, from_version FROM retrain_requests") == [("global", None)]

    [rebuilt] = consolidate(store, model=tiny, progress=False)
    assert (rebuilt.version, rebuilt.parent, rebuilt.items_new) == ("v2", None, 7)
    assert rebuilt.gate.decision == "promoted"
    active = rows(store, "SELECT version FROM adapters WHERE status = 'active'")
    assert active == [("v2",)]
    assert rows(store, "SELECT count(*) FROM lineage WHERE item_id = ? AND adapter_version = 'v2'", [secret]) == [(0,)]
    assert rows(store, "SELECT count(*) FROM retrain_requests") == [(0,)]
    remaining = {i: item for i, item in learned.items() if i != secret}
    assert accuracy_with(tiny, store, "v2", remaining) >= 0.8
    with pytest.raises(AdapterError, match="tainted"):
        with_db(store, lambda con: registry.promote(con, store, "v1", datetime.now(timezone.utc)))


def test_evicted_items_leave_the_index_once_learned_and_return_on_rollback(tmp_path, embedder, tiny):
    store = tmp_path / "store"
    learned = observe(store, facts(0, 8), embedder, gated_policy(tmp_path, epochs=60, evict=True))
    [first] = consolidate(store, model=tiny, progress=False)
    assert first.gate.decision == "promoted"
    passed = {i for i, c in rows(store, "SELECT item_id, correct FROM probe_results WHERE evaluated = 'v1'") if c}
    assert passed and passed <= set(learned)
    out = {i for i, in rows(store, "SELECT id FROM items WHERE NOT in_index AND status = 'kept'")}
    assert out == passed, "exactly the items whose probe passed on the promoted adapter left the index"
    with Memory.open(store, embedder=embedder) as mem:
        assert mem.check() == []
        hits = mem.recall(learned[min(passed)].text, k=3)
        assert min(passed) not in {h.id for h in hits}
    with_db(store, lambda con: roll_back(con, store, datetime.now(timezone.utc)))
    assert rows(store, "SELECT count(*) FROM items WHERE NOT in_index AND status = 'kept'") == [(0,)]
    with Memory.open(store, embedder=embedder) as mem:
        assert min(passed) in {h.id for h in mem.recall(learned[min(passed)].text, k=3)}, "back in the index"


def test_a_merge_loads_and_is_gated_and_private_lineage_is_refused(tmp_path, embedder, tiny):
    from peft import PeftModel

    store = tmp_path / "store"
    policy = gated_policy(tmp_path, epochs=40)
    policy.write_text(policy.read_text().replace("train_scope: shared", "train_scope: own"))
    observe(store, facts(0, 6), embedder, policy)
    consolidate(store, model=tiny, progress=False, gate=False)
    observe(store, facts(6, 12), embedder)
    consolidate(store, model=tiny, progress=False, gate=False)
    db = open_existing(store)
    try:
        version = merge(db, tiny, ["v1", "v2"], method="ties")
        model = PeftModel.from_pretrained(tiny.model, str(store / "adapters" / version))
        model.unload()
        from engramma.updater.gate import gate
        report = gate(db, tiny, version)
        with pytest.raises(AdapterError, match="not one of"):
            merge(db, tiny, ["v1", "v2"], method="average")
    finally:
        db.close()
    assert version == "v3" and report.metrics.new_items == 12 and report.metrics.merged_items == 12
    assert report.passed is all(c.passed for c in report.checks) and report.decision == (
        "promoted" if report.passed else "rejected")
    assert {c.name for c in report.checks} >= {"items", "new_accuracy", "perplexity_increase"}
    assert rows(store, "SELECT count(*) FROM lineage WHERE adapter_version = 'v3' AND role = 'merged'") == [(12,)]
    stored = json.loads(rows(store, "SELECT metrics FROM adapters WHERE version = 'v3'")[0][0])
    assert stored["gate"]["checks"] and stored["schema"] == 1
    assert EvalMetrics.from_dict(stored) == report.metrics, "the stored record reads back as what was measured"
    legacy = {k: v for k, v in stored.items() if k not in ("schema", "merged_items", "general_agreement")}
    assert EvalMetrics.from_dict(legacy).merged_items == 0 and EvalMetrics.from_dict(legacy).general_agreement is None
    private = [Item(text=f.text, kind="fact", scope="user:alice", probe=f.probe) for f in facts(12, 16)]
    observe(store, private, embedder)
    consolidate(store, model=tiny, progress=False, gate=False, scope="user:alice")
    alice = rows(store, "SELECT version FROM adapters WHERE train_scope = 'user:alice'")[0][0]
    db = open_existing(store)
    try:
        with pytest.raises(AdapterError, match="keeps out of shared weights"):
            merge(db, tiny, ["v1", alice], method="linear")
    finally:
        db.close()


@pytest.mark.parametrize("method", ["ties", "dare_ties", "svd"])
def test_a_merge_answers_what_both_sources_learned_and_is_the_same_merge_twice(tmp_path, embedder, tiny, method):
    """v1 and v2 learned 6 facts each, from the base model. A merge answers more of the 12 than either source
    does, and merging again gives the same weights (dare_ties drops at random: seeded)."""
    from safetensors.torch import load_file

    store = tmp_path / "store"
    policy = gated_policy(tmp_path, epochs=40)
    policy.write_text(policy.read_text().replace("replay: retrieval", "replay: none"))  # v2 learns only its 6
    first = observe(store, facts(0, 6), embedder, policy)
    consolidate(store, model=tiny, progress=False, gate=False)
    second = observe(store, facts(6, 12), embedder)
    consolidate(store, model=tiny, progress=False, gate=False)
    both = {**first, **second}
    alone = [accuracy_with(tiny, store, v, both) for v in ("v1", "v2")]
    db = open_existing(store)
    try:
        merged = [merge(db, tiny, ["v1", "v2"], method=method) for _ in range(2)]
    finally:
        db.close()
    accuracy = accuracy_with(tiny, store, merged[0], both)
    assert accuracy > max(alone), (method, alone, accuracy)  # measured: ties 10/12, dare_ties and svd 12/12, v1 8/12
    weights = [load_file(str(store / "adapters" / v / "adapter_model.safetensors")) for v in merged]
    assert weights[0].keys() == weights[1].keys() and all((weights[0][k] == weights[1][k]).all() for k in weights[0])


def test_the_report_holds_its_figures(tmp_path, embedder, tiny):
    store = tmp_path / "store"
    observe(store, facts(0, 8), embedder, gated_policy(tmp_path, epochs=40))
    consolidate(store, model=tiny, progress=False)
    observe(store, facts(8, 16), embedder)
    consolidate(store, model=tiny, progress=False)
    db = open_existing(store)
    try:
        page = write_report(db, tmp_path / "report")
    finally:
        db.close()
    text = page.read_text()
    for figure in ("accuracy_matrix.png", "retention.png", "bwt.png", "routing.png", "lineage.png", "gate.png"):
        data = (tmp_path / "report" / figure).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, figure
        assert f'src="{figure}"' in text
    assert "<td>v2</td>" in text and "Accuracy matrix across rounds" in text
    # The gate's checks are shown against the policy's thresholds (GATE above), in the checks' own units.
    assert "<th>threshold</th>" in text and "≥ 80%" in text and "≤ 5 pt" in text and "≤ 200%" in text
    assert text.count('class="pass"') + text.count('class="fail"') >= 7, "a row per check of v1 and v2"


def test_forgetting_taints_every_version_built_on_one_that_saw_the_item(tmp_path, embedder, tiny):
    """v2 continues v1's weights without replaying its items: it carries what v1 learned all the same."""
    store = tmp_path / "store"
    policy = gated_policy(tmp_path, epochs=40)
    # No replay, and a gate that lets v2 forget: what matters here is only that v2 is built on v1.
    policy.write_text(policy.read_text().replace("replay: retrieval", "replay: none")
                      .replace("max_retention_drop: 0.05", "max_retention_drop: 1.0"))
    first = observe(store, facts(0, 6), embedder, policy)
    consolidate(store, model=tiny, progress=False)
    second = observe(store, facts(6, 12), embedder)
    [v2] = consolidate(store, model=tiny, progress=False)
    assert (v2.version, v2.parent, v2.items_replayed, v2.gate.decision) == ("v2", "v1", 0, "promoted")
    secret = min(first)
    assert rows(store, "SELECT count(*) FROM lineage WHERE item_id = ? AND adapter_version = 'v2'", [secret]) == [(0,)]
    db = open_existing(store)
    try:
        with Memory.open(store, embedder=embedder) as mem:
            mem.forget(secret)
        assert rows(store, "SELECT version, status, tainted FROM adapters ORDER BY version") == [
            ("v1", "retired", True), ("v2", "retired", True)], "both carry the item: rolled back to the base model"
        assert "built on a version that saw forgotten items" in rows(store, "SELECT note FROM adapters "
                                                                           "WHERE version = 'v2'")[0][0]
        with pytest.raises(AdapterError, match="tainted"):
            merge(db, tiny, ["v1", "v2"], method="linear")
    finally:
        db.close()
    [rebuilt] = consolidate(store, model=tiny, progress=False)
    assert (rebuilt.parent, rebuilt.items_new, rebuilt.gate.decision) == (None, 11, "promoted")
    chain = with_db(store, lambda con: registry.ancestors(con, rebuilt.version))
    held = rows(store, "SELECT count(*) FROM lineage WHERE item_id = ? AND adapter_version IN (SELECT unnest(?))",
                [secret, chain])
    assert held == [(0,)], "no active adapter, nor any version under it, saw the forgotten item"
    remaining = {i: item for i, item in {**first, **second}.items() if i != secret}
    assert accuracy_with(tiny, store, rebuilt.version, remaining) >= 0.8


@pytest.mark.parametrize("mode", ["rollback", "retrain"])
def test_on_forget_rollback_or_retrain_alone(tmp_path, embedder, tiny, mode):
    store = tmp_path / "store"
    learned = observe(store, facts(0, 6), embedder, gated_policy(tmp_path, epochs=40, on_forget=mode))
    consolidate(store, model=tiny, progress=False)
    with Memory.open(store, embedder=embedder) as mem:
        mem.forget(min(learned))
    status = rows(store, "SELECT status, tainted FROM adapters WHERE version = 'v1'")
    requests = rows(store, "SELECT train_scope, from_version FROM retrain_requests")
    pending = rows(store, "SELECT count(*) FROM queue WHERE status = 'pending'")[0][0]
    if mode == "rollback":  # the base model answers at once; nothing is rebuilt
        assert status == [("retired", True)] and requests == [] and pending == 0
        assert consolidate(store, model=tiny, progress=False) == []
        return
    # retrain: v1 keeps serving until a rebuild passes the gate, then the request is done
    assert status == [("active", True)] and requests == [("global", None)] and pending == 5
    [rebuilt] = consolidate(store, model=tiny, progress=False)
    assert (rebuilt.parent, rebuilt.items_new, rebuilt.gate.decision) == (None, 5, "promoted")
    assert rows(store, "SELECT version, status FROM adapters ORDER BY version") == [("v1", "retired"),
                                                                                    ("v2", "active")]
    assert rows(store, "SELECT count(*) FROM retrain_requests") == [(0,)]


def test_a_round_of_corrected_values_is_promoted_not_taken_for_forgetting(tmp_path, embedder, tiny):
    """Superseded values leave the retention set: answering the new colour is not forgetting the old one."""
    from engramma.types import Probe

    store = tmp_path / "store"
    old = observe(store, facts(0, 6), embedder, gated_policy(tmp_path, epochs=40))
    consolidate(store, model=tiny, progress=False)
    later = datetime.now(timezone.utc)
    corrected = []
    for item in old.values():
        colour = next(c for c in tiny_lm.COLOURS if c != item.probe.answer)
        name = item.key.removeprefix("colour_")
        corrected.append(Item(text=f"The colour of project {name} is now {colour}.", kind="fact", key=item.key,
                              source="docs", probe=Probe(item.probe.question, colour), ts=later))
    observe(store, corrected, embedder)
    [v2] = consolidate(store, model=tiny, progress=False)
    assert v2.gate.metrics.earlier_probed == 0, "the old values are history, not retention"
    assert v2.gate.decision == "promoted", [c.detail for c in v2.gate.failed]
    assert v2.gate.metrics.new_accuracy >= 0.8


def test_an_evicted_item_returns_to_the_index_when_a_promoted_adapter_fails_its_probe(tmp_path, embedder, tiny):
    store = tmp_path / "store"
    learned = observe(store, facts(0, 8), embedder, gated_policy(tmp_path, epochs=60, evict=True))
    [first] = consolidate(store, model=tiny, progress=False)
    evicted = {i for i, in rows(store, "SELECT id FROM items WHERE NOT in_index AND status = 'kept'")}
    assert evicted and first.gate.decision == "promoted"
    # A round the gate lets through although it wrecks what v1 learned (the thresholds allow anything).
    lax = gated_policy(tmp_path, lr="0.3", epochs=40, evict=True, name="lax.yaml")
    lax.write_text(lax.read_text().replace("min_new_accuracy: 0.8", "min_new_accuracy: 0.0")
                   .replace("max_retention_drop: 0.05", "max_retention_drop: 1.0")
                   .replace("max_perplexity_increase: 2.0", "max_perplexity_increase: 1000.0"))
    observe(store, facts(8, 16), embedder, lax)
    [second] = consolidate(store, model=tiny, progress=False)
    assert second.gate.decision == "promoted" and second.gate.metrics.evicted_checked == len(evicted)
    failed = {i for i, c in rows(store, "SELECT item_id, correct FROM probe_results WHERE evaluated = 'v2'") if c is False}
    back = evicted & failed
    assert back, "the wrecking round must fail some evicted item's probe for this test to mean anything"
    assert not back & {i for i, in rows(store, "SELECT id FROM items WHERE NOT in_index")}
    with Memory.open(store, embedder=embedder) as mem:
        assert mem.check() == []
        item_id = min(back)
        assert item_id in {h.id for h in mem.recall(learned[item_id].text, k=3)}, "recalled again"


def test_the_gate_reads_the_users_general_text_and_can_leave_promotion_to_a_person(tmp_path, embedder, tiny):
    from engramma.updater.evaluate import GENERAL_TEXT
    from engramma.updater.gate import GateError

    store = tmp_path / "store"
    general = tmp_path / "general.txt"
    general.write_text("First paragraph of the team's own text.\n\nSecond paragraph, about the weather.\n")
    policy = gated_policy(tmp_path, epochs=40)
    policy.write_text(policy.read_text() + f"  promote: manual\n  general_text: {general}\n")
    observe(store, facts(0, 4), embedder, policy)
    [result] = consolidate(store, model=tiny, progress=False)
    assert result.gate.passed and result.gate.decision == "candidate", [c.detail for c in result.gate.failed]
    assert rows(store, "SELECT status FROM adapters") == [("candidate",)], "a person promotes it"
    assert result.gate.metrics.general_texts == len(GENERAL_TEXT) + 2, "the project's text and the user's two"
    general.unlink()
    observe(store, facts(4, 6), embedder)
    with pytest.raises(GateError, match="gate.general_text: cannot read"):
        consolidate(store, model=tiny, progress=False)

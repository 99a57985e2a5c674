"""Several processes on one store: they take turns, nobody sees a lock error, every count comes out exact."""
from __future__ import annotations

import json
import time

import duckdb
import pytest

from engramma import Item, Memory, StoreBusy
from engramma.memory import MemoryConfig

INGEST_ITEMS = 1_500
BOB_ITEMS, CAROL_ITEMS = 200, 50

# Both children open the store, say they are ready, and wait for the parent's "go" so their work overlaps.
BARRIER = """
    import json, os, sys, time
    from engramma import Item, Memory

    def ready_then_wait(name):
        open(f"ready-{name}", "w").close()
        while not os.path.exists("go"):
            time.sleep(0.01)
"""

# Child A: ingests continuously, mostly in batches of 25, with single observes mixed in.
INGESTER = BARRIER + """
    memory = Memory.open(sys.argv[1])
    ready_then_wait("ingester")
    total, n = int(sys.argv[2]), 0
    while n < total:
        size = 1 if n % 150 >= 125 else 25  # every 150 items: 5 batches of 25, then 25 single observes
        items = [Item(f"Shipment {i} left warehouse {i % 9} for store {i % 31}.", scope="agent:ingest")
                 for i in range(n, n + size)]
        records = memory.observe_many(items) if size > 1 else [memory.observe(items[0])]
        print(json.dumps([[r.id, r.item.text] for r in records]), flush=True)
        n += size
    memory.close()
"""

# Child B: writes its own items, then forgets Bob's one by one and the rest by scope, checking stats and
# recall as it goes; it keeps Carol's.
FORGETTER = BARRIER + """
    memory = Memory.open(sys.argv[1])
    ready_then_wait("forgetter")
    bob_items, carol_items = int(sys.argv[2]), int(sys.argv[3])
    bob = []
    for start in range(0, bob_items, 20):
        bob += [r.id for r in memory.observe_many(
            [Item(f"Bob's note {i}: call the plumber about leak number {i}.", scope="user:bob")
             for i in range(start, start + 20)])]
    carol = [r.id for r in memory.observe_many(
        [Item(f"Carol's reminder {i}: water the orchids.", scope="user:carol") for i in range(carol_items)])]
    assert memory.stats().by_scope["user:bob"] == bob_items
    forgotten = set()
    for n, item_id in enumerate(bob[: bob_items // 2]):
        assert memory.forget(item_id) == 1
        forgotten.add(item_id)
        hits = memory.recall(f"plumber leak number {n}", k=5, scope="user:bob")
        assert not forgotten & {h.id for h in hits}, "a forgotten item was recalled"
        assert {h.item.scope for h in hits} <= {"user:bob", "global"}, hits
        if n % 10 == 0:
            stats = memory.stats()
            assert stats.by_scope["user:bob"] == bob_items - len(forgotten), stats.by_scope
            assert stats.by_scope["user:carol"] == carol_items
    assert memory.forget(scope="user:bob") == bob_items - len(forgotten)
    assert "user:bob" not in memory.stats().by_scope
    assert memory.recall("plumber leak", k=5, scope="user:bob") == []
    print(json.dumps({"bob": bob, "carol": carol}), flush=True)
    memory.close()
"""


def wait_until_ready(children: dict, tmp_path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not all((tmp_path / f"ready-{name}").exists() for name in children):
        for name, child in children.items():
            assert child.poll() is None, f"{name} exited early:\n{child.stderr_path.read_text()}"
        assert time.monotonic() < deadline, "the children did not get ready in time"
        time.sleep(0.05)
    (tmp_path / "go").touch()


def assert_clean_exit(name: str, child) -> None:
    child.wait()
    stderr = child.stderr_path.read_text()
    assert child.returncode == 0, f"{name} failed:\n{stderr}"
    assert "Traceback" not in stderr and "lock" not in stderr.lower(), f"{name} printed:\n{stderr}"


def test_an_ingester_and_a_forgetter_at_once_finish_with_exact_counts(spawn, store_path, embedder, tmp_path,
                                                                      keep_everything):
    # The store keeps every item (the default policy would drop the templated near-duplicates), and the
    # children, opening it without naming a policy, use the store's.
    Memory.open(store_path, embedder=embedder, policy=keep_everything).close()
    children = {
        "ingester": spawn(INGESTER, store_path, INGEST_ITEMS),
        "forgetter": spawn(FORGETTER, store_path, BOB_ITEMS, CAROL_ITEMS),
    }
    wait_until_ready(children, tmp_path)
    ingested = dict(entry for line in children["ingester"].stdout for entry in json.loads(line))
    forgetter_output = children["forgetter"].stdout.read()
    for name, child in children.items():
        assert_clean_exit(name, child)
    mine = json.loads(forgetter_output)
    assert len(ingested) == INGEST_ITEMS and len(mine["bob"]) == BOB_ITEMS and len(mine["carol"]) == CAROL_ITEMS

    with Memory.open(store_path, embedder=embedder) as memory:
        stats = memory.stats()
        assert stats.items == INGEST_ITEMS + CAROL_ITEMS
        assert stats.by_scope == {"agent:ingest": INGEST_ITEMS, "user:carol": CAROL_ITEMS}
        assert stats.forgotten == BOB_ITEMS and stats.indexed == stats.items
        assert stats.events == INGEST_ITEMS + BOB_ITEMS + CAROL_ITEMS + BOB_ITEMS  # each observe and each forget
        assert memory.check() == []
        some_id, some_text = next(iter(ingested.items()))
        assert memory.recall(some_text, k=1, scope="agent:ingest")[0].id == some_id
    with duckdb.connect(str(store_path / "engramma.duckdb"), read_only=True) as con:
        kept = dict(con.execute("SELECT id, text FROM items WHERE scope = 'agent:ingest' AND status = 'kept'").fetchall())
        ids = [r[0] for r in con.execute("SELECT id FROM items ORDER BY id").fetchall()]
    assert kept == ingested, "every confirmed item is stored under the id it was given"
    assert ids == list(range(1, INGEST_ITEMS + BOB_ITEMS + CAROL_ITEMS + 1)), "ids are unique and dense"
    # The two really took turns: the forgetter's writes fell between the ingester's, not before or after all.
    first, last = min(mine["bob"]), max(mine["carol"])
    assert any(first < i < last for i in ingested), "the children did not overlap"


# Writes 4 batches with its store open, waiting after each until the parent has looked ("ack-N").
WRITER = """
    import json, os, sys, time
    from engramma import Item, Memory
    memory = Memory.open(sys.argv[1])
    for batch in range(4):
        records = memory.observe_many(
            [Item(f"Child note {batch}-{i}: the {['red', 'green', 'blue'][i % 3]} door code is {batch}{i}7.",
                  scope="user:child") for i in range(50)])
        print(json.dumps([[r.id, r.item.text] for r in records]), flush=True)
        while not os.path.exists(f"ack-{batch}"):
            time.sleep(0.01)
    memory.close()
"""


def test_an_open_memory_sees_another_process_writes_without_reopening(spawn, store_path, embedder, keep_everything,
                                                                      tmp_path):
    with Memory.open(store_path, embedder=embedder, policy=keep_everything) as memory:
        mine = memory.observe_many([Item(f"Parent fact {n}: the office plant is a fern.") for n in range(5)])
        child = spawn(WRITER, store_path)
        written: dict[int, str] = {}
        for batch in range(4):
            line = child.stdout.readline()
            assert line, child.stderr_path.read_text()
            new = dict(json.loads(line))
            written |= new
            # The child still has the store open; this process sees its batch at once, without reopening.
            for item_id, text in list(new.items())[::12]:
                assert memory.recall(text, k=1, scope="user:child")[0].id == item_id
            assert memory.stats().items == len(mine) + len(written)
            assert {h.id for h in memory.recall("office plant", k=10)} == {r.id for r in mine}, "scopes stay apart"
            (tmp_path / f"ack-{batch}").touch()
        assert_clean_exit("writer", child)

        stats = memory.stats()
        assert stats.items == stats.indexed == 205 and stats.by_scope == {"global": 5, "user:child": 200}
        assert memory.check() == []
        later = memory.observe(Item("Written by the parent afterwards."))
        assert later.id == max(written) + 1, "the parent's next id follows the child's, never reusing one"
        assert memory.get(max(written)).item.text == written[max(written)]


HOLDER = """
    import os, sys, time
    from engramma import Memory
    memory = Memory.open(sys.argv[1])
    with memory.store.transaction():
        print("holding", flush=True)
        deadline = time.monotonic() + 120
        while not os.path.exists("release") and time.monotonic() < deadline:
            time.sleep(0.01)
    memory.close()
"""


def test_a_store_held_too_long_raises_store_busy_and_loses_nothing(spawn, store_path, embedder, tmp_path):
    impatient = MemoryConfig(busy_timeout=0.5)
    memory = Memory.open(store_path, embedder=embedder, config=impatient)
    try:
        before = [r.id for r in memory.observe_many([Item("Refunds take 30 days."), Item("Alice likes tea.")])]
        child = spawn(HOLDER, store_path)
        assert child.stdout.readline() == "holding\n", child.stderr_path.read_text()

        with pytest.raises(StoreBusy, match=r"another process held the store for over 0\.5 s.*busy_timeout"):
            Memory.open(store_path, embedder=embedder, config=impatient)
        with pytest.raises(StoreBusy):
            memory.observe(Item("This one waits too long."))
        with pytest.raises(StoreBusy):
            memory.forget(before[0])

        (tmp_path / "release").touch()
        assert_clean_exit("holder", child)
        after = memory.observe(Item("This one gets through."))
        assert after.id == before[-1] + 1, "the refused observe took no id"
        assert [memory.get(i).item.text for i in before] == ["Refunds take 30 days.", "Alice likes tea."]
        stats = memory.stats()
        assert (stats.items, stats.forgotten) == (3, 0) and memory.check() == []
    finally:
        memory.close()


def test_the_cli_forgets_while_an_agent_holds_the_store_open(store_path, embedder, keep_everything):
    """`engramma forget` and `engramma stats` in their own processes, while this process keeps its Memory
    open and goes on recalling and writing: both succeed and each sees the other's changes."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "engramma.cli", *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=300)

    with Memory.open(store_path, embedder=embedder, policy=keep_everything) as memory:
        memory.observe_many([Item(f"Bob's locker {n} holds his {t} kit.", scope="user:bob")
                             for n, t in enumerate(["tennis", "climbing", "diving"])])
        memory.observe_many([Item("Alice parks in bay 14.", scope="user:alice")])
        assert memory.recall("locker kit", k=3, scope="user:bob")
        forgot = cli("forget", store_path, "--scope", "user:bob")
        assert forgot.returncode == 0 and forgot.stdout.strip() == "forgot 3 items", forgot.stderr
        assert "lock" not in forgot.stderr.lower()
        assert memory.recall("locker kit", k=3, scope="user:bob") == [], "the agent sees the forget at once"
        memory.observe(Item("Alice's badge number is 5521.", scope="user:alice"))
        stats = cli("stats", store_path, "--json")
        assert stats.returncode == 0, stats.stderr
        counts = json.loads(stats.stdout)
        assert counts["by_scope"] == {"user:alice": 2} and counts["forgotten"] == 3
        assert memory.check() == []

"""A process killed with SIGKILL mid-ingest loses nothing it had confirmed, and leaves a consistent store."""
from __future__ import annotations

import json
import os
import signal
import struct

import pytest

from engramma import Item, Memory
from engramma.memory.view import MAGIC

TOTAL, BATCH = 5_000, 50

# Opens the store and ingests TOTAL items in batches; after each observe_many returns it prints the
# batch's ids and texts as one JSON line, so the parent knows exactly which calls had returned. The policy
# indexes everything, so that every returned item must be found again (the default drops near-duplicates).
INGEST = """
    import json, sys
    from engramma import Item, Memory
    from engramma.memory import MemoryConfig

    path, policy, checkpoint_every, total, batch = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    names = ["Alice", "Bruno", "Chen", "Dara", "Emeka", "Fatima", "Goran"]
    cities = ["Lisbon", "Osaka", "Lagos", "Quito", "Oslo", "Perth", "Tunis", "Lima", "Hanoi", "Graz", "Cork"]
    products = ["router", "kettle", "invoice", "password", "headset", "printer", "parcel", "subscription",
                "thermostat", "camera", "laptop", "voucher", "scooter"]
    problems = ["stopped working after an update", "arrived damaged", "was charged twice", "cannot be found",
                "makes a loud noise", "shows the wrong language", "needs a refund", "was never delivered",
                "is too slow", "keeps disconnecting", "has a missing part", "expired early",
                "cannot be reset", "was sent to the wrong address", "has a cracked screen", "overheats",
                "lost its settings"]

    def item(n):
        text = (f"Ticket {n}: {names[n % 7]} from {cities[n % 11]} reports that the {products[n % 13]} "
                f"{problems[n % 17]}.")
        return Item(text=text, scope="global" if n % 3 else f"user:{names[n % 7].lower()}")

    memory = Memory.open(path, policy=policy, config=MemoryConfig(checkpoint_every=checkpoint_every))
    for start in range(0, total, batch):
        records = memory.observe_many([item(n) for n in range(start, start + batch)])
        print(json.dumps([[r.id, r.item.text, r.item.scope] for r in records]), flush=True)
"""


def checkpoint_seq(store_path) -> int | None:
    """The event seq a checkpoint file reflects (read from its header), or None without one."""
    path = store_path / "index" / "checkpoint.bin"
    if not path.exists():
        return None
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[len(MAGIC):len(MAGIC) + 8])
    return json.loads(data[len(MAGIC) + 8:len(MAGIC) + 8 + header_len])["seq"]


def returned_batches(lines: list[str]) -> list[list]:
    """The batches the child printed in full (a line cut by the kill is not counted)."""
    batches = []
    for line in lines:
        if line.endswith("\n"):
            batches.append(json.loads(line))
    return batches


@pytest.mark.parametrize("checkpoint_every, kill_after", [
    pytest.param(100_000, 1_000, id="no-checkpoint-yet"),
    pytest.param(500, 1_100, id="mid-checkpoint-window"),
])
def test_sigkill_mid_ingest_loses_nothing_confirmed(spawn, store_path, embedder, keep_everything, checkpoint_every,
                                                    kill_after):
    child = spawn(INGEST, store_path, keep_everything, checkpoint_every, TOTAL, BATCH)
    lines, confirmed = [], 0
    while confirmed < kill_after:
        line = child.stdout.readline()
        assert line, f"the child stopped before the kill:\n{child.stderr_path.read_text()}"
        lines.append(line)
        confirmed += len(json.loads(line))
    assert child.poll() is None, "the child must still be ingesting when it is killed"
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    lines.extend(child.stdout.readlines())  # batches that returned while we were reading
    returned = [entry for batch in returned_batches(lines) for entry in batch]
    assert kill_after <= len(returned) < TOTAL, "killed mid-way"

    saved_at = checkpoint_seq(store_path)
    if checkpoint_every < kill_after:
        assert saved_at is not None and 0 < saved_at < len(returned), "a checkpoint exists and a tail follows it"
    else:
        assert saved_at is None, "the view must be rebuilt from the tables alone"

    with Memory.open(store_path, embedder=embedder) as memory:
        for item_id, text, scope in returned:
            record = memory.get(item_id)
            assert (record.item.text, record.item.scope) == (text, scope)
        stats = memory.stats()
        # A batch is one transaction: the store holds every returned batch, plus at most the one in flight.
        assert stats.items % BATCH == 0 and len(returned) <= stats.items <= len(returned) + BATCH
        assert stats.indexed == stats.items == stats.events
        assert memory.check() == []
        samples = [returned[0], returned[len(returned) // 2], returned[-1]]
        if saved_at:
            samples += [returned[saved_at - 1], returned[saved_at]]  # the last one checkpointed, the first replayed
        for item_id, text, scope in samples:
            assert memory.recall(text, k=3, scope=scope)[0].id == item_id
        after = memory.observe(Item("Written after the crash."))
        assert after.id == stats.items + 1, "ids continue after the crash and are never reused"
        assert memory.check() == []

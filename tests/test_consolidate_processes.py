"""Consolidation across real processes: two jobs at once never train the same item, a job killed with
SIGKILL gives its items back when its lease runs out or is resumed to the same result, and a two-process
DDP run under `accelerate launch` matches one process."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import duckdb
import pytest
import tiny_lm
from conftest import child_env
from safetensors.torch import load_file

from engramma import Memory
from engramma.updater import consolidate

CONSOLIDATE = """
    import os, sys, time
    from engramma.updater import consolidate
    store, model, go, max_items, lease = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    from engramma.updater import load_model
    lm = load_model(model)  # load before the start signal, so the jobs really overlap
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.01)
    results = consolidate(store, model=lm, max_items=max_items or None, lease_seconds=lease, progress=False, gate=False)
    print(";".join(f"{r.version}:{r.items_new}" for r in results), flush=True)
"""


def rows(store, sql, params=()):
    with duckdb.connect(str(store / "engramma.duckdb"), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def wait_for(predicate, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def make_store(tmp_path, embedder, n, epochs=30, name="store"):
    store = tmp_path / name
    with Memory.open(store, embedder=embedder, policy=tiny_lm.facts_policy(tmp_path, epochs=epochs,
                                                                           name=f"{name}.yaml")) as mem:
        mem.observe_many(tiny_lm.colour_facts(tiny_lm.TAUGHT[:n], seed=0))
    return store


def test_two_jobs_at_once_never_train_the_same_item(tmp_path, embedder, spawn, tiny_model_path):
    store = make_store(tmp_path, embedder, 30)
    go = tmp_path / "go"
    children = [spawn(CONSOLIDATE, store, tiny_model_path, go, 10, 600) for _ in range(2)]
    for child in children:
        assert child.stdout.readline().strip() == "ready", child.stderr_path.read_text()[-2000:]
    go.touch()
    outputs = []
    for child in children:
        assert child.wait(timeout=300) == 0, child.stderr_path.read_text()[-3000:]
        outputs.append(child.stdout.read().strip())
    assert sorted(o.split(":")[1] for o in outputs) == ["10", "10"], outputs
    consolidate(store, model=str(tiny_model_path), progress=False, gate=False)  # the ten nobody claimed
    learned = rows(store, "SELECT adapter_version, item_id FROM lineage WHERE role = 'new'")
    by_item: dict[int, list[str]] = {}
    for version, item in learned:
        by_item.setdefault(item, []).append(version)
    assert len(by_item) == 30 and all(len(v) == 1 for v in by_item.values()), by_item
    assert {v for v, _ in learned} == {"v1", "v2", "v3"}
    assert rows(store, "SELECT DISTINCT status FROM queue") == [("done",)]


def test_a_killed_jobs_lease_runs_out_and_its_items_return(tmp_path, embedder, spawn, tiny_model_path):
    store = make_store(tmp_path, embedder, 8, epochs=2000)
    go = tmp_path / "go"
    go.touch()
    child = spawn(CONSOLIDATE, store, tiny_model_path, go, 0, 3)  # a 3-second lease, renewed while it trains
    jobs = store / "adapters" / ".jobs"
    wait_for(lambda: jobs.is_dir() and any(jobs.glob("*/checkpoints/epoch-*/state.json")), what="training")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert consolidate(store, model=str(tiny_model_path), progress=False, gate=False) == [], "its leases still hold"
    time.sleep(3.5)
    policy = tmp_path / "store.yaml"
    policy.write_text(policy.read_text().replace("epochs: 2000", "epochs: 5"))  # a cheap second run
    [result] = consolidate(store, model=str(tiny_model_path), progress=False, gate=False)
    assert (result.status, result.items_new) == ("trained", 8)
    statuses = dict(rows(store, "SELECT status, count(*) FROM jobs GROUP BY ALL"))
    assert statuses == {"abandoned": 1, "done": 1}
    assert rows(store, "SELECT DISTINCT status FROM queue") == [("done",)]
    assert [p.name for p in jobs.iterdir()] == [], "the abandoned job's folder (its items' tokens) was removed"


def adapter_weights(store, version="v1"):
    return load_file(str(store / "adapters" / version / "adapter_model.safetensors"))


def test_sigkill_mid_training_then_resume_gives_the_uninterrupted_result(tmp_path, embedder, spawn, tiny_model_path):
    reference = make_store(tmp_path, embedder, 10, epochs=300, name="reference")
    crashed = tmp_path / "crashed"
    shutil.copytree(reference, crashed)
    [uninterrupted] = consolidate(reference, model=str(tiny_model_path), progress=False, gate=False)

    go = tmp_path / "go"
    go.touch()
    child = spawn(CONSOLIDATE, crashed, tiny_model_path, go, 0, 600)
    jobs = crashed / "adapters" / ".jobs"
    wait_for(lambda: jobs.is_dir() and any(jobs.glob("*/checkpoints/epoch-*/state.json")), what="a checkpoint")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert rows(crashed, "SELECT count(*) FROM adapters") == [(0,)]

    [resumed] = consolidate(crashed, model=str(tiny_model_path), resume=True, progress=False, gate=False)
    assert resumed.report.resumed_from_epoch is not None and resumed.report.resumed_from_epoch < 299
    assert resumed.report.steps == uninterrupted.report.steps
    assert resumed.report.losses == pytest.approx(uninterrupted.report.losses, abs=1e-6)
    a, b = adapter_weights(reference), adapter_weights(crashed)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-6, name
    assert rows(crashed, "SELECT status FROM jobs") == [("done",)]


def test_two_process_ddp_matches_one_process(tmp_path, embedder, tiny_model_path):
    one = make_store(tmp_path, embedder, 10, epochs=10, name="one")
    two = tmp_path / "two"
    shutil.copytree(one, two)
    consolidate(one, model=str(tiny_model_path), progress=False, gate=False)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              "29517", "-m", "engramma.cli", "consolidate", str(two), "--model", str(tiny_model_path), "--no-gate", "--json"]
    done = subprocess.run(launch, capture_output=True, text=True, env=child_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Two processes really trained together (accelerate can silently run each alone, or only one).
    [result] = json.loads(done.stdout)
    assert result["processes"] == 2, result
    assert rows(two, "SELECT version, items_new, json_extract(config, '$.processes') FROM adapters") == [
        ("v1", 10, "2")]
    assert rows(one, "SELECT json_extract(config, '$.processes') FROM adapters") == [("1",)]
    a, b = adapter_weights(one), adapter_weights(two)
    # The all-reduce sums in another order than one process does, and Adam magnifies that where gradients are
    # near zero (1.2e-5 seen); a process whose gradient were not averaged in would move weights by ~the lr.
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-4, name
    assert max(float(t.abs().max()) for t in b.values()) > 1e-2, "the adapters really trained"


STEALABLE = """
    import sys
    from engramma.updater import consolidate
    from engramma.updater.consolidate import LeaseLost
    try:
        consolidate(sys.argv[1], model=sys.argv[2], lease_seconds=4, progress=False, gate=False)
        print("recorded", flush=True)
    except LeaseLost as e:
        print("lost:", e, flush=True)
"""


def test_a_job_that_loses_its_items_to_another_job_records_nothing(tmp_path, embedder, spawn, tiny_model_path):
    """A job paused past its lease (here: its items taken by hand, as another job would take expired ones)
    must not record an adapter for items another job now trains."""
    from engramma.memory.store import open_existing

    store = make_store(tmp_path, embedder, 8, epochs=2000)
    child = spawn(STEALABLE, store, tiny_model_path)
    db = open_existing(store)  # takes turns with the child, as any engramma process does
    try:
        def claimed() -> int:
            with db.transaction() as con:
                return con.execute("SELECT count(*) FROM queue WHERE status = 'claimed'").fetchall()[0][0]

        wait_for(lambda: claimed() == 8, what="a claim")
        with db.transaction() as con:
            con.execute("UPDATE queue SET lease_owner = 'job-thief' WHERE status = 'claimed'")
    finally:
        db.close()
    assert child.wait(timeout=120) == 0, child.stderr_path.read_text()[-3000:]
    assert child.stdout.read().startswith("lost: "), "the heartbeat noticed and stopped training"
    assert rows(store, "SELECT count(*) FROM adapters") == [(0,)]
    assert rows(store, "SELECT DISTINCT status, lease_owner FROM queue") == [("claimed", "job-thief")], \
        "the other job's claims are left alone"


def test_a_wall_clock_budget_stops_training_between_steps_and_requeues(tmp_path, embedder, tiny_model_path):
    store = make_store(tmp_path, embedder, 8, epochs=2000)
    started = time.monotonic()
    [result] = consolidate(store, model=str(tiny_model_path), progress=False, gate=False, max_minutes=0.05)
    assert time.monotonic() - started < 60
    assert result.status == "stopped" and "budget ran out" in result.note and result.version is None
    assert rows(store, "SELECT count(*) FROM adapters") == [(0,)]
    assert rows(store, "SELECT DISTINCT status FROM queue") == [("pending",)], "its items wait for the next run"
    assert not any((store / "adapters" / ".jobs").glob("*")), "no tokens left behind"

"""The update queue and the jobs that drain it: claims with leases, so that two jobs never train the same item
and a crashed job's items go back to the queue once its lease runs out.

This module owns the `queue` and `jobs` tables: no other module reads or changes their rows. A queue row is
`pending`, `claimed` (leased to a job until `lease_expires`), `done` (learned by an adapter), `skipped`
(forgotten, superseded or expired before it was trained) or `failed` (rejected by the gate MAX_ATTEMPTS times).
A claimed row whose lease has run out counts as pending to every other job. INVARIANT: queue rows are never
deleted by consolidation; forgetting withdraws pending ones.
"""
from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa

from engramma.memory import items as item_rows
from engramma.memory.store import insert, naive_utc, scalar
from engramma.types import Name
from engramma.updater.plan import ConsolidationPlan

LEASE_SECONDS = 600.0  # a job renews its lease as it trains; a crashed job's items return after this
MAX_ATTEMPTS = 3  # a rejected item is trained again at most this often, then it stays `failed`


class QueueStatus(Name):
    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


class JobStatus(Name):
    RUNNING = "running"
    DONE = "done"  # it recorded a new version
    SKIPPED = "skipped"  # nothing to train
    FAILED = "failed"  # an error, or out of time; its items went back to the queue
    ABANDONED = "abandoned"  # its lease ran out, or its items were taken: nobody resumes it


ROW_SCHEMA = pa.schema([("item_id", pa.int64()), ("status", pa.string()), ("train_scope", pa.string()),
                        ("priority", pa.int32()), ("enqueued_at", pa.timestamp("us")), ("corrects", pa.int64())])

CLAIMABLE = "(status = 'pending' OR (status = 'claimed' AND lease_expires < $now))"


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    train_scope: str
    folder: Path  # checkpoints and the frozen dataset: adapters/.jobs/<job_id>/
    owner: str


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def new_job(store_folder: Path, train_scope: str) -> Job:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    job_id = f"job-{stamp}-{uuid.uuid4().hex[:6]}"
    return Job(job_id, train_scope, store_folder / "adapters" / ".jobs" / job_id, owner())


def enqueue(con: duckdb.DuckDBPyConnection, item_ids: list[int], *, train_scopes: list[str], priorities: list[int],
            corrects: list[int | None], now: datetime) -> None:
    """Queue newly observed items for training (`corrects`: the superseded item each one corrects, if any)."""
    insert(con, "queue", {
        "item_id": item_ids, "status": [QueueStatus.PENDING.value] * len(item_ids), "train_scope": train_scopes,
        "priority": priorities, "enqueued_at": [naive_utc(now)] * len(item_ids), "corrects": corrects,
    }, ROW_SCHEMA)


def withdraw(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> None:
    """Forgotten items leave the queue unless a job holds them (it finds them forgotten when it ends)."""
    con.execute("DELETE FROM queue WHERE item_id IN (SELECT unnest(?)) AND status = 'pending'", [item_ids])


def pending_count(con: duckdb.DuckDBPyConnection) -> int:
    return scalar(con, "SELECT count(*) FROM queue WHERE status = 'pending'")


def queued_scopes(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> dict[int, str]:
    """The train scope each of `item_ids` was queued for, whatever became of it."""
    return dict(con.execute("SELECT item_id, train_scope FROM queue WHERE item_id IN (SELECT unnest(?))",
                            [item_ids]).fetchall())


def status(con: duckdb.DuckDBPyConnection, item_id: int) -> QueueStatus | None:
    """The item's queue status; None if it was never queued (or withdrawn when forgotten)."""
    found = scalar(con, "SELECT status FROM queue WHERE item_id = ?", [item_id])
    return QueueStatus(found) if found is not None else None


def requeue_rejected(con: duckdb.DuckDBPyConnection, version: str) -> None:
    """A rejected version's items go back to pending, or to `failed` once tried MAX_ATTEMPTS times."""
    con.execute("UPDATE queue SET status = 'pending', lease_owner = NULL, lease_expires = NULL, adapter_version = NULL "
                "WHERE adapter_version = ? AND status = 'done' AND attempts < ?", [version, MAX_ATTEMPTS])
    con.execute("UPDATE queue SET status = 'failed' WHERE adapter_version = ? AND status = 'done'", [version])


def requeue_learned(con: duckdb.DuckDBPyConnection, item_ids: list[int], now: datetime) -> None:
    """Items some versions learned go back to pending, to be learned again (unlearning), where still current."""
    con.execute(
        "UPDATE queue SET status = 'pending', lease_owner = NULL, lease_expires = NULL, adapter_version = NULL "
        "WHERE status = 'done' AND item_id IN (SELECT unnest(?))", [item_rows.current(con, item_ids, now)])


def pending_among(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> int:
    return scalar(con, "SELECT count(*) FROM queue WHERE status = 'pending' AND item_id IN (SELECT unnest(?))",
                  [item_ids])


def done_in_scope(con: duckdb.DuckDBPyConnection, train_scope: str) -> list[int]:
    """Items learned for `train_scope` by some version."""
    return [r[0] for r in con.execute("SELECT item_id FROM queue WHERE train_scope = ? AND status = 'done' ORDER BY 1",
                                      [train_scope]).fetchall()]


def in_scope(con: duckdb.DuckDBPyConnection, train_scope: str) -> list[int]:
    """Every item ever queued for `train_scope`, whatever its status, in id order."""
    return [r[0] for r in con.execute("SELECT item_id FROM queue WHERE train_scope = ? ORDER BY 1",
                                      [train_scope]).fetchall()]


def held_by(con: duckdb.DuckDBPyConnection, job: Job, item_ids: list[int]) -> int:
    """How many of `item_ids` the job still holds under its lease."""
    return scalar(con, "SELECT count(*) FROM queue WHERE item_id IN (SELECT unnest(?)) AND lease_owner = ? "
                       "AND status = 'claimed'", [item_ids, job.job_id])


def running_jobs(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT job_id FROM jobs WHERE status = 'running'").fetchall()}


def scopes_waiting(con: duckdb.DuckDBPyConnection, now: datetime) -> dict[str, int]:
    """Train scopes with claimable items, and how many."""
    return dict(con.execute(f"SELECT train_scope, count(*) FROM queue WHERE {CLAIMABLE} GROUP BY ALL ORDER BY 1",
                            {"now": naive_utc(now)}).fetchall())


def skip_stale(con: duckdb.DuckDBPyConnection, now: datetime) -> int:
    """Claimable items that should no longer be learned: forgotten, or not current (superseded or expired)."""
    claimable = [r[0] for r in con.execute(f"SELECT item_id FROM queue WHERE {CLAIMABLE} ORDER BY 1",
                                           {"now": naive_utc(now)}).fetchall()]
    stale = sorted(set(claimable) - set(item_rows.current(con, claimable, now)))
    if stale:
        con.execute("UPDATE queue SET status = 'skipped', lease_owner = NULL, lease_expires = NULL "
                    "WHERE item_id IN (SELECT unnest(?))", [stale])
    return len(stale)


def abandon_expired(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
    """Running jobs whose leases ran out lose their items to the next claim: mark them abandoned, so that
    nobody resumes them and their folders are cleaned."""
    con.execute("UPDATE jobs SET status = 'abandoned' WHERE status = 'running' AND job_id IN ("
                "SELECT DISTINCT lease_owner FROM queue WHERE status = 'claimed' AND lease_expires < ?)",
                [naive_utc(now)])


def start(con: duckdb.DuckDBPyConnection, job: Job, *, parent: str | None, now: datetime, config: dict) -> None:
    con.execute("INSERT INTO jobs (job_id, status, train_scope, parent, owner, folder, started_at, heartbeat_at, error) "
                "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                [job.job_id, job.train_scope, parent, job.owner, str(job.folder), naive_utc(now), naive_utc(now),
                 json.dumps(config)])


def claim(con: duckdb.DuckDBPyConnection, job: Job, *, limit: int | None, lease_seconds: float,
          now: datetime) -> list[int]:
    """Lease up to `limit` claimable items of the job's train scope, highest priority first, oldest first."""
    until = naive_utc(now + timedelta(seconds=lease_seconds))
    rows = con.execute(
        f"SELECT item_id FROM queue WHERE {CLAIMABLE} AND train_scope = $scope "
        f"ORDER BY priority DESC, enqueued_at, item_id {'LIMIT $limit' if limit else ''}",
        {"now": naive_utc(now), "scope": job.train_scope, **({"limit": limit} if limit else {})}).fetchall()
    ids = [r[0] for r in rows]
    if ids:
        con.execute("UPDATE queue SET status = 'claimed', lease_owner = ?, lease_expires = ?, attempts = attempts + 1 "
                    "WHERE item_id IN (SELECT unnest(?))", [job.job_id, until, ids])
    return ids


def renew(con: duckdb.DuckDBPyConnection, job: Job, *, lease_seconds: float, now: datetime) -> int:
    """Extend the job's leases; returns how many items it still holds."""
    con.execute("UPDATE queue SET lease_expires = ? WHERE lease_owner = ? AND status = 'claimed'",
                [naive_utc(now + timedelta(seconds=lease_seconds)), job.job_id])
    con.execute("UPDATE jobs SET heartbeat_at = ?, owner = ? WHERE job_id = ?", [naive_utc(now), job.owner, job.job_id])
    return scalar(con, "SELECT count(*) FROM queue WHERE lease_owner = ? AND status = 'claimed'", [job.job_id])


def release(con: duckdb.DuckDBPyConnection, job: Job, *, status: JobStatus, error: str | None,
            now: datetime) -> None:
    """A job that ends without an adapter: its items go back to pending."""
    con.execute("UPDATE queue SET status = 'pending', lease_owner = NULL, lease_expires = NULL "
                "WHERE lease_owner = ? AND status = 'claimed'", [job.job_id])
    con.execute("UPDATE jobs SET status = ?, finished_at = ?, error = coalesce(?, error) WHERE job_id = ?",
                [status, naive_utc(now), error, job.job_id])


def finish(con: duckdb.DuckDBPyConnection, job: Job, *, version: str, now: datetime) -> None:
    con.execute("UPDATE queue SET status = 'done', lease_expires = NULL, adapter_version = ? "
                "WHERE lease_owner = ? AND status = 'claimed'", [version, job.job_id])
    con.execute("UPDATE jobs SET status = 'done', finished_at = ?, adapter_version = ? WHERE job_id = ?",
                [naive_utc(now), version, job.job_id])


def resumable(con: duckdb.DuckDBPyConnection, store_folder: Path, *, now: datetime,
              lease_seconds: float) -> list[Job]:
    """Jobs that stopped without finishing (their process died) and can be taken over: newest first.

    A job can be resumed while it is marked running and its process is gone: its owner is a process of this
    host that no longer exists, or its heartbeat is older than a lease."""
    rows = con.execute("SELECT job_id, train_scope, folder, owner, heartbeat_at FROM jobs WHERE status = 'running' "
                       "ORDER BY started_at DESC").fetchall()
    host = socket.gethostname()
    out = []
    for job_id, scope, folder, job_owner, heartbeat in rows:
        owner_host, _, pid = job_owner.rpartition(":")
        dead = owner_host == host and pid.isdigit() and not _alive(int(pid))
        stale = heartbeat.replace(tzinfo=timezone.utc) < now - timedelta(seconds=lease_seconds)
        if dead or stale:
            out.append(Job(job_id, scope, Path(folder), job_owner))
    return out


def take_over(con: duckdb.DuckDBPyConnection, job: Job, *, lease_seconds: float, now: datetime) -> Job:
    """Continue `job` in this process: its leases are renewed under a new owner. Raises LookupError if some of its
    items were claimed by another job meanwhile (the frozen dataset could not be trained as it was)."""
    ids = job_item_ids(job)
    leased = [r[0] for r in con.execute("SELECT item_id FROM queue WHERE item_id IN (SELECT unnest(?)) "
                                        "AND lease_owner = ? AND status = 'claimed'", [ids, job.job_id]).fetchall()]
    held = len(item_rows.kept(con, leased))
    lost = len(ids) - held
    if lost:
        con.execute("UPDATE jobs SET status = 'abandoned' WHERE job_id = ?", [job.job_id])
        raise LookupError(f"{lost} of its items were taken by another job or forgotten since")
    taken = Job(job.job_id, job.train_scope, job.folder, owner())
    con.execute("UPDATE queue SET status = 'claimed', lease_expires = ? WHERE lease_owner = ?",
                [naive_utc(now + timedelta(seconds=lease_seconds)), job.job_id])
    con.execute("UPDATE jobs SET owner = ?, heartbeat_at = ? WHERE job_id = ?", [taken.owner, naive_utc(now), job.job_id])
    return taken


def job_item_ids(job: Job) -> list[int]:
    return [int(i) for i in ConsolidationPlan.read(job.folder).new]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

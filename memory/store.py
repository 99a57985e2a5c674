"""The truth of a store folder: one DuckDB file, held by one process at a time, only while it needs it.

DuckDB lets one process open a file. Several processes share a store by taking turns: a process opens the
file for a transaction and keeps it open afterwards (an open costs ~12 ms) until another process asks for it,
then closes it at once. Asking is an `flock` on `.waiting.lock`; holding is an `flock` on `.write.lock`.
Both are released by the kernel when a process dies, so a crash never leaves a store locked.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import random
import select
import struct
import tempfile
import threading
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa

from engramma.errors import StoreBusy, StoreError
from engramma.types import Item, Probe

DB_FILE = "engramma.duckdb"
SCHEMA_VERSION = 5


def schema_v1(dim: int) -> list[str]:
    # INVARIANT: every TIMESTAMP column holds UTC (naive in DuckDB, made aware again when read).
    return [
        "CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
        # One row per observation, decision included. INVARIANT: rows are never deleted, so ids are never
        # reused; a dropped item never had its text stored, and forgetting erases text, meta and vector,
        # leaving the hash, route, rule and reasons as the audit trail.
        f"""CREATE TABLE items (
            id BIGINT PRIMARY KEY,
            status VARCHAR NOT NULL,            -- kept | dropped | forgotten
            content_hash VARCHAR NOT NULL,
            text VARCHAR,
            kind VARCHAR NOT NULL,
            scope VARCHAR NOT NULL,
            source VARCHAR,
            key VARCHAR,
            prompt VARCHAR,
            response VARCHAR,
            probe_question VARCHAR,
            probe_answer VARCHAR,
            meta JSON,
            ts TIMESTAMP NOT NULL,
            observed_at TIMESTAMP NOT NULL,
            valid_to TIMESTAMP,
            forgotten_at TIMESTAMP,
            in_index BOOLEAN NOT NULL,
            vector FLOAT[{dim}],
            route VARCHAR NOT NULL,
            rule VARCHAR NOT NULL,
            reasons JSON NOT NULL,
            ttl_seconds DOUBLE,
            train_scope VARCHAR,
            priority INTEGER NOT NULL,
            policy_name VARCHAR NOT NULL,
            policy_hash VARCHAR NOT NULL,
            after_consolidation VARCHAR NOT NULL,  -- keep | evict
            duplicate_of BIGINT,
            signals JSON NOT NULL
        )""",
        # Every policy that ever decided, so an old decision can be explained with the rules it was made by.
        """CREATE TABLE policies (
            content_hash VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL,
            origin VARCHAR NOT NULL,
            text VARCHAR NOT NULL,
            first_used_at TIMESTAMP NOT NULL
        )""",
        # INVARIANT: append-only; seq is dense and increasing. The FAISS view replays it.
        """CREATE TABLE events (
            seq BIGINT PRIMARY KEY,
            op VARCHAR NOT NULL,
            item_id BIGINT,
            scope VARCHAR,
            happened_at TIMESTAMP NOT NULL
        )""",
        # Filled by the consolidation, gate and unlearning issues.
        """CREATE TABLE queue (
            item_id BIGINT PRIMARY KEY,
            status VARCHAR NOT NULL,
            train_scope VARCHAR NOT NULL,
            priority INTEGER NOT NULL,
            enqueued_at TIMESTAMP NOT NULL,
            lease_owner VARCHAR,
            lease_expires TIMESTAMP,
            attempts INTEGER NOT NULL DEFAULT 0,
            corrects BIGINT                      -- the superseded item this one corrects, if any
        )""",
        """CREATE TABLE adapters (
            version VARCHAR PRIMARY KEY,
            parent VARCHAR,
            train_scope VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            path VARCHAR NOT NULL,
            base_model VARCHAR NOT NULL,
            config JSON,
            metrics JSON,
            created_at TIMESTAMP NOT NULL
        )""",
        """CREATE TABLE lineage (
            adapter_version VARCHAR NOT NULL,
            item_id BIGINT NOT NULL,
            role VARCHAR NOT NULL
        )""",
    ]


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    """The first column of the first row, or None. (DuckDB 2 leaves a result open after fetchone().)"""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None


def items_schema(dim: int) -> pa.Schema:
    """Arrow types of the `items` columns, for bulk inserts."""
    stamp = pa.timestamp("us")
    return pa.schema([
        ("id", pa.int64()), ("status", pa.string()), ("content_hash", pa.string()), ("text", pa.string()),
        ("kind", pa.string()), ("scope", pa.string()), ("source", pa.string()), ("key", pa.string()),
        ("prompt", pa.string()), ("response", pa.string()), ("probe_question", pa.string()),
        ("probe_answer", pa.string()), ("meta", pa.string()), ("ts", stamp), ("observed_at", stamp),
        ("valid_to", stamp), ("forgotten_at", stamp), ("in_index", pa.bool_()),
        ("vector", pa.list_(pa.float32(), dim)), ("route", pa.string()), ("rule", pa.string()),
        ("reasons", pa.string()), ("ttl_seconds", pa.float64()), ("train_scope", pa.string()),
        ("priority", pa.int32()), ("policy_name", pa.string()), ("policy_hash", pa.string()),
        ("after_consolidation", pa.string()), ("duplicate_of", pa.int64()), ("signals", pa.string()),
        ("traces", pa.string()),
    ])


EVENTS_SCHEMA = pa.schema([("seq", pa.int64()), ("op", pa.string()), ("item_id", pa.int64()),
                           ("scope", pa.string()), ("happened_at", pa.timestamp("us"))])


def insert(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, list], schema: pa.Schema) -> None:
    """Append rows given as columns. A few rows go as statement parameters (~0.5 ms a statement here);
    more go through Arrow, which costs ~2 ms to register but is ~80x faster per row in bulk."""
    names = list(columns)
    n = len(columns[names[0]])
    if n == 0:
        return
    if n <= 16:
        columns = {name: v.to_pylist() if isinstance(v, pa.Array) else v for name, v in columns.items()}
        # Each parameter costs ~0.07 ms to bind here: a column that is NULL in every row is left to its default.
        names = [name for name in names if any(v is not None for v in columns[name])]
        row = "(" + ", ".join("?" * len(names)) + ")"
        params = [columns[name][r] for r in range(n) for name in names]
        con.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES {', '.join([row] * n)}", params)
        return
    arrow = pa.table({name: values if isinstance(values, pa.Array) else pa.array(values, schema.field(name).type)
                      for name, values in columns.items()})
    view = f"new_{table}"
    con.register(view, arrow)
    try:
        con.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM {view}")
    finally:
        con.unregister(view)


# MIGRATIONS[v] takes a store at schema v-1 to schema v. A new store is created at version 1 by `schema_v1`
# and migrated like any other, so every path to the current schema is the one old stores take.
MIGRATIONS: dict[int, list[str]] = {
    # 2: consolidation. Registry rows carry what a training run was and cost; jobs hold their leases and
    # checkpoints; the reservoir replay buffer lives with the store.
    2: [
        *(f"ALTER TABLE adapters ADD COLUMN {column}" for column in (
            "base_model_hash VARCHAR", "policy_hash VARCHAR", "job_id VARCHAR",
            "items_new INTEGER NOT NULL DEFAULT 0", "items_replayed INTEGER NOT NULL DEFAULT 0",
            "tokens BIGINT NOT NULL DEFAULT 0", "steps INTEGER NOT NULL DEFAULT 0", "wall_s DOUBLE",
            "tokens_per_s DOUBLE", "peak_mem_mb DOUBLE", "tainted BOOLEAN NOT NULL DEFAULT false",
            "status_changed_at TIMESTAMP", "note VARCHAR")),
        # queue.status: pending | claimed (leased by lease_owner, a job id) | done | skipped
        "ALTER TABLE queue ADD COLUMN adapter_version VARCHAR",
        """CREATE TABLE jobs (
            job_id VARCHAR PRIMARY KEY,
            status VARCHAR NOT NULL,             -- running | done | failed | skipped
            train_scope VARCHAR NOT NULL,
            parent VARCHAR,
            owner VARCHAR NOT NULL,              -- host:pid of the process running it
            folder VARCHAR NOT NULL,             -- its checkpoints, under adapters/.jobs/
            started_at TIMESTAMP NOT NULL,
            heartbeat_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP,
            adapter_version VARCHAR,
            error VARCHAR
        )""",
        # INVARIANT: at most `reservoir_size` slots per train scope; `seen` counts every item offered.
        """CREATE TABLE reservoir (
            train_scope VARCHAR NOT NULL,
            slot INTEGER NOT NULL,
            item_id BIGINT NOT NULL,
            PRIMARY KEY (train_scope, slot)
        )""",
        "CREATE TABLE reservoir_seen (train_scope VARCHAR PRIMARY KEY, seen BIGINT NOT NULL)",
    ],
    # 3: evaluation and unlearning. One row per (model, item) probed: the accuracy matrix across rounds is a
    # GROUP BY over it. A retrain request asks the next consolidation to rebuild a scope from a clean ancestor.
    3: [
        # the version that was active when this one was promoted: where a rollback returns to
        "ALTER TABLE adapters ADD COLUMN replaced VARCHAR",
        """CREATE TABLE probe_results (
            evaluated VARCHAR NOT NULL,          -- an adapter version, or 'base'
            item_id BIGINT NOT NULL,
            task VARCHAR,                        -- the version that learned the item as new: its round
            correct BOOLEAN,                     -- NULL: the item has no probe, only a log-likelihood
            logprob DOUBLE,                      -- mean log-probability per completion token
            evaluated_at TIMESTAMP NOT NULL,
            PRIMARY KEY (evaluated, item_id)
        )""",
        """CREATE TABLE retrain_requests (
            train_scope VARCHAR PRIMARY KEY,
            from_version VARCHAR,                -- the clean ancestor to rebuild from (NULL: the base model)
            requested_at TIMESTAMP NOT NULL,
            reason VARCHAR NOT NULL
        )""",
    ],
    # 4: explanations that outlive the item. A dropped item never had its text and meta stored, and
    # forgetting erases them, so such an item cannot be judged again: the rules as they were tried at the
    # time (matched or the first failed condition, with text and meta values left out) are kept instead.
    4: ["ALTER TABLE items ADD COLUMN traces JSON"],
    # 5: knowledge augmentation. The pairs an item was trained and judged on, made once when a job planned,
    # erased with the item; a probe result also says whether the held-out wording was answered.
    5: [
        """CREATE TABLE augmentations (
            item_id BIGINT NOT NULL,
            n INTEGER NOT NULL,                  -- the pair's place among the item's pairs
            question VARCHAR,                    -- NULL: the statement itself, as plain text
            answer VARCHAR NOT NULL,             -- what a right reply contains
            source VARCHAR NOT NULL,             -- statement | probe | key | generated | demonstration
            heldout BOOLEAN NOT NULL,            -- never trained on: the gate's held-out wording
            made_at TIMESTAMP NOT NULL,
            PRIMARY KEY (item_id, n)
        )""",
        "ALTER TABLE probe_results ADD COLUMN heldout_correct BOOLEAN",  # NULL: no held-out question
    ],
}


def _wakeup_path(folder: Path) -> Path:
    """The store's wake-up FIFO lives in the temp folder, named by the store's real path, not in the store: a
    named pipe there would break copies of the store (shutil.copytree refuses one). Processes that see another
    temp folder only lose the wake-up: the holder then hands over at its next transaction or after `linger`."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"engramma-{digest}.wakeup"


def _open_fifo(path: Path) -> int:
    """The store's wake-up FIFO, opened read-write and non-blocking (so opening never waits for a peer)."""
    try:
        os.mkfifo(path, 0o644)
    except FileExistsError:
        pass
    return os.open(path, os.O_RDWR | os.O_NONBLOCK)


def _nudge(fd: int) -> None:
    try:
        os.write(fd, b"!")
    except BlockingIOError:  # the pipe is full of unread nudges: the holder will wake anyway
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


_OPEN: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:
    """A store left open at exit is closed cleanly (DuckDB otherwise reports leaked objects as the process ends)."""
    for store in list(_OPEN):
        store.close()


class Store:
    """Transactions on the store's DuckDB file, shared fairly with other processes."""

    def __init__(self, folder: Path, *, busy_timeout: float = 30.0, linger: float = 1.0):
        self.folder = Path(folder)
        self.path = self.folder / DB_FILE
        self.busy_timeout = busy_timeout
        self.linger = linger  # an idle connection is closed after this many seconds even if nobody asks
        self._con: duckdb.DuckDBPyConnection | None = None
        self._last_used = 0.0
        self._mutex = threading.RLock()
        self._write_fd = os.open(self.folder / ".write.lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._wait_fd = os.open(self.folder / ".waiting.lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._wake_fd = _open_fifo(_wakeup_path(self.folder))
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._closed = False
        _OPEN.add(self)

    # -- the lock dance ---------------------------------------------------------------------------------

    def _others_waiting(self) -> bool:
        try:
            fcntl.flock(self._wait_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._wait_fd, fcntl.LOCK_UN)
        return False

    def _acquire(self) -> None:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        fcntl.flock(self._wait_fd, fcntl.LOCK_SH)  # tell the holder we are waiting...
        try:
            nudged = 0.0
            while True:
                try:
                    fcntl.flock(self._write_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - nudged > 0.02:  # ...and wake its watcher (again, now and then)
                        _nudge(self._wake_fd)
                        nudged = time.monotonic()
                    self._sleep_or_give_up(deadline, delay)
                    delay = min(delay * 1.6, 0.05)
        finally:
            fcntl.flock(self._wait_fd, fcntl.LOCK_UN)
        delay = 0.005
        while True:  # a process outside engramma (the duckdb CLI, say) may hold the file without our lock
            try:
                self._con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as e:
                if "lock" not in str(e).lower():
                    fcntl.flock(self._write_fd, fcntl.LOCK_UN)
                    raise StoreError(f"{self.path}: cannot open ({e})") from None
                try:
                    self._sleep_or_give_up(deadline, delay)
                except StoreBusy:
                    fcntl.flock(self._write_fd, fcntl.LOCK_UN)
                    raise
                delay = min(delay * 1.6, 0.1)
        if self._watcher is None or not self._watcher.is_alive():
            self._stop.clear()
            self._watcher = threading.Thread(target=self._watch, name="engramma-store-release", daemon=True)
            self._watcher.start()

    def _sleep_or_give_up(self, deadline: float, delay: float) -> None:
        if time.monotonic() >= deadline:
            raise StoreBusy(
                f"{self.folder}: another process held the store for over {self.busy_timeout:g} s; "
                "try again, or raise busy_timeout"
            )
        time.sleep(delay * (0.5 + random.random()))

    def _release(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
            fcntl.flock(self._write_fd, fcntl.LOCK_UN)

    def _watch(self) -> None:
        """Close the idle connection as soon as another process waits for it, or after `linger`. Sleeps in
        select() on the wake-up FIFO, which a waiting process writes to: polling every few ms instead took
        ~5% of the embedder's throughput on 2 cores, its wake-ups stalling torch's threads."""
        while not self._stop.is_set():
            with self._mutex:
                if self._con is None:
                    return
                idle = time.monotonic() - self._last_used
                if idle >= self.linger or self._others_waiting():
                    self._release()
                    return
                remaining = self.linger - idle
            ready, _, _ = select.select([self._wake_fd], [], [], remaining)
            if ready:
                _drain(self._wake_fd)

    # -- public -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection inside BEGIN/COMMIT; rolled back if the block raises."""
        with self._mutex:
            if self._closed:
                raise StoreError(f"{self.folder}: the store is closed")
            if self._con is None:
                self._acquire()
            con = self._con
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            else:
                con.commit()
            finally:
                self._last_used = time.monotonic()
                if self._others_waiting():
                    self._release()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._stop.set()
            self._release()
            self._closed = True
            watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread() and watcher.is_alive():
            _nudge(self._wake_fd)  # it is in select(): wake it to see the store closed
            watcher.join(timeout=1)
        with self._mutex:
            os.close(self._write_fd)
            os.close(self._wait_fd)
            os.close(self._wake_fd)

    # -- schema -----------------------------------------------------------------------------------------

    def meta(self, con: duckdb.DuckDBPyConnection) -> dict[str, str] | None:
        """The store's meta rows (schema version, embedder, dim, policy), or None before its schema exists."""
        if not scalar(con, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'"):
            return None
        return dict(con.execute("SELECT key, value FROM meta").fetchall())

    def ensure_schema(self, con: duckdb.DuckDBPyConnection, *, dim: int, embedder: str) -> dict[str, str]:
        """Create the schema in a new file, migrate an older one, refuse a newer one. Returns the meta rows."""
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "meta" not in tables:
            if tables:
                raise StoreError(f"{self.path}: a DuckDB file that is not an engramma store (tables: {sorted(tables)})")
            for statement in schema_v1(dim):
                con.execute(statement)
            con.executemany("INSERT INTO meta VALUES (?, ?)",
                            [["schema_version", "1"], ["embedder", embedder], ["dim", str(dim)]])
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        version = int(meta.get("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: written with store schema {version}, but this engramma reads schema "
                f"{SCHEMA_VERSION} at most; upgrade engramma (pip install -U engramma) to open it"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target]:
                con.execute(statement)
            con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(target)])
            meta["schema_version"] = str(target)
        return meta


def open_existing(folder: Path, *, busy_timeout: float = 30.0) -> Store:
    """An existing store's truth, schema checked (migrated if older), for work that needs no index view:
    consolidation, the registry commands."""
    folder = Path(folder)
    if not (folder / DB_FILE).is_file():
        raise StoreError(f"{folder}: no engramma store here; create one with `engramma init {folder}`")
    store = Store(folder, busy_timeout=busy_timeout)
    try:
        with store.transaction() as con:
            tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            if "meta" not in tables:
                raise StoreError(f"{store.path}: a DuckDB file that is not an engramma store")
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            store.ensure_schema(con, dim=int(meta["dim"]), embedder=meta["embedder"])
    except BaseException:
        store.close()
        raise
    return store


# -- item rows and the head file: read and written by Memory, the updater and the CLI alike -------------------

ITEM_COLUMNS = "id, kind, scope, text, source, key, prompt, response, probe_question, probe_answer, meta, ts"


def item_from_row(row: tuple) -> tuple[int, Item]:
    item_id, kind, scope, text, source, key, prompt, response, pq, pa_, meta, ts = row
    item = Item(text=text, kind=kind, scope=scope, source=source, key=key, prompt=prompt, response=response,
                probe=Probe(pq, pa_) if pq is not None else None, meta=json.loads(meta) if meta else {},
                ts=ts.replace(tzinfo=timezone.utc))
    return int(item_id), item


def naive_utc(ts: datetime) -> datetime:
    return ts.astimezone(timezone.utc).replace(tzinfo=None)


def _head_bytes(seq: int) -> bytes:
    # INVARIANT: every write moves the head to a value never seen before. A process killed after writing the
    # head but before its commit leaves a head ahead of the truth; the next writer reaches the same seq, and
    # without the token its write would look like nothing new to readers that had already seen the stale head.
    return struct.pack("<q", seq) + os.urandom(8)


def write_head(folder: Path, seq: int) -> bytes:
    """Record the newest event seq in the store's head file: open Memory objects compare it with what they have
    seen, and replay the event log when it moved."""
    fd = os.open(folder / ".head", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        head = _head_bytes(seq)
        os.pwrite(fd, head, 0)
        return head
    finally:
        os.close(fd)

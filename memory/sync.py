"""One process's index view of a store that other processes write too, kept in step through the head file.

Every write appends events and moves `.head` (the newest seq and a random token) before it commits. A view
compares the head with what it saw when it last caught up: a pread, so a recall opens no DuckDB file unless
someone wrote. When the head moved, the view replays the events after its seq against the `items` rows. The
head also moves when a store's policy is set (`engramma policy set`): catching up follows that too.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np

from engramma.errors import StoreError
from engramma.memory import events
from engramma.memory import items as item_rows
from engramma.memory.store import Store, _head_bytes
from engramma.memory.view import CheckpointUnusable, IndexView

CHECKPOINT = Path("index") / "checkpoint.bin"


class SyncedView:
    """The `IndexView` of one open store, how far it has caught up, and its checkpoints. Closing it closes the
    store. INVARIANT: `view.seq` is the newest event the view reflects, `seen_head` the head file's contents then.

    `follow_policy(con)` runs under the lock each time the view catches up, to bring in a policy another
    process set."""

    def __init__(self, folder: Path, store: Store, view: IndexView, *, checkpoint_every: int,
                 follow_policy: Callable[[duckdb.DuckDBPyConnection], None]):
        self.folder = folder
        self.store = store
        self.view = view
        self.checkpoint_every = checkpoint_every  # events between index checkpoints (and one at close)
        self._follow_policy = follow_policy
        self._head_fd = os.open(folder / ".head", os.O_RDWR | os.O_CREAT, 0o644)
        self.seen_head = b""  # the head file's contents when this view last caught up
        self.checkpoint_seq = 0
        self.next_id = 1  # ids are assigned under the write lock, after syncing with other writers
        self.closed = False

    # -- the head file --------------------------------------------------------------------------------------

    def read_head(self) -> bytes:
        if self.closed:  # the fd number may already belong to another file
            raise StoreError(f"{self.folder}: the store is closed")
        return os.pread(self._head_fd, 16, 0)

    def write_head(self, seq: int) -> bytes:
        head = _head_bytes(seq)
        os.pwrite(self._head_fd, head, 0)
        return head

    # -- catching up ----------------------------------------------------------------------------------------

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        """Load every kept item, take vectors from the checkpoint, reconcile what changed since."""
        head = self.read_head()
        db_seq = events.last_seq(con)
        view = self.view
        view.replace_items(item_rows.kept_items(con))
        try:
            view.load_vectors(self.folder / CHECKPOINT)
            if view.seq > db_seq:
                raise CheckpointUnusable("newer than the store")
            self.checkpoint_seq = view.seq
            # The checkpoint is right for every item no event touched since; redo the touched ones.
            touched = events.touched_since(con, view.seq)
            view.drop_vectors(touched)
            self._index_from_db(con, [i for i in touched if i in view.items or i in view.shadow_items])
            if view.vector_count() != len(view.items) + len(view.shadow_items):
                raise CheckpointUnusable("disagrees with the store")
        except CheckpointUnusable:
            view.clear_vectors()
            self._index_from_db(con, [*view.items, *view.shadow_items])
        view.seq = db_seq
        self.read_next_id(con)
        self.seen_head = head

    def _index_from_db(self, con: duckdb.DuckDBPyConnection, ids: list[int]) -> None:
        """Read the stored vectors of `ids` and put each in its family."""
        for chunk in item_rows.vectors(con, ids, self.view.dim):
            for shadow in (False, True):
                rows = np.flatnonzero(chunk.in_index != shadow)
                if len(rows):
                    self.view.index_vectors([chunk.ids[r] for r in rows], [chunk.scopes[r] for r in rows],
                                            chunk.vectors[rows], shadow=shadow)

    def sync(self, con: duckdb.DuckDBPyConnection) -> None:
        """Bring the view up to the store's newest event (other processes' writes)."""
        head = self.read_head()
        db_seq = events.last_seq(con)
        if db_seq > self.view.seq:
            touched = events.touched_since(con, self.view.seq)
            self._index_from_db(con, self.view.follow(touched, item_rows.kept_rows(con, touched)))
            self.view.seq = db_seq
            self.read_next_id(con)
        self._follow_policy(con)
        self.seen_head = head

    def catch_up(self, con: duckdb.DuckDBPyConnection | None = None) -> None:
        """`sync` if the head moved since; without `con`, in a transaction of its own."""
        if self.read_head() == self.seen_head:
            return
        if con is not None:
            self.sync(con)
        else:
            with self.store.transaction() as con:
                self.sync(con)

    def read_next_id(self, con: duckdb.DuckDBPyConnection) -> None:
        self.next_id = item_rows.next_id(con)

    # -- our own writes -------------------------------------------------------------------------------------

    def next_ids(self, n: int) -> list[int]:
        """Ids for `n` new items (under the write lock, after catching up); taken once the write commits."""
        return list(range(self.next_id, self.next_id + n))

    def wrote(self, head: bytes, seq: int, *, new_ids: int = 0) -> None:
        """Our write committed with events up to `seq` and moved the head to `head`: the view is at `seq`
        without replaying them (the writer puts its changes in). `new_ids`: how many ids it took."""
        self.next_id += new_ids
        self.seen_head, self.view.seq = head, seq

    # -- inspecting, rebuilding, checkpoints ----------------------------------------------------------------

    def check(self) -> list[str]:
        """Problems where the index view and the tables disagree; empty when consistent."""
        with self.store.transaction() as con:
            self.sync(con)
            kept = item_rows.in_index(con)
        problems = []
        for shadow, name in ((False, "index"), (True, "shadow index (kept items outside the index)")):
            truth = {i for i, in_index in kept.items() if in_index != shadow}
            vectors = self.view.index_ids(shadow=shadow)
            if orphans := sorted(vectors - truth):
                problems.append(f"{len(orphans)} vectors in the {name} have no such row, e.g. {orphans[:5]}")
            if missing := sorted(truth - vectors):
                problems.append(f"{len(missing)} rows have no vector in the {name}, e.g. {missing[:5]}")
            known = self.view.shadow_items if shadow else self.view.items
            if unknown := sorted(set(known) ^ truth):
                problems.append(f"{len(unknown)} items of the {name} differ from the tables, e.g. {unknown[:5]}")
        return problems

    def rebuild(self) -> int:
        """Rebuild the FAISS view from the vectors in DuckDB and checkpoint it. Returns the vector count."""
        with self.store.transaction() as con:
            self.view.replace_items(item_rows.kept_items(con))
            self.view.clear_vectors()
            self._index_from_db(con, [*self.view.items, *self.view.shadow_items])
            self.view.seq = events.last_seq(con)
            self.seen_head = self.read_head()
        self.save_checkpoint()
        return len(self.view)

    def maybe_checkpoint(self) -> None:
        if self.view.seq - self.checkpoint_seq >= self.checkpoint_every:
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        self.view.save(self.folder / CHECKPOINT)
        self.checkpoint_seq = self.view.seq

    def close(self) -> None:
        """Checkpoint a view that moved since its last checkpoint, then close the store and the head file."""
        if self.closed:
            return
        self.closed = True  # the closed store stays, so that later calls raise StoreError, not AttributeError
        try:
            if self.view.seq != self.checkpoint_seq:
                self.save_checkpoint()
        finally:
            self.store.close()
            os.close(self._head_fd)

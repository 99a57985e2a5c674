"""The searchable view of a store in one process: an index per scope and the items behind its vectors.

Every kept item's vector is in the view, in one of two families of per-scope indexes: the recall index
(items routed to the index) and the shadow (kept items outside it: train-only, or evicted once an adapter
learned them). Recall searches the first; the routing signals (novelty, duplicates, recurrence) search both,
since a repeat of something queued for training is a repeat all the same.

A view is rebuilt from the truth at will. Its checkpoint file records the event seq it reflects; opening a
store loads the checkpoint and reconciles the items touched by later events. A checkpoint that is missing,
corrupt or made with another embedder is ignored and the view is rebuilt from the vectors in DuckDB.
"""
from __future__ import annotations

import json
import struct
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np

from engramma.memory.atomic import atomic_write_bytes
from engramma.memory.index import IVF_THRESHOLD, AutoIndex
from engramma.memory.items import KeptItems, KeptRow
from engramma.types import Item

MAGIC = b"ENGRAMMA-INDEX\n"
FORMAT = 2  # 2: shadow indexes


class CheckpointUnusable(Exception):
    """Internal: the checkpoint file cannot be used; the caller rebuilds the view from the truth."""


class IndexView:
    def __init__(self, dim: int, embedder: str, *, ivf_threshold: int = IVF_THRESHOLD):
        self.dim = dim
        self.embedder = embedder
        self.ivf_threshold = ivf_threshold
        self.seq = 0  # last event seq reflected
        self.indexes: dict[str, AutoIndex] = {}  # scope -> the recall index
        self.items: dict[int, Item] = {}  # every indexed item, by id
        self.shadow: dict[str, AutoIndex] = {}  # scope -> kept items outside the recall index
        self.shadow_items: dict[int, Item] = {}
        # Items that stop being current at some time: superseded by a newer value, or given a ttl.
        self.valid_to: dict[int, datetime] = {}

    def __len__(self) -> int:
        return len(self.items)

    def item(self, item_id: int) -> Item:
        """A kept item of either family."""
        found = self.items.get(item_id)
        return found if found is not None else self.shadow_items[item_id]

    def _family(self, shadow: bool) -> tuple[dict[str, AutoIndex], dict[int, Item]]:
        return (self.shadow, self.shadow_items) if shadow else (self.indexes, self.items)

    def add(self, ids: list[int], items: list[Item], vectors: np.ndarray, *, shadow: bool = False) -> None:
        """Add items not yet in the view (adding one twice is a no-op, so reconciling is idempotent)."""
        _, known = self._family(shadow)
        rows = [n for n, item_id in enumerate(ids) if item_id not in known]
        for n in rows:
            known[ids[n]] = items[n]
        self.index_vectors([ids[n] for n in rows], [items[n].scope for n in rows], vectors[rows], shadow=shadow)

    def index_vectors(self, ids: list[int], scopes: list[str], vectors: np.ndarray, *, shadow: bool = False) -> None:
        """Put vectors into the per-scope indexes of a family; the caller keeps its items dict in step."""
        indexes, _ = self._family(shadow)
        by_scope: dict[str, list[int]] = {}
        for n, scope in enumerate(scopes):
            by_scope.setdefault(scope, []).append(n)
        for scope, rows in by_scope.items():
            index = indexes.get(scope)
            if index is None:
                index = indexes[scope] = AutoIndex(self.dim, ivf_threshold=self.ivf_threshold)
            index.add(np.asarray([ids[n] for n in rows], np.int64), vectors[rows])

    def drop_vectors(self, ids: list[int]) -> None:
        """Remove ids from every index, whatever the items dicts say (used when reconciling a checkpoint)."""
        if not ids:
            return
        for indexes in (self.indexes, self.shadow):
            for scope in list(indexes):
                indexes[scope].remove(np.asarray(ids, np.int64))
                if len(indexes[scope]) == 0:
                    del indexes[scope]

    def vector_count(self) -> int:
        return sum(len(index) for indexes in (self.indexes, self.shadow) for index in indexes.values())

    def remove(self, ids, *, shadow: bool | None = None) -> int:
        """Remove items from the view: from both families (None), or only from one."""
        removed = 0
        for family in ((False, True) if shadow is None else (shadow,)):
            indexes, known = self._family(family)
            by_scope: dict[str, list[int]] = {}
            for item_id in ids:
                item = known.pop(int(item_id), None)
                if item is not None:
                    by_scope.setdefault(item.scope, []).append(int(item_id))
            for scope, scope_ids in by_scope.items():
                index = indexes[scope]
                index.remove(np.asarray(scope_ids, np.int64))
                if len(index) == 0:
                    del indexes[scope]
            removed += sum(len(v) for v in by_scope.values())
        for item_id in ids:
            if int(item_id) not in self.items and int(item_id) not in self.shadow_items:
                self.valid_to.pop(int(item_id), None)
        return removed

    def replace_items(self, kept: KeptItems) -> None:
        """Hold these items (their vectors come separately: a checkpoint, or the stored ones)."""
        self.items = kept.indexed
        self.shadow_items = kept.shadow
        self.valid_to = kept.valid_to

    def clear_vectors(self) -> None:
        self.indexes, self.shadow = {}, {}

    def follow(self, touched: list[int], rows: list[KeptRow]) -> list[int]:
        """Take in what later events did to the items they touched (`rows`: those of `touched` still kept).
        Returns the ids of items new to their family, whose vectors the caller indexes (`index_vectors`)."""
        indexed = {row.id: row.in_index for row in rows}
        # Gone (forgotten), or moved between the recall index and the shadow (evicted, restored).
        self.remove([i for i in touched if i not in indexed], shadow=None)
        self.remove([i for i, in_index in indexed.items() if in_index], shadow=True)
        self.remove([i for i, in_index in indexed.items() if not in_index], shadow=False)
        for row in rows:  # a supersession changes an item's validity, not its vector
            if row.valid_to is None:
                self.valid_to.pop(row.id, None)
            else:
                self.valid_to[row.id] = row.valid_to
        new = [row for row in rows if row.id not in (self.items if row.in_index else self.shadow_items)]
        for row in new:
            (self.items if row.in_index else self.shadow_items)[row.id] = row.item()
        return [row.id for row in new]

    def set_valid_to(self, until: dict[int, datetime]) -> None:
        """Items that stop being current at a time: superseded by a newer value, or given a ttl."""
        self.valid_to.update(until)

    def is_current(self, item_id: int, at: datetime) -> bool:
        """Not yet superseded by a newer value, nor expired, at time `at`."""
        end = self.valid_to.get(item_id)
        return end is None or end > at

    def search(self, query: np.ndarray, scopes: list[str], k: int) -> list[tuple[int, float]]:
        """Top-k (id, cosine) over the union of `scopes`, best first."""
        return self.search_many(query.reshape(1, -1), [scopes], k)[0]

    def search_many(self, queries: np.ndarray, scopes: list[list[str]], k: int, *,
                    shadow: bool = False) -> list[list[tuple[int, float]]]:
        """For each query row, top-k (id, cosine) over the union of its scopes; one FAISS call per scope.
        `shadow`: search the kept items outside the recall index too (for the routing signals)."""
        found: list[list[tuple[int, float]]] = [[] for _ in range(len(queries))]
        searched = [0] * len(queries)  # how many indexes' results each row holds
        rows_of: dict[str, list[int]] = {}
        for row, row_scopes in enumerate(scopes):
            for scope in row_scopes:
                rows_of.setdefault(scope, []).append(row)
        families = (self.indexes, self.shadow) if shadow else (self.indexes,)
        for scope, rows in rows_of.items():
            for indexes in families:
                index = indexes.get(scope)
                if index is None:
                    continue
                scores, ids = index.search(queries[rows], k)
                for row, row_scores, row_ids in zip(rows, scores.tolist(), ids.tolist()):
                    found[row].extend((i, s) for i, s in zip(row_ids, row_scores) if i >= 0)
                    searched[row] += 1
        # One scope's results are already best first; several are merged.
        return [row if n < 2 else sorted(row, key=lambda pair: -pair[1])[:k] for row, n in zip(found, searched)]

    def index_ids(self, *, shadow: bool = False) -> set[int]:
        indexes, _ = self._family(shadow)
        return {int(i) for index in indexes.values() for i in index.ids()}

    # -- checkpoint -------------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        # The scopes' serialised indexes are written as they are: at a million vectors each copy is ~1.5 GB.
        blobs, scopes, offset, crc = [], [], 0, 0
        for shadow in (False, True):
            indexes, _ = self._family(shadow)
            for scope, index in sorted(indexes.items()):
                blob = index.to_bytes()
                scopes.append({"scope": scope, "shadow": shadow, "offset": offset, "length": len(blob),
                               "trained_size": index.trained_size})
                blobs.append(blob)
                offset += len(blob)
                crc = zlib.crc32(blob, crc)
        header = json.dumps({
            "format": FORMAT, "seq": self.seq, "embedder": self.embedder, "dim": self.dim,
            "count": len(self.items) + len(self.shadow_items), "scopes": scopes, "crc32": crc,
        }).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, MAGIC + struct.pack("<Q", len(header)) + header, *blobs)

    def load_vectors(self, path: Path) -> None:
        """Replace the indexes (not the items) with the checkpoint's; sets `seq`. Raises CheckpointUnusable."""
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CheckpointUnusable(f"unreadable: {e}") from None
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
            raise CheckpointUnusable("not a checkpoint file")
        start = len(MAGIC) + 8
        (header_len,) = struct.unpack("<Q", data[len(MAGIC):start])
        try:
            header = json.loads(data[start:start + header_len])
        except ValueError:
            raise CheckpointUnusable("corrupt header") from None
        payload = memoryview(data)[start + header_len:]
        if header.get("format") != FORMAT or header.get("embedder") != self.embedder or header.get("dim") != self.dim:
            raise CheckpointUnusable("made by another format or embedder")
        if zlib.crc32(payload) != header.get("crc32"):
            raise CheckpointUnusable("checksum mismatch")
        families: dict[bool, dict[str, AutoIndex]] = {False: {}, True: {}}
        for entry in header["scopes"]:
            blob = payload[entry["offset"]:entry["offset"] + entry["length"]]  # a view: no copy
            try:
                families[entry["shadow"]][entry["scope"]] = AutoIndex.from_bytes(
                    blob, ivf_threshold=self.ivf_threshold, trained_size=entry["trained_size"])
            except RuntimeError as e:
                raise CheckpointUnusable(f"faiss could not read scope {entry['scope']}: {e}") from None
        self.indexes, self.shadow, self.seq = families[False], families[True], int(header["seq"])

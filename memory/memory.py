"""`Memory`: observe, recall, forget and inspect one store folder.

Layout of a store folder:
    engramma.duckdb      the truth: items (with their decisions), events, queue, adapters, lineage
    index/checkpoint.bin the FAISS view at some event seq (a cache: deleting it costs a rebuild)
    adapters/            LoRA adapter versions (filled by consolidation)
    .head                the newest event seq any process wrote and a random token, so readers notice others'
                         writes cheaply (the token tells a new write from one a crash left unfinished at that seq)

`Memory` is the front door. Behind it: memory/sync.py keeps this process's index view in step with the store,
memory/write.py writes observations and forgets, memory/items.py and memory/events.py own those tables' SQL,
memory/policy_store.py the policies a store keeps.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar, Iterable, Sequence

import duckdb
import numpy as np

from engramma.errors import InvalidItem, ItemNotFound, StoreError
from engramma.memory import events, policy_store, write
from engramma.memory import items as item_rows
from engramma.memory.embed import DEFAULT_EMBEDDER, Embedder, SentenceEmbedder
from engramma.memory.explain import explain_item
from engramma.memory.index import IVF_THRESHOLD
from engramma.memory.routing import route_batch
from engramma.memory.store import DB_FILE, Store, items_schema, naive_utc, write_head
from engramma.memory.sync import SyncedView
from engramma.memory.view import IndexView
from engramma.memory.weights import Weights
from engramma.policies import LivePolicy, Policy
from engramma.types import Explanation, Hit, Item, Record, Stats, check_scope

KNOWN_DIMS = {DEFAULT_EMBEDDER: 384}  # lets a new store be created without loading the model


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    max_text_chars: int = 32_000
    shared_scopes: tuple[str, ...] = ("global",)  # visible from every recall, whatever scope is asked
    busy_timeout: float = 30.0  # seconds to wait for another process's transaction before StoreBusy
    checkpoint_every: int = 10_000  # events between index checkpoints (and one at close)
    ivf_threshold: int = IVF_THRESHOLD


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise InvalidItem(f"k: must be a whole number of at least 1, got {k!r}")


def _current_hits(view: IndexView, found: list[tuple[int, float]], at: datetime,
                  as_of: datetime | None) -> dict[str, Hit]:
    hits: dict[str, Hit] = {}
    for item_id, score in found:
        item = view.items[item_id]
        if not view.is_current(item_id, at) or (as_of is not None and item.ts > as_of):
            continue
        seen = hits.get(item.content_hash)
        if seen is None or item.ts > seen.item.ts:
            hits[item.content_hash] = Hit(id=item_id, score=max(score, seen.score if seen else score), item=item)
    return hits


class Memory(contextlib.AbstractContextManager["Memory"]):  # its __enter__ returns the memory; __exit__ closes it
    """One store folder, opened by `Memory.open(path)`. Safe to share between threads and processes.

    This class is the fast memory alone: it needs `weights`, the slow memory's queue and adapters, to learn
    and to forget from. `engramma.Memory` is this class wired to the updater's; use that one."""

    weights: ClassVar[Weights | None] = None  # set by the class that wires this memory to its weights

    def __init__(self, folder: Path, store: Store, embedder: Embedder, config: MemoryConfig, policy: LivePolicy,
                 weights: Weights, dim: int):
        """`dim`: the store's vector size. The view starts empty: `open` loads it."""
        self.folder = folder
        self.weights = weights
        self.store = store
        self.embedder = embedder
        self.config = config
        self.live_policy = policy

        def follow_policy(con: duckdb.DuckDBPyConnection) -> None:  # another process set one: `engramma policy set`
            self.live_policy = policy_store.followed(con, self.live_policy)

        self._synced = SyncedView(folder, store, IndexView(dim, embedder.name, ivf_threshold=config.ivf_threshold),
                                  checkpoint_every=config.checkpoint_every, follow_policy=follow_policy)
        self.view = self._synced.view  # the same object while the store is open: changed in place, never replaced
        self._items_schema = items_schema(dim)
        self._recorded_policies: set[str] = set()  # hashes of the policies this process kept the text of

    @classmethod
    def open(cls, path: str | os.PathLike, *, embedder: str | Embedder | None = None,
             policy: str | os.PathLike | Policy | None = None, config: MemoryConfig | None = None,
             weights: Weights | None = None) -> Memory:
        """Open the store folder at `path`, creating it if needed.

        `embedder` defaults to the store's own. `policy` is a YAML file, `preset:NAME` or a loaded `Policy`;
        a file or preset named here becomes the store's policy, and without one the store keeps its own (the
        default preset for a new store). A policy file is re-read when it changes. `weights` defaults to the
        class's own.
        """
        weights = weights or cls.weights
        if weights is None:
            raise StoreError("engramma.memory.Memory is the fast memory alone, without weights to learn and "
                             "forget from: open stores with engramma.Memory, or pass weights=")
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"{folder}: exists and is not a folder")
        if folder.is_dir() and any(folder.iterdir()) and not (folder / DB_FILE).exists():
            raise StoreError(f"{folder}: is a folder with other files in it, not an engramma store")
        new_store = not (folder / DB_FILE).exists()  # then the folder is missing or empty
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapters").mkdir(exist_ok=True)
        config = config or MemoryConfig()
        store = Store(folder, busy_timeout=config.busy_timeout)
        try:
            with store.transaction() as con:
                meta = store.meta(con)
                exists = meta is not None
                stored_embedder = meta.get("embedder") if exists else None
                stored_policy = policy_store.stored_origin(con) if exists else None
                last_good = policy_store.last_good(con, stored_policy) if exists else None
            live = policy_store.in_force(policy, stored_policy, last_good)
            if isinstance(embedder, str) or embedder is None:
                # A model folder is kept as an absolute path: the store must open from any working directory.
                given = str(Path(embedder).resolve()) if embedder and Path(embedder).exists() else embedder
                embedder = SentenceEmbedder(given or stored_embedder or DEFAULT_EMBEDDER)
            if stored_embedder is not None and embedder.name != stored_embedder:
                raise StoreError(
                    f"{folder}: built with embedder {stored_embedder!r}, not {embedder.name!r}; open it without "
                    "naming an embedder, or ingest into a new store"
                )
            dim = KNOWN_DIMS.get(embedder.name) or embedder.dim
            with store.transaction() as con:
                meta = store.ensure_schema(con, dim=dim, embedder=embedder.name)
                memory = cls(folder, store, embedder, config, live, weights, int(meta["dim"]))
                # Kept at once, not at its first decision: a policy given as text must be there to reopen by.
                policy_store.record(con, live.current(), datetime.now(timezone.utc), memory._recorded_policies)
                if live.origin != meta.get("policy"):
                    policy_store.set_origin(con, live.origin)
                    if meta.get("policy") is not None:  # a new policy for a used store: other processes follow it
                        write_head(folder, events.last_seq(con))
                memory._synced.load(con)
            return memory
        except BaseException:
            store.close()
            if new_store:  # leave no half-made store behind (a bad embedder name, say)
                for child in folder.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            raise

    @property
    def policy(self) -> Policy:
        """The policy in force (re-read from its file if that changed)."""
        return self.live_policy.current()

    @property
    def policy_error(self) -> str | None:
        """Why the last edit of the policy file was refused (the previous policy stays in force), if it was."""
        self.live_policy.current()
        return self.live_policy.error

    def save_checkpoint(self) -> None:
        self._synced.save_checkpoint()

    # -- writing ------------------------------------------------------------------------------------------

    def check_item(self, item: Item) -> None:
        """Raise `InvalidItem` if this store would refuse `item` (beyond what `Item` checks itself: its size)."""
        if len(item.text) > self.config.max_text_chars:
            raise InvalidItem(
                f"text: {len(item.text)} characters is over the limit of {self.config.max_text_chars} "
                "(MemoryConfig.max_text_chars); split it into several items"
            )

    def observe(self, item: Item) -> Record:
        """Remember one item; the policy decides where it goes. Returns once it is durable."""
        return self.observe_many([item])[0]

    def observe_many(self, items: Iterable[Item]) -> list[Record]:
        """Remember many items with one embedding batch and one transaction."""
        items = list(items)
        for n, item in enumerate(items):
            if not isinstance(item, Item):
                raise InvalidItem(f"items[{n}]: expected an engramma Item, got {type(item).__name__}")
            self.check_item(item)
        if not items:
            return []
        now = datetime.now(timezone.utc)
        items = [item if item.ts is not None else item.with_ts(now) for item in items]
        vectors = self.embedder.embed([item.text for item in items])  # outside the lock: the slow part

        with self.store.transaction() as con:
            self._synced.catch_up(con)
            policy = self.live_policy.current()  # after syncing: another process may have set a new one
            ids = self._synced.next_ids(len(items))
            routed = route_batch(con, items, vectors, ids, view=self.view, scopes_of=self.visible_scopes,
                                 policy=policy, now=now, naive=naive_utc, learned_scopes=self.weights.learned_scopes)
            policy_store.record(con, policy, now, self._recorded_policies)
            written = write.observe(con, self._synced, ids, items, vectors, routed, policy=policy, now=now,
                                    weights=self.weights, schema=self._items_schema)
        self._synced.wrote(written.head, written.seq, new_ids=len(items))
        write.add_to_view(self.view, ids, items, vectors, routed)
        self._synced.maybe_checkpoint()
        return [Record(id=i, item=item, route=d.route.value, rule=d.rule, observed_at=now, in_index=d.route.indexed,
                       reasons=d.reasons)
                for i, item, d in zip(ids, items, routed.decisions)]

    def forget(self, item_id: int | None = None, *, scope: str | None = None) -> int:
        """Erase one item, or every item of a scope: text, meta and vector go; the hash, route and rule stay.

        Returns how many items were forgotten. An unknown id raises `ItemNotFound`.
        """
        if (item_id is None) == (scope is None):
            raise InvalidItem("forget: give exactly one of an item id or scope=")
        if scope is not None:
            check_scope(scope)
        now = datetime.now(timezone.utc)
        with self.store.transaction() as con:
            self._synced.catch_up(con)
            written = write.forget(con, self._synced, item_id, scope, now, weights=self.weights,
                                   live_policy=self.live_policy)
            if written is None:
                return 0
        self._synced.wrote(written.head, written.seq)
        self.view.remove(written.ids)
        self._synced.maybe_checkpoint()
        return len(written.ids)

    # -- reading ------------------------------------------------------------------------------------------

    def visible_scopes(self, scope: str | Sequence[str]) -> list[str]:
        asked = [scope] if isinstance(scope, str) else list(scope)
        for s in asked:
            check_scope(s, "recall scope")
        return list(dict.fromkeys([*asked, *self.config.shared_scopes]))

    def recall(self, query: str, k: int = 5, scope: str | Sequence[str] = "global", *,
               as_of: datetime | None = None) -> list[Hit]:
        """The k items most similar to `query` among `scope` and the shared scopes (by default `global`).

        Only current items count: a keyed fact's superseded values and expired items are left out, unless
        `as_of` asks for what was current at that time. Items with identical content (the same fact heard
        again) count once, as their newest observation.
        """
        return self.recall_many([query], k, scope, as_of=as_of)[0]

    def recall_many(self, queries: Sequence[str], k: int = 5, scope: str | Sequence[str] = "global", *,
                    as_of: datetime | None = None) -> list[list[Hit]]:
        """`recall` for several queries at once: one embedding batch, one index search per scope."""
        for n, query in enumerate(queries):
            if not isinstance(query, str) or not query.strip():
                raise InvalidItem(f"query{'' if len(queries) == 1 else f' {n}'}: must be a non-empty string")
        if not queries:
            return []
        _check_k(k)  # bad arguments fail before the embedding work
        self.visible_scopes(scope)
        return self.recall_vectors(self.embedder.embed(list(queries)), k, scope, as_of=as_of)

    def recall_vectors(self, vectors: np.ndarray, k: int = 5, scope: str | Sequence[str] = "global", *,
                       as_of: datetime | None = None) -> list[list[Hit]]:
        """`recall` for queries already embedded with this store's embedder: (n, dim) L2-normalised rows."""
        _check_k(k)
        if as_of is not None and as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=timezone.utc)
        at = as_of or datetime.now(timezone.utc)
        scopes = self.visible_scopes(scope)
        self._synced.catch_up()
        found = self.view.search_many(vectors, [scopes] * len(vectors), k)
        out = []
        for vector, first in zip(vectors, found):
            fetch = k
            while True:  # fetch more while superseded, expired or repeated items crowd the top k
                hits = _current_hits(self.view, first, at, as_of)
                if len(hits) >= k or len(first) < fetch:
                    out.append(sorted(hits.values(), key=lambda h: -h.score)[:k])
                    break
                fetch *= 4
                first = self.view.search(vector, scopes, fetch)
        return out

    def get(self, item_id: int) -> Record:
        with self.store.transaction() as con:
            record = item_rows.record(con, item_id)
        if record is None:
            raise ItemNotFound(f"no item {item_id} in {self.folder} (never observed, dropped or forgotten)")
        return record

    def explain(self, item_id: int) -> Explanation:
        """Why an item went where it went: its signals, the rule that matched and why each earlier one did not,
        judged with the policy that decided (kept by hash), even for dropped or forgotten items."""
        with self.store.transaction() as con:
            return explain_item(con, self.folder, item_id)

    def stats(self) -> Stats:
        with self.store.transaction() as con:
            self._synced.catch_up(con)
            counts = item_rows.counts(con)
            queued = self.weights.pending(con)
            last_event = events.last_seq(con)
        kinds: dict[str, int] = {}
        for index in self.view.indexes.values():
            kinds[index.kind] = kinds.get(index.kind, 0) + 1
        disk = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
        return Stats(items=counts.kept, indexed=len(self.view), forgotten=counts.forgotten, events=last_event,
                     by_kind=counts.by_kind, by_scope=counts.by_scope, by_route=counts.by_route, queued=queued,
                     index_kinds=kinds, disk_bytes=disk, policy=self.live_policy.origin)

    def check(self) -> list[str]:
        """Problems where the index view and the tables disagree; empty when consistent."""
        return self._synced.check()

    def rebuild_index(self) -> int:
        """Rebuild the FAISS view from the vectors in DuckDB and checkpoint it. Returns the vector count."""
        return self._synced.rebuild()

    def close(self) -> None:
        self._synced.close()

    def __exit__(self, *exc) -> None:
        self.close()

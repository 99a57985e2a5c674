"""`Memory`: observe, recall, forget and inspect one store folder.

Layout of a store folder:
    engramma.duckdb      the truth: items (with their decisions), events, queue, adapters, lineage
    index/checkpoint.bin the FAISS view at some event seq (a cache: deleting it costs a rebuild)
    adapters/            LoRA adapter versions (filled by consolidation)
    .head                the newest event seq any process wrote and a random token, so readers notice others'
                         writes cheaply (the token tells a new write from one a crash left unfinished at that seq)
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar, Iterable, Sequence

import numpy as np
import pyarrow as pa

from engramma.errors import InvalidItem, ItemNotFound, StoreError
from engramma.memory.embed import DEFAULT_EMBEDDER, Embedder, SentenceEmbedder
from engramma.memory.index import IVF_THRESHOLD
from engramma.memory.routing import route_batch
from engramma.memory.explain import explain_item, traces_before_erasing, traces_json
from engramma.memory.store import (  # noqa: F401  (ITEM_COLUMNS, item_from_row, append_events: used from here too)
    DB_FILE, EVENTS_SCHEMA, ITEM_COLUMNS, Store, _head_bytes, append_events, insert, item_from_row,
    items_schema, naive_utc, scalar, write_head)
from engramma.types import Explanation, Hit, Item, Record, Stats, check_scope
from engramma.memory.view import CheckpointUnusable, IndexView
from engramma.memory.weights import Weights
from engramma.policies import Decision, LivePolicy, Policy, Route

CHECKPOINT = Path("index") / "checkpoint.bin"
KNOWN_DIMS = {DEFAULT_EMBEDDER: 384}  # lets a new store be created without loading the model

DEFAULT_POLICY = "preset:default"


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    max_text_chars: int = 32_000
    shared_scopes: tuple[str, ...] = ("global",)  # visible from every recall, whatever scope is asked
    busy_timeout: float = 30.0  # seconds to wait for another process's transaction before StoreBusy
    checkpoint_every: int = 10_000  # events between index checkpoints (and one at close)
    ivf_threshold: int = IVF_THRESHOLD


def _last_good(con, origin: str | None) -> str | None:
    """The newest text a store kept for a policy origin: what stands in for a broken file, or is the policy
    itself for one given as text (`<policy HASH>`, found by its hash)."""
    if origin is None:
        return None
    if origin.startswith("<policy ") and origin.endswith(">"):
        return scalar(con, "SELECT text FROM policies WHERE content_hash = ?", [origin[len("<policy "):-1]])
    return scalar(con, "SELECT text FROM policies WHERE origin = ? ORDER BY first_used_at DESC LIMIT 1", [origin])


def store_policy(con) -> LivePolicy:
    """The policy a store was given (its last good version if the file is broken now; the default if none)."""
    stored = scalar(con, "SELECT value FROM meta WHERE key = 'policy'")
    return _live_policy(None, stored, _last_good(con, stored))


def _live_policy(asked: str | os.PathLike | Policy | None, stored: str | None, last_good: str | None) -> LivePolicy:
    """The policy asked for (which must load), else the store's own (its last good version if now broken)."""
    if isinstance(asked, Policy):
        return LivePolicy.fixed(asked)
    if asked is not None:
        origin = str(asked) if str(asked).startswith("preset:") else str(Path(asked).resolve())
        if origin != stored:
            return LivePolicy(origin)
    return LivePolicy(stored or DEFAULT_POLICY, last_good=last_good)


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise InvalidItem(f"k: must be a whole number of at least 1, got {k!r}")


class Memory:
    """One store folder, opened by `Memory.open(path)`. Safe to share between threads and processes.

    This class is the fast memory alone: it needs `weights`, the slow memory's queue and adapters, to learn
    and to forget from. `engramma.Memory` is this class wired to the updater's; use that one."""

    weights: ClassVar[Weights | None] = None  # set by the class that wires this memory to its weights

    def __init__(self, folder: Path, store: Store, embedder: Embedder, config: MemoryConfig, policy: LivePolicy,
                 weights: Weights):
        self.folder = folder
        self.weights = weights
        self.store = store
        self.embedder = embedder
        self.config = config
        self.live_policy = policy
        self.view = IndexView(0, embedder.name, ivf_threshold=config.ivf_threshold)
        self._head_fd = os.open(folder / ".head", os.O_RDWR | os.O_CREAT, 0o644)
        self._seen_head = b""  # the head file's contents when this view last caught up
        self._checkpoint_seq = 0
        self._next_id = 1  # ids are assigned under the write lock, after syncing with other writers
        self._recorded_policies: set[str] = set()
        self._closed = False

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
                exists = scalar(con, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'")
                stored_embedder = scalar(con, "SELECT value FROM meta WHERE key = 'embedder'") if exists else None
                stored_policy = scalar(con, "SELECT value FROM meta WHERE key = 'policy'") if exists else None
                last_good = _last_good(con, stored_policy) if exists else None
            live = _live_policy(policy, stored_policy, last_good)
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
            memory = cls(folder, store, embedder, config, live, weights)
            with store.transaction() as con:
                meta = store.ensure_schema(con, dim=dim, embedder=embedder.name)
                # Kept at once, not at its first decision: a policy given as text must be there to reopen by.
                memory._record_policy(con, live.current(), datetime.now(timezone.utc))
                if live.origin != meta.get("policy"):
                    con.execute("INSERT OR REPLACE INTO meta VALUES ('policy', ?)", [live.origin])
                    if meta.get("policy") is not None:  # a new policy for a used store: other processes follow it
                        write_head(folder, scalar(con, "SELECT coalesce(max(seq), 0) FROM events"))
                memory.view = IndexView(int(meta["dim"]), embedder.name, ivf_threshold=config.ivf_threshold)
                memory._items_schema = items_schema(int(meta["dim"]))
                memory._load_view(con)
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

    # -- the view -----------------------------------------------------------------------------------------

    def _read_head(self) -> bytes:
        if self._closed:  # the fd number may already belong to another file
            raise StoreError(f"{self.folder}: the store is closed")
        return os.pread(self._head_fd, 16, 0)

    def _write_head(self, seq: int) -> bytes:
        head = _head_bytes(seq)
        os.pwrite(self._head_fd, head, 0)
        return head

    def _load_view(self, con) -> None:
        """Load every kept item, take vectors from the checkpoint, reconcile what changed since."""
        head = self._read_head()
        db_seq = scalar(con, "SELECT coalesce(max(seq), 0) FROM events")
        view = self.view
        self._read_kept_items(con)
        try:
            view.load_vectors(self.folder / CHECKPOINT)
            if view.seq > db_seq:
                raise CheckpointUnusable("newer than the store")
            self._checkpoint_seq = view.seq
            # The checkpoint is right for every item no event touched since; redo the touched ones.
            touched = self._touched_since(con, view.seq)
            view.drop_vectors(touched)
            self._index_from_db(con, [i for i in touched if i in view.items or i in view.shadow_items])
            if view.vector_count() != len(view.items) + len(view.shadow_items):
                raise CheckpointUnusable("disagrees with the store")
        except CheckpointUnusable:
            view.indexes, view.shadow = {}, {}
            self._index_from_db(con, [*view.items, *view.shadow_items])
        view.seq = db_seq
        self._read_counters(con)
        self._seen_head = head

    def _read_kept_items(self, con) -> None:
        """Every kept item into the view's two families: recall index, or shadow (vectors come separately)."""
        rows = con.execute(f"SELECT {ITEM_COLUMNS}, valid_to, in_index FROM items WHERE status = 'kept' "
                           "ORDER BY id").fetchall()
        self.view.items = dict(item_from_row(r[:12]) for r in rows if r[13])
        self.view.shadow_items = dict(item_from_row(r[:12]) for r in rows if not r[13])
        self.view.valid_to = {int(r[0]): r[12].replace(tzinfo=timezone.utc) for r in rows if r[12] is not None}

    def _read_counters(self, con) -> None:
        self._next_id = scalar(con, "SELECT coalesce(max(id), 0) + 1 FROM items")

    @staticmethod
    def _touched_since(con, seq: int) -> list[int]:
        return [r[0] for r in con.execute(
            "SELECT DISTINCT item_id FROM events WHERE seq > ? AND item_id IS NOT NULL", [seq]).fetchall()]

    def _index_from_db(self, con, ids: list[int]) -> None:
        """Read the stored vectors of `ids` and put each in its family (chunked: at 1M items they are 1.5 GB)."""
        ids = sorted(ids)
        for start in range(0, len(ids), 50_000):
            # In id order, as they were first added: an index that turns IVF trains on the same vectors.
            table = con.sql("SELECT id, scope, vector, in_index FROM items WHERE id IN (SELECT unnest($ids)) "
                            "ORDER BY id", params={"ids": ids[start:start + 50_000]}).to_arrow_table()
            vectors = np.asarray(table.column("vector").combine_chunks().flatten(), np.float32)
            vectors = vectors.reshape(-1, self.view.dim)
            in_index = np.asarray(table.column("in_index").to_pylist(), bool)
            item_ids, scopes = table.column("id").to_pylist(), table.column("scope").to_pylist()
            for shadow in (False, True):
                rows = np.flatnonzero(in_index != shadow)
                if len(rows):
                    self.view.index_vectors([item_ids[r] for r in rows], [scopes[r] for r in rows], vectors[rows],
                                            shadow=shadow)

    def _sync(self, con) -> None:
        """Bring the view up to the store's newest event (other processes' writes)."""
        head = self._read_head()
        db_seq = scalar(con, "SELECT coalesce(max(seq), 0) FROM events")
        if db_seq > self.view.seq:
            touched = self._touched_since(con, self.view.seq)
            rows = con.execute(f"SELECT {ITEM_COLUMNS}, valid_to, in_index FROM items WHERE status = 'kept' "
                               "AND id IN (SELECT unnest(?)) ORDER BY id", [touched]).fetchall()
            indexed = {int(r[0]): bool(r[13]) for r in rows}
            # Gone (forgotten), or moved between the recall index and the shadow (evicted, restored).
            self.view.remove([i for i in touched if i not in indexed], shadow=None)
            self.view.remove([i for i, in_index in indexed.items() if in_index], shadow=True)
            self.view.remove([i for i, in_index in indexed.items() if not in_index], shadow=False)
            for r in rows:  # a supersession changes an item's validity, not its vector
                if r[12] is None:
                    self.view.valid_to.pop(int(r[0]), None)
                else:
                    self.view.valid_to[int(r[0])] = r[12].replace(tzinfo=timezone.utc)
            new = [r for r in rows if int(r[0]) not in (self.view.items if r[13] else self.view.shadow_items)]
            for r in new:
                item_id, item = item_from_row(r[:12])
                (self.view.items if r[13] else self.view.shadow_items)[item_id] = item
            self._index_from_db(con, [int(r[0]) for r in new])
            self.view.seq = db_seq
            self._read_counters(con)
        stored = scalar(con, "SELECT value FROM meta WHERE key = 'policy'")
        if stored is not None and stored != self.live_policy.origin:  # `engramma policy set` from elsewhere
            self.live_policy = _live_policy(None, stored, _last_good(con, stored))
        self._seen_head = head

    def _sync_if_stale(self, con=None) -> None:
        if self._read_head() == self._seen_head:
            return
        if con is not None:
            self._sync(con)
        else:
            with self.store.transaction() as con:
                self._sync(con)

    def _maybe_checkpoint(self) -> None:
        if self.view.seq - self._checkpoint_seq >= self.config.checkpoint_every:
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        self.view.save(self.folder / CHECKPOINT)
        self._checkpoint_seq = self.view.seq

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
            self._sync_if_stale(con)
            policy = self.live_policy.current()  # after syncing: another process may have set a new one
            ids = list(range(self._next_id, self._next_id + len(items)))
            routed = route_batch(con, items, vectors, ids, view=self.view, scopes_of=self.visible_scopes,
                                 policy=policy, now=now, naive=naive_utc, learned_scopes=self.weights.learned_scopes)
            decisions = routed.decisions
            self._record_policy(con, policy, now)
            self._insert_items(con, ids, items, routed, vectors, now, policy)
            trained = [n for n, d in enumerate(decisions) if d.route.trained]
            if trained:
                self.weights.enqueue(con, [ids[n] for n in trained],
                                     train_scopes=[decisions[n].train_scope for n in trained],
                                     priorities=[decisions[n].priority for n in trained],
                                     corrects=[routed.corrects[n] for n in trained], now=now)
            old = sorted(i for i in routed.superseded if i not in set(ids))
            if old:
                con.execute("UPDATE items SET valid_to = v.t FROM (SELECT unnest(?) AS id, unnest(?) AS t) v "
                            "WHERE items.id = v.id", [old, [naive_utc(routed.superseded[i]) for i in old]])
            seq = self.view.seq
            self._insert_events(con, list(range(seq + 1, seq + 1 + len(ids))), "observe", ids,
                                [item.scope for item in items], now)
            seq += len(ids)
            if old:
                self._insert_events(con, list(range(seq + 1, seq + 1 + len(old))), "supersede", old,
                                    [None] * len(old), now)
                seq += len(old)
            head = self._write_head(seq)  # before commit: a reader that sees it waits for our lock, then syncs
        self._next_id += len(items)
        self._seen_head, self.view.seq = head, seq
        for shadow in (False, True):  # indexed items to the recall index, train-only ones to the shadow
            rows = [n for n, d in enumerate(decisions) if d.route is not Route.DROP and d.route.indexed != shadow]
            if rows:
                self.view.add([ids[n] for n in rows], [items[n] for n in rows], vectors[rows], shadow=shadow)
            for n in rows:
                if routed.valid_to[n] is not None:
                    self.view.valid_to[ids[n]] = routed.valid_to[n]
        for item_id, until in routed.superseded.items():
            if item_id in self.view.items or item_id in self.view.shadow_items:
                self.view.valid_to[item_id] = until
        self._maybe_checkpoint()
        return [Record(id=i, item=item, route=d.route.value, rule=d.rule, observed_at=now, in_index=d.route.indexed,
                       reasons=d.reasons)
                for i, item, d in zip(ids, items, decisions)]

    def _record_policy(self, con, policy: Policy, now: datetime) -> None:
        """Keep the text of every policy that decides, so its decisions can be explained later."""
        if policy.content_hash not in self._recorded_policies:
            con.execute("INSERT OR IGNORE INTO policies VALUES (?, ?, ?, ?, ?)",
                        [policy.content_hash, policy.name, policy.origin, policy.text, naive_utc(now)])
            self._recorded_policies.add(policy.content_hash)

    def _insert_items(self, con, ids: list[int], items: list[Item], routed, vectors: np.ndarray,
                      now: datetime, policy: Policy) -> None:
        n = len(ids)
        decisions: list[Decision] = routed.decisions
        kept = [d.route is not Route.DROP for d in decisions]

        def unless_dropped(values: list) -> list:  # a dropped item's text is never stored
            return [v if k else None for v, k in zip(values, kept)]

        insert(con, "items", {
            "id": ids,
            "status": ["kept" if k else "dropped" for k in kept],
            "content_hash": [item.content_hash for item in items],
            "text": unless_dropped([item.text for item in items]),
            "kind": [item.kind.value for item in items],
            "scope": [item.scope for item in items],
            "source": [item.source for item in items],
            "key": [item.key for item in items],
            "prompt": unless_dropped([item.prompt for item in items]),
            "response": unless_dropped([item.response for item in items]),
            "probe_question": unless_dropped([item.probe.question if item.probe else None for item in items]),
            "probe_answer": unless_dropped([item.probe.answer if item.probe else None for item in items]),
            "meta": unless_dropped([json.dumps(item.meta) for item in items]),
            "ts": [naive_utc(item.ts) for item in items],
            "observed_at": [naive_utc(now)] * n,
            "valid_to": [naive_utc(t) if t is not None else None for t in routed.valid_to],
            "in_index": [d.route.indexed for d in decisions],
            "vector": pa.FixedSizeListArray.from_arrays(  # straight from the numpy buffer, null where dropped
                pa.array(np.ascontiguousarray(vectors, np.float32).ravel()), vectors.shape[1],
                mask=pa.array([not k for k in kept])),
            "route": [d.route.value for d in decisions],
            "rule": [d.rule for d in decisions],
            "reasons": [json.dumps(list(d.reasons)) for d in decisions],
            "ttl_seconds": [d.ttl_seconds for d in decisions],
            "train_scope": [d.train_scope for d in decisions],
            "priority": [d.priority for d in decisions],
            "policy_name": [policy.name] * n,
            "policy_hash": [policy.content_hash] * n,
            "after_consolidation": [d.after_consolidation for d in decisions],
            "duplicate_of": [s.duplicate_of for s in routed.signals],
            "signals": [json.dumps(s.as_dict()) for s in routed.signals],
            "traces": [None if k else traces_json(item, sig, policy) for item, sig, k in zip(items, routed.signals, kept)],
        }, self._items_schema)

    def _insert_events(self, con, seqs: list[int], op: str, ids: list[int], scopes: list[str | None],
                       now: datetime) -> None:
        insert(con, "events", {"seq": seqs, "op": [op] * len(seqs), "item_id": ids, "scope": scopes,
                               "happened_at": [naive_utc(now)] * len(seqs)}, EVENTS_SCHEMA)

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
            self._sync_if_stale(con)
            if item_id is not None:
                ids = [r[0] for r in con.execute(
                    "SELECT id FROM items WHERE id = ? AND status = 'kept'", [int(item_id)]).fetchall()]
                if not ids:
                    raise ItemNotFound(f"no item {item_id} in {self.folder} (never observed, dropped or forgotten)")
            else:
                ids = [r[0] for r in con.execute(
                    "SELECT id FROM items WHERE scope = ? AND status = 'kept'", [scope]).fetchall()]
            if not ids:
                return 0
            traces = traces_before_erasing(con, ids)
            con.execute(
                "UPDATE items SET status = 'forgotten', text = NULL, prompt = NULL, response = NULL, "
                "probe_question = NULL, probe_answer = NULL, meta = NULL, vector = NULL, in_index = false, "
                "forgotten_at = ?, traces = t.traces FROM (SELECT unnest(?) AS id, unnest(?) AS traces) t "
                "WHERE items.id = t.id", [naive_utc(now), ids, traces])
            seqs = list(range(self.view.seq + 1, self.view.seq + 1 + len(ids)))
            self._insert_events(con, seqs, "forget", ids, [None] * len(ids), now)
            head = self._write_head(seqs[-1])
            # Forgetting reaches the weights: adapters that saw the items are tainted, then rolled back or
            # queued for a rebuild, as the policy says. Its own events (items returning to the index when an
            # adapter is rolled back) come after ours and move the head on; the next read replays them.
            self.weights.forget(con, self.folder, ids, self.policy.spec.gate.on_forget, now)
            self._read_counters(con)
        self._seen_head, self.view.seq = head, seqs[-1]
        self.view.remove(ids)
        self._maybe_checkpoint()
        return len(ids)

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
        self._sync_if_stale()
        found = self.view.search_many(vectors, [scopes] * len(vectors), k)
        out = []
        for vector, first in zip(vectors, found):
            fetch = k
            while True:  # fetch more while superseded, expired or repeated items crowd the top k
                hits = self._current_hits(first, at, as_of)
                if len(hits) >= k or len(first) < fetch:
                    out.append(sorted(hits.values(), key=lambda h: -h.score)[:k])
                    break
                fetch *= 4
                first = self.view.search(vector, scopes, fetch)
        return out

    def _current_hits(self, found: list[tuple[int, float]], at: datetime, as_of: datetime | None) -> dict[str, Hit]:
        hits: dict[str, Hit] = {}
        for item_id, score in found:
            item = self.view.items[item_id]
            if not self.view.is_current(item_id, at) or (as_of is not None and item.ts > as_of):
                continue
            seen = hits.get(item.content_hash)
            if seen is None or item.ts > seen.item.ts:
                hits[item.content_hash] = Hit(id=item_id, score=max(score, seen.score if seen else score), item=item)
        return hits

    def get(self, item_id: int) -> Record:
        with self.store.transaction() as con:
            rows = con.execute(f"SELECT {ITEM_COLUMNS}, route, rule, observed_at, in_index, reasons FROM items "
                               "WHERE id = ? AND status = 'kept'", [int(item_id)]).fetchall()
        row = rows[0] if rows else None
        if row is None:
            raise ItemNotFound(f"no item {item_id} in {self.folder} (never observed, dropped or forgotten)")
        _, item = item_from_row(row[:12])
        route, rule, observed_at, in_index, reasons = row[12:]
        return Record(id=int(item_id), item=item, route=route, rule=rule,
                      observed_at=observed_at.replace(tzinfo=timezone.utc), in_index=in_index,
                      reasons=tuple(json.loads(reasons)))

    def explain(self, item_id: int) -> Explanation:
        """Why an item went where it went: its signals, the rule that matched and why each earlier one did not,
        judged with the policy that decided (kept by hash), even for dropped or forgotten items."""
        with self.store.transaction() as con:
            return explain_item(con, self.folder, item_id)

    def stats(self) -> Stats:
        with self.store.transaction() as con:
            self._sync_if_stale(con)
            items = scalar(con, "SELECT count(*) FROM items WHERE status = 'kept'")
            by_kind = dict(con.execute(
                "SELECT kind, count(*) FROM items WHERE status = 'kept' GROUP BY ALL ORDER BY 1").fetchall())
            by_scope = dict(con.execute(
                "SELECT scope, count(*) FROM items WHERE status = 'kept' GROUP BY ALL ORDER BY 1").fetchall())
            by_route = dict(con.execute("SELECT route, count(*) FROM items GROUP BY ALL ORDER BY 1").fetchall())
            forgotten = scalar(con, "SELECT count(*) FROM items WHERE status = 'forgotten'")
            queued = self.weights.pending(con)
            events = scalar(con, "SELECT coalesce(max(seq), 0) FROM events")
        kinds: dict[str, int] = {}
        for index in self.view.indexes.values():
            kinds[index.kind] = kinds.get(index.kind, 0) + 1
        disk = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
        return Stats(items=items, indexed=len(self.view), forgotten=forgotten, events=events, by_kind=by_kind,
                     by_scope=by_scope, by_route=by_route, queued=queued, index_kinds=kinds, disk_bytes=disk,
                     policy=self.live_policy.origin)

    def check(self) -> list[str]:
        """Problems where the index view and the tables disagree; empty when consistent."""
        with self.store.transaction() as con:
            self._sync(con)
            kept = dict(con.execute("SELECT id, in_index FROM items WHERE status = 'kept'").fetchall())
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

    def rebuild_index(self) -> int:
        """Rebuild the FAISS view from the vectors in DuckDB and checkpoint it. Returns the vector count."""
        with self.store.transaction() as con:
            self._read_kept_items(con)
            self.view.indexes, self.view.shadow = {}, {}
            self._index_from_db(con, [*self.view.items, *self.view.shadow_items])
            self.view.seq = scalar(con, "SELECT coalesce(max(seq), 0) FROM events")
            self._seen_head = self._read_head()
        self.save_checkpoint()
        return len(self.view)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True  # the closed store stays, so that later calls raise StoreError, not AttributeError
        try:
            if self.view.seq != self._checkpoint_seq:
                self.save_checkpoint()
        finally:
            self.store.close()
            os.close(self._head_fd)

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

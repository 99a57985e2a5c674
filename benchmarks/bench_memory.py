"""The fast memory through its real API (`Memory.open`, `observe_many`, `observe`, `recall`) on a store in a
temporary folder, against the bare MiniLM embedder doing the same embedding work.

(a) observe_many throughput at batch 256 vs `mem.embedder.embed` on the same texts and batch size.
(b) observe of one item, p50, vs embedding one text, p50; with a breakdown of where the rest goes
    (DuckDB begin, statements, commit; index and Python around them).
(c) recall p50 on a 100k-item store vs embedding the query, p50. The store is filled through observe_many
    with an embedder that looks the cached vectors up (same name, so the store accepts it), then reopened
    with the real embedder. Also observe_many throughput once the store holds that many items.

    python benchmarks/bench_memory.py --throughput-items 5000 --single 300 --store-items 100000 --recalls 500
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sets sys.path and HF_HUB_OFFLINE)
import corpus
import numpy as np
from common import environment, ms, pct, table

from engramma import Item, Memory
from engramma.memory.embed import DEFAULT_EMBEDDER

BATCH = 256


class CachedEmbedder:
    """Looks vectors up from the benchmark cache: fills a big store without spending minutes embedding."""

    name = DEFAULT_EMBEDDER
    dim = 384

    def __init__(self, texts: list[str], vectors: np.ndarray):
        self.row = {t: n for n, t in enumerate(texts)}
        self.vectors = vectors

    def embed(self, texts):
        return np.ascontiguousarray(self.vectors[[self.row[t] for t in texts]])


class TimedEmbedder:
    """Wraps an embedder and records how long each embed call took."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, []

    @property
    def dim(self):
        return self.inner.dim

    def embed(self, texts):
        start = time.perf_counter()
        out = self.inner.embed(texts)
        self.calls.append(time.perf_counter() - start)
        return out


class TimedConnection:
    """Forwards to a DuckDB connection, timing each statement."""

    def __init__(self, con, log: list):
        self._con, self._log = con, log

    def execute(self, *args, **kwargs):
        start = time.perf_counter()
        out = self._con.execute(*args, **kwargs)
        self._log.append(("statement", time.perf_counter() - start))
        return out

    def register(self, *args, **kwargs):
        start = time.perf_counter()
        out = self._con.register(*args, **kwargs)
        self._log.append(("register", time.perf_counter() - start))
        return out

    def __getattr__(self, name):
        return getattr(self._con, name)


def instrument_store(mem: Memory, log: list) -> None:
    """Time begin, statements and commit of every transaction (an instance attribute: no library change)."""
    original = mem.store.transaction

    @contextlib.contextmanager
    def transaction():
        t0 = time.perf_counter()
        with original() as con:
            t1 = time.perf_counter()
            log.append(("begin", t1 - t0))
            yield TimedConnection(con, log)
            t2 = time.perf_counter()
        log.append(("commit", time.perf_counter() - t2))

    mem.store.transaction = transaction


def batches(seq, size):
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def throughput(mem: Memory, texts: list[str], repeats: int) -> dict:
    """Items/s of the bare embedder and of observe_many, same texts, same batch, alternating runs. Each repeat
    observes texts of its own (`texts` is split in `repeats` parts): a repeat of an earlier run's texts would
    be judged a duplicate, and a dropped item costs no vector write and no index add."""
    bare, observed, stored = [], [], 0
    part = len(texts) // repeats
    for r in range(repeats):
        mine = texts[r * part:(r + 1) * part]
        start = time.perf_counter()
        for chunk in batches(mine, BATCH):
            mem.embedder.embed(chunk)
        bare.append(len(mine) / (time.perf_counter() - start))
        items = [Item(text=t) for t in mine]
        start = time.perf_counter()
        for chunk in batches(items, BATCH):
            stored += sum(r.in_index for r in mem.observe_many(chunk))
        observed.append(len(mine) / (time.perf_counter() - start))
    return {"items": part, "batch": BATCH, "repeats": repeats, "embed_items_s": float(np.median(bare)),
            "observe_many_items_s": float(np.median(observed)), "embed_runs": bare, "observe_many_runs": observed,
            "indexed": stored, "ratio": float(np.median(observed) / np.median(bare))}


def single(mem: Memory, texts: list[str]) -> dict:
    """p50 of observe(one item) against embed(one text), interleaved, with the breakdown of observe."""
    real = mem.embedder
    timed = TimedEmbedder(real)
    mem.embedder = timed
    log: list = []
    instrument_store(mem, log)
    for t in texts[:10]:  # warm up
        real.embed([t])
        mem.observe(Item(text=t + " (warm-up)"))
    embed_s, observe_s, parts = [], [], []
    for t in texts:
        start = time.perf_counter()
        real.embed([t + " ?"])
        embed_s.append(time.perf_counter() - start)
        timed.calls.clear()
        log.clear()
        start = time.perf_counter()
        mem.observe(Item(text=t))
        total = time.perf_counter() - start
        observe_s.append(total)
        kinds = {}
        for kind, seconds in log:
            kinds[kind] = kinds.get(kind, 0.0) + seconds
        kinds["statements"] = sum(1 for kind, _ in log if kind == "statement")
        kinds["embed_inside"] = sum(timed.calls)
        kinds["total"] = total
        parts.append(kinds)
    mem.embedder = real
    del mem.store.transaction

    def p50(key):
        return pct(ms([p.get(key, 0.0) for p in parts]), 50)

    breakdown = {key: p50(key) for key in ("embed_inside", "begin", "statement", "register", "commit")}
    breakdown["statements_per_observe"] = float(np.median([p["statements"] for p in parts]))
    rest = [p["total"] - p["embed_inside"] - p.get("begin", 0) - p.get("statement", 0) - p.get("register", 0)
            - p.get("commit", 0) for p in parts]
    breakdown["rest_python_index"] = pct(ms(rest), 50)
    overhead = np.asarray(observe_s) - np.asarray([p["embed_inside"] for p in parts])
    return {"n": len(texts), "embed_p50_ms": pct(ms(embed_s), 50), "observe_p50_ms": pct(ms(observe_s), 50),
            "observe_p95_ms": pct(ms(observe_s), 95), "overhead_p50_ms": pct(ms(overhead), 50),
            "breakdown_p50_ms": breakdown}


KEEP_ALL = "version: 1\nname: keep-all\ndefault: index\n"  # every text indexed, repeats too: n items is n vectors


def build_store(folder: Path, texts: list[str], vectors: np.ndarray, batch: int) -> dict:
    start = time.perf_counter()
    folder.mkdir(parents=True)
    policy = folder.parent / "keep-all.yaml"
    policy.write_text(KEEP_ALL)
    with Memory.open(folder, embedder=CachedEmbedder(texts, vectors), policy=policy) as mem:
        for chunk in batches(texts, batch):
            mem.observe_many([Item(text=t) for t in chunk])
        stats = mem.stats()
    return {"items": stats.indexed, "build_s": time.perf_counter() - start, "index_kinds": stats.index_kinds}


def recall_at_size(folder: Path, queries: list[str], extra_texts: list[str], nprobe: int | None = None) -> dict:
    start = time.perf_counter()
    mem = Memory.open(folder)
    open_s = time.perf_counter() - start
    index_desc = {s: (i.kind, getattr(i.inner, "nlist", None), getattr(i.inner, "nprobe", None))
                  for s, i in mem.view.indexes.items()}
    if nprobe:  # what-if: another nprobe on the opened store's IVF indexes (the library is not changed)
        for index in mem.view.indexes.values():
            if index.kind == "ivf":
                index.inner.nprobe = nprobe
    try:
        mem.embedder.embed(["warm up"])
        for q in queries[:10]:
            mem.recall(q, k=10)
        import faiss

        default_threads = faiss.omp_get_max_threads()
        by_threads = {}
        for threads in (default_threads, 1):  # FAISS OpenMP threads: default, then 1
            faiss.omp_set_num_threads(threads)
            embed_s, recall_s, search_s = [], [], []
            for q in queries:
                start = time.perf_counter()
                vector = mem.embedder.embed([q])[0]
                embed_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                mem.view.search(vector, mem.visible_scopes("global"), 10)
                search_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                mem.recall(q, k=10)
                recall_s.append(time.perf_counter() - start)
            by_threads[threads] = {
                "faiss_threads": threads, "embed_p50_ms": pct(ms(embed_s), 50), "recall_p50_ms": pct(ms(recall_s), 50),
                "recall_p95_ms": pct(ms(recall_s), 95), "search_only_p50_ms": pct(ms(search_s), 50),
                "overhead_p50_ms": pct(ms(recall_s), 50) - pct(ms(embed_s), 50)}
        faiss.omp_set_num_threads(default_threads)
        stored = len(mem.view)
        # observe_many throughput with the store at this size (real embedder), vs the bare embedder
        big = throughput(mem, extra_texts, repeats=1)
    finally:
        mem.close()
    return {"store_items": stored, "open_s": open_s, "queries": len(queries), "k": 10, "indexes": index_desc,
            "nprobe_override": nprobe,
            **by_threads[default_threads], "one_thread": by_threads[1], "throughput_at_size": big}


def print_small(results: dict) -> None:
    t, s = results["throughput"], results["single"]
    print("\n(a) throughput, batch 256")
    print(table(["items", "bare embed items/s", "observe_many items/s", "ratio"],
                [[t["items"], t["embed_items_s"], t["observe_many_items_s"], t["ratio"]]]))
    print("\n(b) one item")
    print(table(["embed 1 p50 ms", "observe 1 p50 ms", "observe p95 ms", "observe - its embed p50 ms"],
                [[s["embed_p50_ms"], s["observe_p50_ms"], s["observe_p95_ms"], s["overhead_p50_ms"]]]))
    print("breakdown p50 ms:", json.dumps(s["breakdown_p50_ms"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--throughput-items", type=int, default=5000, help="items per repeat of (a)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating embed/observe_many runs (median)")
    parser.add_argument("--single", type=int, default=300, help="single observes for the p50")
    parser.add_argument("--store-items", type=int, default=100_000, help="store size for the recall timing (0: skip)")
    parser.add_argument("--build-batch", type=int, default=2048, help="observe_many batch while filling the store")
    parser.add_argument("--recalls", type=int, default=500)
    parser.add_argument("--extra-items", type=int, default=2560, help="items observed into the full store")
    parser.add_argument("--nprobe", type=int, default=0, help="what-if: search the big store with this nprobe")
    parser.add_argument("--skip-small", action="store_true", help="skip (a) and (b)")
    parser.add_argument("--json", help="write all results here")
    args = parser.parse_args()

    print(environment(), flush=True)
    results: dict = {"environment": environment()}
    all_texts = corpus.texts(max(args.store_items, args.throughput_items * args.repeats + args.single))
    query_texts = corpus.queries(args.recalls)
    tmp = Path(tempfile.mkdtemp(prefix="engramma-bench-"))
    (tmp / "keep-all.yaml").write_text(KEEP_ALL)
    try:
        # Every item is stored and indexed (keep-all): the cost measured is that of storing, indexing and deciding.
        small = contextlib.nullcontext() if args.skip_small else Memory.open(tmp / "small", policy=tmp / "keep-all.yaml")
        with small as mem:
            if mem is not None:
                mem.embedder.embed(["warm up"] * 8)
                used = args.throughput_items * args.repeats
                results["throughput"] = throughput(mem, all_texts[:used], args.repeats)
                print(json.dumps(results["throughput"]), flush=True)
                results["single"] = single(mem, all_texts[used:used + args.single])
                print(json.dumps(results["single"]), flush=True)
        if args.store_items:
            texts = all_texts[:args.store_items]
            results["build"] = build_store(tmp / "big", texts, corpus.corpus_vectors(args.store_items), args.build_batch)
            print(json.dumps(results["build"]), flush=True)
            extra = [f"{t} (later)" for t in corpus.texts(args.extra_items, seed=99)]
            results["recall"] = recall_at_size(tmp / "big", query_texts, extra, args.nprobe or None)
            print(json.dumps(results["recall"]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if "throughput" in results:
        print_small(results)
    if "recall" in results:
        r = results["recall"]
        print(f"\n(c) recall at {r['store_items']} items (built in {results['build']['build_s']:.1f}s, "
              f"indexes (kind, nlist, nprobe) {r['indexes']}, nprobe override {r['nprobe_override']}, "
              f"reopened in {r['open_s']:.2f}s)")
        print(table(["FAISS threads", "embed query p50 ms", "recall p50 ms", "recall p95 ms", "index search p50 ms",
                     "recall - embed"],
                    [[x["faiss_threads"], x["embed_p50_ms"], x["recall_p50_ms"], x["recall_p95_ms"],
                      x["search_only_p50_ms"], x["overhead_p50_ms"]] for x in (r, r["one_thread"])]))
        b = r["throughput_at_size"]
        print(f"observe_many at {r['store_items']} items: {b['observe_many_items_s']:.0f} items/s vs bare "
              f"{b['embed_items_s']:.0f} ({b['ratio']:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

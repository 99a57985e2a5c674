"""FAISS alone, on cached MiniLM vectors of the synthetic corpus: where IVF overtakes exact search, and what
nprobe buys.

(a) Crossover: single-query search latency (k=10, one query per call, as `recall` does) of `FlatIndex` and
    `IVFIndex` (default nlist and nprobe) at each size, with FAISS OpenMP at its default thread count and
    at 1 thread. IVF recall@10 against exact search is reported alongside.
(b) nprobe sweep at the largest size: recall@10 and p50 per nprobe, for the default nlist and any others
    given, checked against the target (p50 <= 0.5 ms with recall@10 >= 0.95).
(c) As shipped: an `AutoIndex` grown batch by batch (256 vectors a batch, as `observe_many` adds them) to each
    size, so it is trained where the library trains it (at IVF_THRESHOLD, then every RETRAIN_GROWTH-fold),
    with its own nlist and nprobe: p50, recall@10, and the time the slowest add (a retraining) took.

recall@10 is tie-aware: a returned neighbour counts when its score reaches the exact 10th score (the corpus
holds some identical texts, whose vectors tie).

    python benchmarks/bench_index.py --sizes 2000 5000 10000 20000 50000 100000 --queries 1000
"""
from __future__ import annotations

import argparse
import json
import time

import common  # noqa: F401  (sets sys.path and HF_HUB_OFFLINE)
import corpus
import faiss
import numpy as np
from common import environment, ms, pct, table

from engramma.memory.index import IVF_THRESHOLD, AutoIndex, FlatIndex, IVFIndex, default_nlist, default_nprobe

K = 10


def latencies(index, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Seconds per single-query search, one call per query (after a short warm-up)."""
    for q in queries[:20]:
        index.search(q[None], k)
    out = np.empty(len(queries))
    for n, q in enumerate(queries):
        start = time.perf_counter()
        index.search(q[None], k)
        out[n] = time.perf_counter() - start
    return out


def recall_at_k(exact_scores: np.ndarray, scores: np.ndarray, k: int = K) -> float:
    """Mean fraction of the k results whose score reaches the exact k-th score (tie-aware recall@k)."""
    kth = exact_scores[:, k - 1:k] - 1e-5
    return float(np.mean(np.sum(scores[:, :k] >= kth, axis=1) / k))


def with_threads(n: int | None, fn):
    default = faiss.omp_get_max_threads()
    if n is not None:
        faiss.omp_set_num_threads(n)
    try:
        return fn()
    finally:
        faiss.omp_set_num_threads(default)


def crossover(vectors: np.ndarray, queries: np.ndarray, sizes: list[int]) -> list[dict]:
    default_threads = faiss.omp_get_max_threads()
    rows = []
    for n in sizes:
        data, ids = vectors[:n], np.arange(n, dtype=np.int64)
        flat = FlatIndex(data.shape[1])
        flat.add(ids, data)
        start = time.perf_counter()
        ivf = IVFIndex.trained_on(data)
        ivf.add(ids, data)
        build_s = time.perf_counter() - start
        exact, _ = flat.search(queries, K)
        approx, _ = ivf.search(queries, K)
        row = {"n": n, "nlist": ivf.nlist, "nprobe": ivf.nprobe, "ivf_build_s": build_s,
               "ivf_recall10": recall_at_k(exact, approx)}
        for label, threads in (("default", None), ("1thread", 1)):
            row[f"flat_p50_ms_{label}"] = pct(ms(with_threads(threads, lambda: latencies(flat, queries))), 50)
            row[f"ivf_p50_ms_{label}"] = pct(ms(with_threads(threads, lambda: latencies(ivf, queries))), 50)
        row["default_threads"] = default_threads
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def nprobe_sweep(vectors: np.ndarray, queries: np.ndarray, nlists: list[int], nprobes: list[int],
                 threads: int | None) -> list[dict]:
    n = len(vectors)
    ids = np.arange(n, dtype=np.int64)
    flat = FlatIndex(vectors.shape[1])
    flat.add(ids, vectors)
    exact, _ = flat.search(queries, K)
    rows = []
    for nlist in nlists:
        start = time.perf_counter()
        ivf = IVFIndex.trained_on(vectors, nlist=nlist)
        ivf.add(ids, vectors)
        build_s = time.perf_counter() - start
        for nprobe in sorted({p for p in nprobes if p <= nlist} | {default_nprobe(nlist)}):
            ivf.nprobe = nprobe
            approx, _ = ivf.search(queries, K)
            lat = ms(with_threads(threads, lambda: latencies(ivf, queries)))
            row = {"n": n, "nlist": nlist, "nprobe": nprobe, "default": nprobe == default_nprobe(nlist),
                   "recall10": recall_at_k(exact, approx), "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
                   "build_s": build_s}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def as_shipped(vectors: np.ndarray, queries: np.ndarray, sizes: list[int], batch: int = 256) -> list[dict]:
    rows = []
    auto = AutoIndex(vectors.shape[1])
    slowest, added = 0.0, 0
    for n in sorted(sizes):
        while added < n:
            step = min(batch, n - added)
            start = time.perf_counter()
            auto.add(np.arange(added, added + step, dtype=np.int64), vectors[added:added + step])
            slowest = max(slowest, time.perf_counter() - start)
            added += step
        flat = FlatIndex(vectors.shape[1])
        flat.add(np.arange(n, dtype=np.int64), vectors[:n])
        exact, _ = flat.search(queries, K)
        approx, _ = auto.search(queries, K)
        inner = auto.inner
        row = {"n": n, "kind": auto.kind, "trained_size": auto.trained_size, "nlist": getattr(inner, "nlist", None),
               "nprobe": getattr(inner, "nprobe", None), "recall10": recall_at_k(exact, approx),
               "p50_ms": pct(ms(latencies(auto, queries)), 50), "slowest_add_s": slowest}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000, 20000, 50000, 100000])
    parser.add_argument("--queries", type=int, default=1000, help="single-query searches per measurement")
    parser.add_argument("--nlists", type=int, nargs="*", default=None,
                        help="nlist values for the sweep (default: default_nlist(n), and half and double it)")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128])
    parser.add_argument("--sweep-threads", type=int, default=1, help="FAISS threads for the sweep (0: default)")
    parser.add_argument("--skip-crossover", action="store_true")
    parser.add_argument("--json", help="write all rows here")
    args = parser.parse_args()

    n_max = max(args.sizes)
    vectors = corpus.corpus_vectors(n_max)
    queries = corpus.query_vectors(args.queries)
    print(environment(), flush=True)
    print(f"IVF_THRESHOLD={IVF_THRESHOLD}, default_nlist({n_max})={default_nlist(n_max)}, "
          f"default_nprobe={default_nprobe(default_nlist(n_max))}", flush=True)

    results = {"environment": environment()}
    if not args.skip_crossover:
        rows = crossover(vectors, queries, args.sizes)
        results["crossover"] = rows
        print("\n(a) single-query search p50 (ms), k=10")
        print(table(["n", "nlist/nprobe", "Flat p50 (default thr)", "IVF p50 (default thr)", "Flat p50 (1 thr)",
                     "IVF p50 (1 thr)", "IVF recall@10", "IVF build s"],
                    [[r["n"], f"{r['nlist']}/{r['nprobe']}", r["flat_p50_ms_default"], r["ivf_p50_ms_default"],
                      r["flat_p50_ms_1thread"], r["ivf_p50_ms_1thread"], r["ivf_recall10"], r["ivf_build_s"]]
                     for r in rows]))

    base = default_nlist(n_max)
    nlists = args.nlists if args.nlists is not None else [base // 2, base, base * 2]
    sweep = nprobe_sweep(vectors, queries, nlists, args.nprobes, args.sweep_threads or None)
    results["sweep"] = sweep
    print(f"\n(b) nprobe sweep at n={n_max} (FAISS threads: {args.sweep_threads or 'default'})")
    print(table(["nlist", "nprobe", "recall@10", "p50 ms", "p95 ms", "meets both"],
                [[r["nlist"], f"{r['nprobe']}{' (default)' if r['default'] else ''}", r["recall10"], r["p50_ms"],
                  r["p95_ms"], "yes" if r["recall10"] >= 0.95 and r["p50_ms"] <= 0.5 else "no"] for r in sweep]))
    shipped = as_shipped(vectors, queries, args.sizes)
    results["as_shipped"] = shipped
    print("\n(c) AutoIndex as shipped, grown 256 vectors at a time (FAISS threads: default)")
    print(table(["n", "kind", "trained on", "nlist/nprobe", "recall@10", "p50 ms", "slowest add s (so far)"],
                [[r["n"], r["kind"], r["trained_size"], f"{r['nlist']}/{r['nprobe']}" if r["nlist"] else "-",
                  r["recall10"], r["p50_ms"], r["slowest_add_s"]] for r in shipped]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

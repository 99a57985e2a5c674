"""Policy engine and signals cost.

1. `decide` latency with a 50-rule policy, for items that match the last rule or none (every rule is tried):
   target p50 <= 50 us.
2. What routing adds per item inside `observe_many` at 100k stored items: signals (neighbour search, batch
   similarity, keyed history, PII scan), decisions and supersession, timed around `route_batch` itself,
   with pre-embedded vectors so embedding does not blur it: target <= 1 ms per item.

    python benchmarks/bench_policy.py [--stored 100000] [--batches 20]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import environment, pct, table

import corpus
from engramma import Item
from engramma import Memory
from engramma.memory import memory as memory_module
from engramma.memory.embed import DEFAULT_EMBEDDER
from engramma.policies import Signals, decide, parse_policy

BATCH = 256
KEEP_ALL = "version: 1\nname: keep-all\ndefault: index\n"


def fifty_rules() -> str:
    kinds = ["fact", "event", "preference", "correction", "skill", "document", "conversation"]
    rules = []
    for n in range(49):
        when = [f"kind: [{kinds[n % 7]}]", f"source: [src{n}]", f"novelty: {{gte: {0.5 + n / 200:.3f}}}"]
        if n % 3 == 0:
            when.append("pii_none: true")
        if n % 5 == 0:
            when.append("scope: ['user:*', 'agent:*']")
        rules.append(f"  - name: rule{n}\n    when: {{{', '.join(when)}}}\n    route: {['index', 'both', 'train'][n % 3]}")
    rules.append("  - name: last\n    when: {kind: [fact], source: [docs], recurrence: {gte: 1}}\n    route: both")
    return "version: 1\nname: fifty\ndefault: index\nrules:\n" + "\n".join(rules) + "\n"


def bench_decide(repeats: int = 20_000) -> dict:
    policy = parse_policy(fifty_rules(), "fifty")
    assert len(policy.rules) == 50
    cases = {
        "matches rule 50": (Item(text="Refunds take 30 days.", source="docs"), Signals(novelty=0.9, recurrence=2)),
        "matches none": (Item(text="hello", kind="event", source="chat"), Signals(novelty=0.1)),
        "matches rule 1": (Item(text="x", kind="fact", source="src0", scope="user:a"), Signals(novelty=0.9)),
    }
    out = {}
    for name, (item, signals) in cases.items():
        for _ in range(1000):  # warm up
            decide(item, signals, policy)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter_ns()
            decide(item, signals, policy)
            samples.append(time.perf_counter_ns() - start)
        out[name] = {"p50_us": pct(samples, 50) / 1e3, "p99_us": pct(samples, 99) / 1e3,
                     "rule": decide(item, signals, policy).rule}
    return out


class CachedEmbedder:
    name, dim = DEFAULT_EMBEDDER, 384

    def __init__(self, texts, vectors):
        self.row = {t: n for n, t in enumerate(texts)}
        self.vectors = vectors

    def embed(self, texts):
        return np.ascontiguousarray(self.vectors[[self.row[t] for t in texts]])


def bench_signals(stored: int, batches: int) -> dict:
    total = stored + batches * BATCH
    texts = corpus.texts(total)
    vectors = corpus.corpus_vectors(total)
    embedder = CachedEmbedder(texts, vectors)
    timings: list[tuple[int, float]] = []
    real_route_batch = memory_module.route_batch

    def timed_route_batch(con, items, *args, **kwargs):
        start = time.perf_counter()
        out = real_route_batch(con, items, *args, **kwargs)
        timings.append((len(items), time.perf_counter() - start))
        return out

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "store"
        keep_all = Path(tmp) / "keep-all.yaml"
        keep_all.write_text(KEEP_ALL)
        start = time.perf_counter()
        with Memory.open(folder, embedder=embedder, policy=keep_all) as mem:  # fill: every item indexed
            for i in range(0, stored, BATCH):
                mem.observe_many(Item(text=t) for t in texts[i:i + BATCH])
            filled = len(mem.view)
        fill_s = time.perf_counter() - start
        memory_module.route_batch = timed_route_batch
        try:
            with Memory.open(folder, embedder=embedder, policy="preset:default") as mem:
                for b in range(batches):
                    chunk = texts[stored + b * BATCH: stored + (b + 1) * BATCH]
                    mem.observe_many(Item(text=t, key=f"k{n % 50}" if n % 4 == 0 else None)
                                     for n, t in enumerate(chunk))
        finally:
            memory_module.route_batch = real_route_batch
    per_item_ms = [1e3 * seconds / n for n, seconds in timings]
    return {"stored": filled, "fill_s": fill_s, "batches": len(timings), "per_item_ms_median": statistics.median(per_item_ms),
            "per_item_ms_max": max(per_item_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stored", type=int, default=100_000, help="items in the store before timing signals")
    parser.add_argument("--batches", type=int, default=20, help="batches of 256 observed while timing")
    args = parser.parse_args()
    print(environment())
    decided = bench_decide()
    print(table(["case (50-rule policy)", "rule", "p50 us", "p99 us"],
                [[name, r["rule"], r["p50_us"], r["p99_us"]] for name, r in decided.items()]))
    signals = bench_signals(args.stored, args.batches)
    print(table(["stored items", "batches of 256", "routing ms/item (median)", "max"],
                [[signals["stored"], signals["batches"], signals["per_item_ms_median"], signals["per_item_ms_max"]]]))
    print(f"(store filled in {signals['fill_s']:.0f} s)")


if __name__ == "__main__":
    main()

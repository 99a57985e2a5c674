"""One contract suite for every VectorIndex kind: add, search, remove, save, load."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from engramma.memory.index import RETRAIN_GROWTH, AutoIndex, FlatIndex, IVFIndex

DIM = 32
N = 600  # enough for the AutoIndex below to cross its threshold and become IVF
AUTO_THRESHOLD = 200


def unit_vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def make_flat() -> FlatIndex:
    return FlatIndex(DIM)


def make_ivf() -> IVFIndex:
    return IVFIndex.trained_on(unit_vectors(2_000, seed=99))  # a training sample, not the vectors stored


def make_auto() -> AutoIndex:
    return AutoIndex(DIM, ivf_threshold=AUTO_THRESHOLD)


KINDS: dict[str, tuple[Callable, Callable[[Path], object]]] = {
    "flat": (make_flat, FlatIndex.load),
    "ivf": (make_ivf, IVFIndex.load),
    "auto": (make_auto, lambda path: AutoIndex.load(path, ivf_threshold=AUTO_THRESHOLD)),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request) -> str:
    return request.param


@pytest.fixture
def filled(kind):
    """(index, ids, vectors): N vectors added in batches of 50, ids not starting at 0 and not contiguous."""
    make, _ = KINDS[kind]
    index = make()
    ids = np.arange(N, dtype=np.int64) * 3 + 1_000
    vectors = unit_vectors(N, seed=1)
    for start in range(0, N, 50):
        index.add(ids[start:start + 50], vectors[start:start + 50])
    return index, ids, vectors


def top1(index, queries: np.ndarray) -> np.ndarray:
    return index.search(queries, 1)[1][:, 0]


def test_every_vector_finds_itself_first(filled):
    index, ids, vectors = filled
    scores, found = index.search(vectors, 3)
    assert found.shape == scores.shape == (N, 3)
    np.testing.assert_array_equal(found[:, 0], ids)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores must come best first"


def test_len_and_ids_track_add_and_remove(filled):
    index, ids, _ = filled
    assert len(index) == N
    assert sorted(index.ids().tolist()) == ids.tolist()
    gone = ids[::4]
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0, "removing twice removes nothing more"
    assert index.remove(np.array([7], np.int64)) == 0, "an id never added is not counted"
    assert len(index) == N - len(gone)
    assert sorted(index.ids().tolist()) == sorted(set(ids.tolist()) - set(gone.tolist()))


def test_removed_ids_are_never_returned(filled):
    index, ids, vectors = filled
    gone = set(ids[1::3].tolist())
    index.remove(np.array(sorted(gone), np.int64))
    _, found = index.search(vectors, 10)  # even when the query is the removed vector itself
    assert not gone & set(found.ravel().tolist())
    kept = np.array([i not in gone for i in ids.tolist()])
    np.testing.assert_array_equal(top1(index, vectors[kept]), ids[kept])


def test_search_past_the_end_pads_with_minus_one(kind):
    index = KINDS[kind][0]()
    scores, found = index.search(unit_vectors(2, seed=5), 4)
    assert found.tolist() == [[-1] * 4] * 2 and np.isneginf(scores).all(), "an empty index finds nothing"
    vectors = unit_vectors(3, seed=6)
    index.add(np.array([10, 11, 12]), vectors)
    scores, found = index.search(vectors[:1], 5)
    hits = found[0][found[0] >= 0].tolist()  # IVF may skip clusters it does not probe, never the query's own
    assert hits[0] == 10 and set(hits) <= {10, 11, 12}
    assert found[0, len(hits):].tolist() == [-1] * (5 - len(hits)), "missing neighbours come last, as -1"
    assert np.isneginf(scores[0, len(hits):]).all() and np.isfinite(scores[0, :len(hits)]).all()


def test_wrong_dimension_is_refused(kind):
    index = KINDS[kind][0]()
    with pytest.raises(ValueError, match=f"\\(n, {DIM}\\)"):
        index.add(np.array([1]), np.ones((1, DIM + 1), np.float32))
    assert len(index) == 0


def test_save_then_load_gives_identical_results(filled, kind, tmp_path):
    index, ids, vectors = filled
    index.remove(ids[::5])
    path = tmp_path / f"{kind}.faiss"
    index.save(path)
    loaded = KINDS[kind][1](path)
    assert len(loaded) == len(index)
    assert loaded.kind == index.kind
    assert sorted(loaded.ids().tolist()) == sorted(index.ids().tolist())
    queries = unit_vectors(50, seed=3)
    for query in (queries, vectors[:50]):
        before, after = index.search(query, 10), loaded.search(query, 10)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_array_equal(after[0], before[0])
    # The loaded index keeps working as an index.
    extra = unit_vectors(5, seed=4)
    loaded.add(np.arange(5) + 10**9, extra)
    np.testing.assert_array_equal(top1(loaded, extra), np.arange(5) + 10**9)


def test_save_replaces_an_existing_file_whole(filled, kind, tmp_path):
    index, ids, vectors = filled
    path = tmp_path / "index.faiss"
    path.write_bytes(b"an older, longer file" * 10_000)
    index.save(path)
    np.testing.assert_array_equal(top1(KINDS[kind][1](path), vectors[:20]), ids[:20])
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"], "no temporary file is left behind"


def test_auto_index_becomes_ivf_past_its_threshold_and_still_finds_everything():
    index = make_auto()
    vectors = unit_vectors(N, seed=2)
    ids = np.arange(N, dtype=np.int64)
    index.add(ids[:AUTO_THRESHOLD - 1], vectors[:AUTO_THRESHOLD - 1])
    assert index.kind == "flat"
    index.remove(ids[:10])
    index.add(ids[AUTO_THRESHOLD - 1:AUTO_THRESHOLD + 40], vectors[AUTO_THRESHOLD - 1:AUTO_THRESHOLD + 40])
    assert index.kind == "ivf"
    # trained the moment it held AUTO_THRESHOLD vectors (mid-batch), on exactly those; the rest added after
    assert index.trained_size == AUTO_THRESHOLD and len(index) == AUTO_THRESHOLD + 40 - 10
    kept = slice(10, AUTO_THRESHOLD + 40)
    np.testing.assert_array_equal(top1(index, vectors[kept]), ids[kept])
    _, found = index.search(vectors[:10], 5)
    assert not set(found.ravel().tolist()) & set(range(10)), "ids removed before the switch stay removed"


def test_auto_index_retrains_after_growing_retrain_growth_times():
    index = make_auto()
    n = RETRAIN_GROWTH * AUTO_THRESHOLD + 100
    vectors = unit_vectors(n, seed=8)
    ids = np.arange(n, dtype=np.int64)
    first_nlist = None
    for start in range(0, n, 50):
        index.add(ids[start:start + 50], vectors[start:start + 50])
        if index.kind == "ivf" and first_nlist is None:
            first_size, first_nlist = index.trained_size, index.inner.nlist
    assert first_size == AUTO_THRESHOLD
    assert index.trained_size == RETRAIN_GROWTH * first_size, "it retrained once it held 4x its training set"
    assert index.inner.nlist > first_nlist, "a retrained index has more clusters for more vectors"
    assert len(index) == n
    np.testing.assert_array_equal(top1(index, vectors), ids)


def test_auto_index_loaded_from_file_does_not_retrain_on_every_add(tmp_path):
    index = make_auto()
    vectors = unit_vectors(AUTO_THRESHOLD + 50, seed=9)
    index.add(np.arange(len(vectors)), vectors)
    assert index.kind == "ivf"
    index.save(tmp_path / "auto.faiss")
    loaded = AutoIndex.load(tmp_path / "auto.faiss", ivf_threshold=AUTO_THRESHOLD)
    assert loaded.kind == "ivf"
    nlist = loaded.inner.nlist
    loaded.add(np.array([10**6]), unit_vectors(1, seed=10))
    assert loaded.inner.nlist == nlist
    assert loaded.trained_size == len(index), "unknown training size: taken as the size it was saved at"
    told = AutoIndex.load(tmp_path / "auto.faiss", ivf_threshold=AUTO_THRESHOLD, trained_size=index.trained_size)
    assert told.trained_size == index.trained_size == AUTO_THRESHOLD


def test_auto_index_trains_on_the_same_vectors_however_they_arrive():
    """One big add (a rebuild) and many small ones (live ingestion) give the same IVF index."""
    n = RETRAIN_GROWTH * AUTO_THRESHOLD + 77
    vectors, ids = unit_vectors(n, seed=11), np.arange(n, dtype=np.int64)
    at_once, in_batches = make_auto(), make_auto()
    at_once.add(ids, vectors)
    for start in range(0, n, 37):
        in_batches.add(ids[start:start + 37], vectors[start:start + 37])
    assert at_once.trained_size == in_batches.trained_size == RETRAIN_GROWTH * AUTO_THRESHOLD
    queries = unit_vectors(50, seed=12)
    for got, want in zip(at_once.search(queries, 10), in_batches.search(queries, 10)):
        np.testing.assert_array_equal(got, want)


def test_searches_from_many_threads_leave_faiss_settings_as_they_were():
    """Single and batch searches at once, from several threads: FAISS's thread count and BLAS threshold are
    what the process had before, and every search still finds what one thread finds."""
    import threading

    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2_000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = FlatIndex(16)
    index.add(np.arange(len(vectors)), vectors)
    expected = index.search(vectors[:100], 3)[1]
    threads, blas = faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold
    wrong: list[int] = []

    def worker(n: int) -> None:
        for r in range(60):
            rows = slice(r % 90, r % 90 + 1) if (n + r) % 2 else slice(0, 100)  # a recall, or a batch
            if not np.array_equal(index.search(vectors[rows], 3)[1], expected[rows]):
                wrong.append(n)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert wrong == []
    assert (faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold) == (threads, blas)

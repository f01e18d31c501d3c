"""Restricted k-NN search (``Memory.search(..., allowed=...)``) against a brute-force numpy reference, for every index
kind, before its index is trained (the exact buffer) and after, on the selector path and on the mask path that GPU
indexes take.

The reference searches what the index stores, in the space it searches: the decoded vectors (fp16, PQ codes plus
their list centroid) after the PCA, if any, with the queries through the same PCA. Against it:

- exact kinds, and IVF kinds with ``nprobe = nlist``, return the reference top k: the same scores (to float
  tolerance) and the same ids, where an id may differ only inside a tie;
- approximate kinds (IVF with fewer probes, HNSW) return only allowed entries, each with its own true score,
  sorted, and recall@k against the reference of at least a stated bound.

Every test here guards the planted bug "restricted search returns random allowed entries" (in ``Memory.search``
or the selector / mask paths it uses).
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.memory import Memory

DIM, N, K, CLUSTERS = 32, 600, 8, 24
CLASSES = [f"c{i}" for i in range(6)]
RARE, RARE_COUNT = "rare", 3  # a class with fewer entries than k
TRAIN_SIZE, BUFFERED = 400, 300  # trained kinds train at the add reaching 400; at 300 they are an exact buffer
ALLOWED_SETS = {
    "two classes": ["c1", "c2"],
    "three and an unknown name": ["c0", "c3", "c4", "not in memory"],
    "rare and one class": [RARE, "c5"],
}
TOL = 1e-4  # float32 scores, PQ tables summed in another order

# name: (kind, parameters, lower bound on recall@K against the reference; 1.0 = exact: ids must match). Restricted
# recall measured at 0.84 (ivf-flat, ivf-pq), 0.90 (hnsw), 0.88 (pca-hnsw) at least; random allowed entries
# would score about K / 200.
KINDS = {
    "flat": ("flat", {}, 1.0),
    "flat-fp16": ("flat-fp16", {}, 1.0),
    "ivf-flat all lists": ("ivf-flat", {"nlist": 8, "nprobe": 8}, 1.0),
    "ivf-flat": ("ivf-flat", {"nlist": 8, "nprobe": 4}, 0.75),
    "ivf-pq all lists": ("ivf-pq", {"nlist": 8, "nprobe": 8, "pq_m": 8}, 1.0),
    "ivf-pq": ("ivf-pq", {"nlist": 8, "nprobe": 4, "pq_m": 8}, 0.75),
    "hnsw": ("hnsw", {"ef_search": 32}, 0.85),
    "pca-flat": ("flat", {"pca_dim": 16}, 1.0),
    "pca-ivf-flat all lists": ("ivf-flat", {"pca_dim": 16, "nlist": 8, "nprobe": 8}, 1.0),
    "pca-ivf-pq all lists": ("ivf-pq", {"pca_dim": 16, "nlist": 8, "nprobe": 8, "pq_m": 8}, 1.0),
    "pca-hnsw": ("hnsw", {"pca_dim": 16, "ef_search": 32}, 0.8),
}


def clustered(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around CLUSTERS centres (the same for every call); returns them and their cluster ids."""
    centres = np.random.default_rng(0).standard_normal((CLUSTERS, DIM))
    rng = np.random.default_rng(seed)
    which = rng.integers(0, CLUSTERS, n)
    x = centres[which] / np.sqrt(DIM) + 0.35 * rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), which


def entries() -> tuple[np.ndarray, list[str]]:
    """N entries; class = cluster mod 6, except RARE_COUNT entries (spread over the order) of class RARE."""
    x, which = clustered(N, 1)
    names = [CLASSES[c % len(CLASSES)] for c in which]
    for i in np.linspace(20, BUFFERED - 20, RARE_COUNT).astype(int):  # in both phases
        names[i] = RARE
    return x, names


QUERIES = clustered(60, 2)[0]


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """Tiny indexes: OpenMP threads only add start-up cost (seconds on a busy machine) and make HNSW builds
    depend on scheduling; one thread keeps this file fast and its recall numbers reproducible."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


_BUILT: dict[tuple[str, str], Memory] = {}


def built(name: str, phase: str) -> Memory:
    """Memory of kind ``name`` holding the first BUFFERED entries (``phase="buffered"``) or all N
    (``"trained"``), added in batches of 100; built once per session."""
    if (name, phase) not in _BUILT:
        kind, params, _ = KINDS[name]
        memory = Memory(DIM, "emb", kind, **{"train_size": TRAIN_SIZE, **params})
        x, names = entries()
        for i in range(0, BUFFERED if phase == "buffered" else N, 100):
            memory.add(x[i:i + 100], names[i:i + 100])
        assert memory.trained == (phase == "trained" or not memory.spec.needs_training)
        _BUILT[name, phase] = memory
    return _BUILT[name, phase]


def search_space(memory: Memory, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 (stored vectors ``len×d``, queries ``Q×d``) in the space the index searches: decoded, projected."""
    import faiss

    index = memory.index
    if memory.trained and isinstance(index, faiss.IndexPreTransform):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        for i in range(index.chain.size()):  # PCA (and rotation), then re-normalisation
            queries = index.chain.at(i).apply(queries)
        index = faiss.downcast_index(index.index)
    ivf = faiss.try_extract_index_ivf(index) if memory.trained else None
    if ivf is not None:
        ivf.make_direct_map()  # reconstruct needs it; search does not change
    return index.reconstruct_n(0, index.ntotal).astype(np.float64), queries.astype(np.float64)


def reference(memory: Memory, queries: np.ndarray, k: int, allowed: list[str] | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brute force: top k by inner product among entries whose class is allowed (ties: the lower id first).
    Returns scores ``Q×k`` (-inf padding), ids ``Q×k`` (-1 padding) and every entry's score ``Q×len``."""
    stored, q = search_space(memory, queries)
    every = q @ stored.T
    names = np.array(memory.names)[memory.labels]
    ok = np.ones(len(memory), bool) if allowed is None else np.isin(names, list(allowed))
    masked = np.where(ok[None, :], every, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(memory)), masked.shape), -masked), axis=1)[:, :k]
    scores = np.take_along_axis(masked, order, 1)
    ids = np.where(np.isfinite(scores), order, -1)
    if ids.shape[1] < k:
        ids = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, k - scores.shape[1])), constant_values=-np.inf)
    return scores, ids, every


def check_valid(memory: Memory, scores: np.ndarray, ids: np.ndarray, every: np.ndarray,
                allowed: list[str] | None) -> None:
    """What any kind must return: allowed, distinct entries, each with its own true score, in descending order,
    and -1 / -inf only as trailing padding."""
    found = ids >= 0
    assert np.array_equal(np.isinf(scores) & (scores < 0), ~found)
    assert (np.diff(found.astype(int), axis=1) <= 0).all(), "padding must trail"
    names = np.array(memory.names)[memory.labels]
    if allowed is not None:
        assert np.isin(names[ids[found]], list(allowed)).all(), "an entry of a class not allowed"
    for row, row_ids in enumerate(ids):
        valid = row_ids[row_ids >= 0]
        assert len(set(valid.tolist())) == len(valid), f"row {row}: an entry twice"
    true = np.take_along_axis(every, np.maximum(ids, 0), 1)
    np.testing.assert_allclose(scores[found], true[found], rtol=0, atol=TOL,
                               err_msg="a returned score is not the inner product with the returned entry")
    assert (np.diff(np.where(found, scores, -9.0), axis=1) <= TOL).all(), "scores not descending"


def check_exact(scores: np.ndarray, ids: np.ndarray, ref_scores: np.ndarray, ref_ids: np.ndarray,
                every: np.ndarray) -> None:
    """The reference's scores rank by rank, and its ids, except where the reference's score at that rank is
    shared (within TOL) by another entry: a tie, where either order is right. With :func:`check_valid` (each
    returned score is its entry's true score) this makes the answer a valid top k."""
    np.testing.assert_array_equal(ids < 0, ref_ids < 0)
    np.testing.assert_allclose(scores[ids >= 0], ref_scores[ids >= 0], rtol=0, atol=TOL)
    for row, rank in zip(*np.nonzero(ids != ref_ids)):
        ties = np.abs(every[row] - ref_scores[row, rank]) < TOL
        assert ties.sum() >= 2, f"query {row} rank {rank}: id {ids[row, rank]}, reference {ref_ids[row, rank]}"


def recall(ids: np.ndarray, ref_ids: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, int((t >= 0).sum()))
                          for f, t in zip(ids, ref_ids)]))


def bound(memory: Memory, name: str) -> float:
    """Recall@K bound of the kind; 1.0 (exact) for any kind while it is still the exact buffer."""
    return KINDS[name][2] if memory.trained else 1.0


def _compare(memory: Memory, name: str, allowed: list[str] | None, queries: np.ndarray = QUERIES) -> None:
    scores, ids = memory.search(queries, K, allowed=allowed)
    assert scores.shape == ids.shape == (len(queries), K) and scores.dtype == np.float32
    ref_scores, ref_ids, every = reference(memory, queries, K, allowed)
    check_valid(memory, scores, ids, every, allowed)
    if bound(memory, name) == 1.0:
        check_exact(scores, ids, ref_scores, ref_ids, every)
    else:
        assert recall(ids, ref_ids) >= bound(memory, name), (name, allowed, recall(ids, ref_ids))


@pytest.mark.parametrize("phase", ["buffered", "trained"])
@pytest.mark.parametrize("name", KINDS)
def test_restricted_search_matches_brute_force(name, phase):
    """Guards: restricted search returning random allowed entries (selector path, every kind, both phases)."""
    memory = built(name, phase)
    for allowed in ALLOWED_SETS.values():
        _compare(memory, name, allowed)
    _compare(memory, name, None)
    _compare(memory, name, [*CLASSES, RARE])  # every class allowed: the unrestricted path, same answer


@pytest.mark.parametrize("name", KINDS)
def test_restricted_search_on_the_mask_path(name, monkeypatch):
    """Guards: restricted search returning random allowed entries on the mask path (how GPU indexes restrict:
    fetch more neighbours, keep the allowed ones), run here on the CPU index by marking the memory as placed on
    a GPU. Below GPU_MAX_K entries it is as exact as the index."""
    memory = built(name, "trained")
    monkeypatch.setattr(memory, "_gpu", object())  # search() takes the GPU branch; the index stays on CPU
    for allowed in ALLOWED_SETS.values():
        _compare(memory, name, allowed)


@pytest.mark.parametrize("phase", ["buffered", "trained"])
@pytest.mark.parametrize("name", KINDS)
def test_fewer_allowed_entries_than_k_are_padded(name, phase):
    """Guards: restricted search returning random allowed entries, or other classes' entries, when fewer than k
    qualify. Only the 3 RARE entries qualify: exact kinds return all 3 in score order, then -1 ids with -inf
    scores; approximate kinds a subset of them, padded the same way. Nothing qualifies: all padding."""
    memory = built(name, phase)
    rare = np.flatnonzero(np.array(memory.names)[memory.labels] == RARE)
    assert len(rare) == RARE_COUNT
    scores, ids = memory.search(QUERIES, K, allowed=[RARE])
    ref_scores, ref_ids, every = reference(memory, QUERIES, K, [RARE])
    check_valid(memory, scores, ids, every, [RARE])
    assert (ids[:, RARE_COUNT:] == -1).all() and np.isneginf(scores[:, RARE_COUNT:]).all()
    assert np.isin(ids[ids >= 0], rare).all()
    if bound(memory, name) == 1.0:
        check_exact(scores, ids, ref_scores, ref_ids, every)
        assert (ids[:, :RARE_COUNT] >= 0).all()
    for allowed in ([], ["not in memory"]):
        scores, ids = memory.search(QUERIES[:4], K, allowed=allowed)
        assert (ids == -1).all() and np.isneginf(scores).all()


def test_reference_is_a_correct_brute_force():
    """The reference itself, on a hand-made flat memory: ties broken by lower id, padding, unknown names."""
    memory = Memory(2, "emb", "flat")
    memory.add(np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], np.float32), ["a", "b", "a", "b"])
    q = np.array([[1, 0]], np.float32)
    scores, ids, _ = reference(memory, q, 3, ["a", "zzz"])
    assert ids.tolist() == [[0, 2, -1]] and scores[0, :2].tolist() == [1.0, 1.0] and np.isneginf(scores[0, 2])
    scores, ids, _ = reference(memory, q, 2, ["b"])
    assert ids.tolist() == [[3, 1]] and np.allclose(scores, [[0.6, 0.0]])
    found_scores, found = memory.search(q, 2, allowed=["b"])
    assert found.tolist() == [[3, 1]] and np.allclose(found_scores, [[0.6, 0.0]])

"""The ``auto`` index kind (bench.memory.policy): exact while small, IVF lists that follow the memory's size,
retrained on what has arrived, probes tuned per vocabulary to a recall target; deterministic and resumable.

The policy's sizes are shrunk here (``small_policy``) so that every phase runs on a few thousand 32-d entries.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.errors import ConfigError
from bench.memory import IndexSpec, Memory, index_bytes, policy

DIM, K = 32, 8
CLASSES = [f"c{i}" for i in range(20)]


@pytest.fixture
def small_policy(monkeypatch):
    monkeypatch.setattr(policy, "EXACT_UNTIL", 512)
    monkeypatch.setattr(policy, "SUBSET_WORK", 200 * DIM)  # a vocabulary of <= 200 entries is searched exactly
    monkeypatch.setattr(policy, "TUNE_QUERIES", 128)


def clustered(n: int, seed: int, clusters: int = 60, spread: float = 0.4) -> tuple[np.ndarray, list[str]]:
    """Unit vectors around fixed centres; cluster c belongs to class c % 20."""
    centres = np.random.default_rng(0).standard_normal((clusters, DIM))
    rng = np.random.default_rng(seed)
    which = rng.integers(0, clusters, n)
    x = centres[which] / np.sqrt(DIM) + spread * rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), [CLASSES[c % 20] for c in which]


def filled(x: np.ndarray, names: list[str], chunk: int = 300, spec: IndexSpec | None = None) -> Memory:
    memory = Memory(DIM, "emb", spec or IndexSpec("auto"))
    for i in range(0, len(x), chunk):
        memory.add(x[i:i + chunk], names[i:i + chunk])
    return memory


def reference(x: np.ndarray, names: list[str], queries: np.ndarray, allowed: list[str] | None, k: int = K
              ) -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(len(x)) if allowed is None else np.flatnonzero(np.isin(names, allowed))
    return policy.top_k(queries @ x[ids].T, ids, k)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, (t >= 0).sum()) for f, t in
                          zip(found, truth)]))


def test_exact_below_the_first_training_size_equals_flat(small_policy):
    x, names = clustered(500, seed=1)
    auto, flat = filled(x, names), filled(x, names, spec=IndexSpec("flat"))
    assert auto.auto.phase == "flat" and auto.index_report()["trainings"] == []
    queries = clustered(20, seed=2)[0]
    for allowed in (None, CLASSES[:3]):
        a, f = auto.search(queries, K, allowed=allowed), flat.search(queries, K, allowed=allowed)
        np.testing.assert_array_equal(a[1], f[1])
        np.testing.assert_array_equal(a[0], f[0])


def test_trains_on_what_has_arrived_and_retrains_as_it_grows(small_policy):
    x, names = clustered(9000, seed=1)
    memory = Memory(DIM, "emb", IndexSpec("auto"))
    seen = []
    for i in range(0, len(x), 700):
        memory.add(x[i:i + 700], names[i:i + 700])
        seen.append(len(memory))
    state = memory.auto
    # Trained at the first add reaching 512 entries (700 had arrived: never more than had arrived), then each
    # time the memory has grown four-fold since: 2800 (>= 4·700) and 11,200 is not reached.
    assert state.trainings == [700, 2800]
    assert all(n in seen for n in state.trainings)
    assert state.trained_at == 2800 and state.nlist == policy.auto_nlist(2800) == 128
    assert memory.index.ntotal == len(memory) == 9000
    assert policy.auto_nlist(16_384) == 512 and policy.auto_nlist(1_000_000) == 2048
    assert policy.auto_nlist(2 ** 20) == 4096
    assert policy.next_training(0) == policy.EXACT_UNTIL and policy.next_training(2800) == 11_200
    # Ids are still insertion order: each entry's own vector is its exact nearest neighbour.
    probe = np.array([0, 699, 2799, 8999])
    ids = memory.exact_search(x[probe], 1, None)[1]
    np.testing.assert_array_equal(ids[:, 0], probe)
    np.testing.assert_allclose(memory.vectors(probe), x[probe], atol=1e-6)


def test_tuned_probes_reach_the_target_on_new_queries(small_policy):
    hard = {"clusters": 200, "spread": 0.8}  # neighbours spread over several lists: probes must be tuned
    x, names = clustered(12_000, seed=1, **hard)
    memory = filled(x, names, chunk=1000)
    assert memory.auto.phase == "ivf-flat"
    pool, pool_names = clustered(600, seed=3, **hard)
    for allowed in (CLASSES[:10], None):  # 10 of 20 classes: far above SUBSET_WORK, so the IVF is searched
        # New queries of the searched vocabulary's classes, as a densely labelled dataset's images give (the
        # tuning's leave-one-out queries are too).
        queries = pool if allowed is None else pool[np.isin(pool_names, allowed)]
        found = memory.search(queries, K, allowed=allowed)[1]
        got = recall(found, reference(x, names, queries, allowed)[1])
        tuned = memory.index_report()["tuned"]
        entry = next(t for t in tuned if t["classes"] == (10 if allowed else 20))
        assert entry["recall"] >= policy.tuning_target(0.95) and entry["k"] == K
        assert entry["nprobe"] < memory.auto.nlist  # tuned below an exhaustive scan on this data
        assert got >= 0.95, (allowed is not None, got, entry)
    # A stricter target probes more lists.
    memory.spec = IndexSpec("auto", target_recall=0.999)
    memory.auto.changed()
    memory.search(queries, K, allowed=CLASSES[:10])
    stricter = memory.index_report()["tuned"][0]
    assert stricter["nprobe"] > entry["nprobe"]


def test_small_vocabularies_are_searched_exactly(small_policy):
    x, names = clustered(3000, seed=1)
    memory = filled(x, names)
    assert memory.auto.phase == "ivf-flat"
    queries = clustered(40, seed=4)[0]
    allowed = [CLASSES[0]]  # about 150 entries: within SUBSET_WORK
    scores, ids = memory.search(queries, K, allowed=allowed)
    ref_scores, ref_ids = reference(x, names, queries, allowed)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    report = memory.index_report()
    assert report["exact_subsets"] == [{"classes": 1, "entries": int(np.isin(names, allowed).sum())}]
    assert report["tuned"] == []


def test_deterministic_and_resumable(small_policy, tmp_path):
    x, names = clustered(4000, seed=1)
    whole = filled(x, names)
    again = filled(x, names)
    assert index_bytes(whole.index) == index_bytes(again.index)
    # Interrupted after 2100 entries (trained once), saved, loaded, continued: the same index and searches.
    first = filled(x[:2100], names[:2100])
    first.save(tmp_path / "m")
    resumed = Memory.load(tmp_path / "m", "emb", DIM, IndexSpec("auto"))
    assert resumed.auto.saved() == first.auto.saved()
    for i in range(2100, 4000, 300):
        resumed.add(x[i:i + 300], names[i:i + 300])
    assert resumed.auto.saved() == whole.auto.saved()
    queries = clustered(50, seed=5)[0]
    for allowed in (CLASSES[:12], None):
        a, b = whole.search(queries, K, allowed=allowed), resumed.search(queries, K, allowed=allowed)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    assert whole.index_report() == resumed.index_report()


def test_top_k_breaks_ties_by_id():
    scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1]], np.float32)
    ids = np.array([7, 3, 2, 1, 0])
    s, i = policy.top_k(scores, ids, 4)
    assert i.tolist() == [[1, 3, 2, 7]]
    np.testing.assert_array_equal(s, np.float32([[0.9, 0.9, 0.5, 0.5]]))
    s, i = policy.top_k(scores[:, :2], ids[:2], 3)
    assert i.tolist() == [[3, 7, -1]] and s[0, 2] == -np.inf


@pytest.mark.parametrize("params, word", [({"nprobe": 32}, "knn.nprobe=32"), ({"nlist": 64}, "knn.nlist=64"),
                                          ({"pca_dim": 8}, "knn.pca_dim=8")])
def test_knobs_auto_sets_itself_are_errors(params, word):
    with pytest.raises(ConfigError, match=word.replace(".", r"\.")):
        Memory(DIM, "emb", IndexSpec("auto", **params))


def test_the_run_record_says_what_the_index_did(small_run):
    record = small_run("knn.k=4")
    assert len(record["memory_index"]) == record["steps_done"] == len(record["tasks"])
    last = record["memory_index"][-1]
    assert last["kind"] == "auto" and last["phase"] == "flat"  # the embedded sequence's memory is small
    assert last["entries"] == record["state_size"][-1]["memory_entries"]


def test_the_dashboard_lists_the_default_index_by_size():
    from bench.perf_report import auto_rows

    rows = [{"dim": 384, "n": 1000, "recall_at_16": 1.0, "ms_per_image": 0.7,
             "index": {"phase": "flat", "nlist": 0, "tuned": [], "exact_subsets": []}},
            {"dim": 384, "n": 1_000_000, "recall_at_16": 0.9778, "ms_per_image": 9.6,
             "index": {"phase": "ivf-flat", "nlist": 2048, "tuned": [{"nprobe": 4}], "exact_subsets": []}}]
    text = "\n".join(auto_rows(rows))
    assert "| 384 | 1,000 | flat | - | exact | 1.0000 | 0.70 |" in text
    assert "| 384 | 1,000,000 | ivf-flat | 2048 | nprobe 4 | 0.9778 | 9.60 |" in text
    assert auto_rows([]) == []

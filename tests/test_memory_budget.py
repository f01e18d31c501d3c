"""The memory budget while adapting (knn.max_per_class, knn.max_entries; issue 18, part 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.memory import IndexSpec, Memory
from bench.memory.budget import Reservoir, keep_entries, select

DIM = 16


def _stream(n: int, classes: int = 6, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, [f"c{c}" for c in rng.integers(0, classes, n)]


def _budgeted(spec: IndexSpec, seed: int, steps: int = 4, per_step: int = 400, **budget: int
              ) -> tuple[Memory, Reservoir]:
    memory, reservoir = Memory(DIM, "e", spec), Reservoir(seed, **budget)
    for step in range(steps):
        x, names = _stream(per_step, seed=step)
        keep_old, keep_new = reservoir.plan(step, memory.names, memory.labels, names)
        keep_entries(memory, keep_old)
        if keep_new.any():
            memory.add(x[keep_new], [n for n, k in zip(names, keep_new) if k])
        counts = np.bincount(memory.labels)
        assert counts.max() <= budget.get("max_per_class", 0) or not budget.get("max_per_class")
        assert len(memory) <= budget.get("max_entries", 0) or not budget.get("max_entries")
    return memory, reservoir


def test_select_keeps_the_lowest_priorities_per_class_then_overall() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    keys = np.array([0.5, 0.1, 0.3, 0.9, 0.2, 0.4])
    assert select(labels, keys, 2, 0).tolist() == [False, True, True, True, True, True]
    assert select(labels, keys, 2, 3).tolist() == [False, True, True, False, True, False]
    assert select(labels, keys, 0, 0).all()


@pytest.mark.parametrize("budget", [{"max_per_class": 25}, {"max_entries": 60},
                                    {"max_per_class": 30, "max_entries": 100}])
def test_the_bound_holds_at_every_step_and_the_dropped_count_adds_up(budget: dict[str, int]) -> None:
    memory, reservoir = _budgeted(IndexSpec("flat"), seed=1, **budget)
    assert reservoir.dropped == 4 * 400 - len(memory)
    assert len(reservoir.keys) == len(memory)


def test_same_seed_same_entries_other_seed_others() -> None:
    a, _ = _budgeted(IndexSpec("flat"), seed=5, max_per_class=20)
    b, _ = _budgeted(IndexSpec("flat"), seed=5, max_per_class=20)
    c, _ = _budgeted(IndexSpec("flat"), seed=6, max_per_class=20)
    va, vb, vc = (m.index.reconstruct_n(0, len(m)) for m in (a, b, c))
    assert np.array_equal(va, vb) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(va, vc)


def test_the_kept_entries_are_a_uniform_sample_of_each_class() -> None:
    """Every candidate of a class is kept with the same chance, old or new (what a reservoir guarantees)."""
    kept = np.zeros(4 * 100)
    for seed in range(200):
        reservoir, labels = Reservoir(seed, max_per_class=10), np.zeros(0, np.int64)
        first = []
        for step in range(4):
            keep_old, keep_new = reservoir.plan(step, ["c"], labels, ["c"] * 100)
            first = [i for i, k in zip(first, keep_old) if k] + [step * 100 + i for i in np.flatnonzero(keep_new)]
            labels = np.zeros(len(first), np.int64)
        kept[first] += 1
    by_step = kept.reshape(4, 100).mean(1) / 200  # expected 10 / 400 for every candidate
    np.testing.assert_allclose(by_step, 10 / 400, atol=0.006)


@pytest.mark.parametrize("spec", [IndexSpec("flat-fp16"), IndexSpec("ivf-flat", nlist=8, train_size=200, nprobe=3),
                                  IndexSpec("ivf-pq", nlist=8, pq_m=4, train_size=300, nprobe=2)],
                         ids=lambda s: s.kind)
def test_removing_entries_keeps_the_others_in_order(spec: IndexSpec) -> None:
    """A compacted index answers as the full one restricted to the kept ids, renumbered."""
    import faiss

    memory = Memory(DIM, "e", spec)
    memory.add(*_stream(700))
    queries = _stream(9, seed=9)[0]
    keep = np.random.default_rng(0).random(700) < 0.6
    kept = np.flatnonzero(keep)
    selector = faiss.IDSelectorBatch(len(kept), faiss.swig_ptr(kept))
    ref_s, ref_i = memory.index.search(queries, 5, params=memory.search_params(selector))
    keep_entries(memory, keep)
    scores, ids = memory.search(queries, 5)
    assert len(memory) == len(kept) == memory.index.ntotal
    np.testing.assert_array_equal(ids, np.searchsorted(kept, ref_i))
    np.testing.assert_array_equal(scores, ref_s)


def test_a_budget_refuses_hnsw(tmp_path: Path) -> None:
    from bench.errors import ConfigError
    from bench.run import build_config, run

    cfg, spec = build_config(["SEQ=synth", "METHOD=knn", "knn.index=hnsw", "knn.max_entries=5",
                              f"output_dir={tmp_path}", "progress=false", "wandb=false"])
    with pytest.raises(ConfigError, match="HNSW graph cannot"):
        run(cfg, spec)


@pytest.mark.slow
def test_a_budgeted_run_records_what_it_dropped(tmp_path: Path) -> None:
    from bench.run import build_config, run

    args = ["SEQ=synth", "METHOD=knn", "adapt_limit=11", "eval_limit=4", "batch_size=3", "progress=false",
            "wandb=false"]
    free = run(*build_config([*args, f"output_dir={tmp_path / 'free'}"])).to_json()
    cfg, spec = build_config([*args, "knn.max_per_class=3", "knn.max_entries=20", f"output_dir={tmp_path / 'b'}"])
    record = run(cfg, spec).to_json()
    candidates = np.cumsum([s["memory_added"] for s in free["timings"]["steps"]])
    for t, state in enumerate(record["state_size"]):
        assert state["memory_entries"] <= 20
        assert state["memory_entries"] + state["memory_dropped"] == candidates[t]
    assert "memory_dropped" not in free["state_size"][0]
    assert record["state_size"][-1]["memory_dropped"] > 0
    # resumable: the reservoir is saved with every step
    (run_dir,) = (tmp_path / "b").glob("synth/knn/*")
    assert (run_dir / "memory" / "step-1" / "reservoir.npz").exists()

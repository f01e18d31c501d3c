"""The performance harness's own arithmetic (exact neighbours, recall, list counts) and a miniature table run."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import perf_memory


def test_exact_top_k_matches_a_full_sort():
    rng = np.random.default_rng(0)
    base, queries = rng.standard_normal((1000, 16)).astype(np.float32), rng.standard_normal((5, 16)).astype(np.float32)
    found = perf_memory.exact_top_k(queries, base, 7, chunk=128)  # chunks smaller than the base
    expected = np.argsort(-(queries @ base.T), axis=1)[:, :7]
    assert [set(r) for r in found.tolist()] == [set(r) for r in expected.tolist()]


def test_recall_counts_true_neighbours_found():
    truth = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    found = np.array([[4, 3, 9, 8], [6, -1, -1, -1]])
    assert perf_memory.recall(found, truth) == pytest.approx((2 / 4 + 1 / 2) / 2)


def test_synthetic_embeddings_are_unit_vectors_from_the_vocabulary_when_asked():
    syn = perf_memory.Synthetic(clusters=40, classes=10, vocabulary=3)
    x, which = perf_memory.clustered(500, 32, syn, seed=1, chunk=128)
    assert x.shape == (500, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, rtol=1e-5)
    _, which = perf_memory.clustered(200, 32, syn, seed=2, only_vocabulary=True)
    assert set((which % syn.classes).tolist()) <= {0, 1, 2}


def test_ivf_lists_grow_with_the_memory():
    assert [perf_memory.ivf_lists(n) for n in (1_000, 10_000, 100_000, 1_000_000, 10_000_000)] == [
        16, 32, 512, 4096, 4096]


@pytest.mark.slow
def test_table_runs_end_to_end_on_a_small_memory():
    syn = perf_memory.Synthetic(clusters=40, classes=10, vocabulary=3)
    rows, kept = perf_memory.table([2000], 32, syn, quick=True, keep=("ivf-flat", 2000, {"nprobe": 4}),
                                   log=lambda _: None)
    kinds = [r["kind"] for r in rows if "kind" in r]
    assert kinds == ["flat", "flat-fp16", "ivf-flat", "ivf-pq", "pca16-ivf-pq", "hnsw"]
    flat = rows[0]
    assert flat["sweep"][0]["recall_at_16"] == 1.0 and flat["bytes_per_entry"] == pytest.approx(4 * 32 + 8, abs=1)
    assert kept is not None and kept.spec.nprobe == 4 and len(kept) == 2000


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_the_pipeline_instrumentation_times_every_stage_and_restores_the_module(mode):
    """``perf_pipeline.patched`` (used by perf.py and stages.py) must see the forward passes on the evaluation's
    own path (``bench.dense.dense_features``), not a function the module no longer calls."""
    import perf_pipeline
    import torch

    from bench.config import KnnConfig
    from bench.dense import Protocol
    from bench.heads import KnnHead
    from bench.memory import Memory
    from bench.models import build_base, build_embedder
    from bench.module import ContinualSegmenter
    from bench.proposals import build_proposer
    from datamodules.vocabulary import Vocabulary

    base = build_base("tiny-random")
    embedder = build_embedder("dinov2", base, "dinov2-tiny-random")
    vocabulary = Vocabulary.from_names("v", ["a", "b", "c"])
    memory = Memory(embedder.dim, embedder.identity)
    rng = np.random.default_rng(0)
    memory.add(rng.standard_normal((30, embedder.dim)).astype(np.float32), ["a", "b", "c"] * 10)
    module = ContinualSegmenter(base, build_proposer("superpixel", 8), KnnHead(base, embedder, memory, KnnConfig()))
    image = torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8)
    sample = {"image": image, "semantic": torch.randint(0, 3, (64, 80))}
    protocol = Protocol("slide", short_side=160) if mode == "slide" else Protocol("whole")
    module.begin_eval([vocabulary], [False], [protocol])
    stages = perf_pipeline.Stages()
    with torch.no_grad(), perf_pipeline.patched(module, stages):
        module.test_step([sample], 0, 0)
    expected = {"windows", "base_forward", "embedder_forward", "proposals", "pooling", "text_scores", "retrieval",
                "fusion", "inference", "metric_update"}
    assert expected <= set(stages.seconds), set(stages.seconds)
    assert all(stages.seconds[s] > 0 for s in expected)
    for owner, names in ((base, ("dense_features", "preprocess")), (embedder, ("dense_features", "preprocess")),
                         (module.head, ("text_probabilities",))):
        assert not set(names) & set(vars(owner)), owner  # the instance attributes are gone again
    assert not isinstance(module.head.memory, perf_pipeline.TimedMemory)
    assert module.metrics[0].update.__name__ != "timed"
    import bench.dense
    import bench.heads.knn

    assert bench.dense._windows.__name__ == "_windows" and bench.heads.knn.fuse.__name__ == "fuse"


def test_the_adapt_overhead_divides_by_the_forward_of_the_run_without_workers():
    import perf_pipeline

    loaded = {"ms_per_image_total": 74.0, "ms_per_image": {"embedder_forward": 69.0, "data": 2.0}}
    in_process = {"ms_per_image_total": 70.0, "ms_per_image": {"embedder_forward": 50.0, "data": 11.0}}
    assert perf_pipeline.adapt_overhead(loaded, in_process) == 0.1  # (74 - 69) / 50, not / 69
    assert perf_pipeline.adapt_overhead(in_process, in_process) == 0.4  # a run's own ratio: (70 - 50) / 50

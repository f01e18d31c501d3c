"""Tests written against mutants that survived ``make mutate`` (benchmarks/mutation.py): each docstring names the
mutants it kills as ``module.function: changed line`` (mutmut's numbers shift when a function changes).

Small and exact: hand-made memories, a fake run context for the baselines' data selection, known answers.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench.baselines import methods as baseline_methods
from bench.baselines.methods import Finetune, Joint, Replay
from bench.fusion import retrieval_distribution
from bench.heads.knn import KnnHead
from bench.memory import Memory


# -- bench.memory.store: Memory._search_gpu (the restricted search GPU indexes take), run on the CPU index ---------
def _on_gpu_path(memory: Memory, monkeypatch: pytest.MonkeyPatch) -> Memory:
    monkeypatch.setattr(memory, "_gpu", object())  # search() takes the GPU branch; the index stays on CPU
    return memory


def _line_memory() -> Memory:
    """Four unit vectors at angles 0, 30, 60, 90 degrees: against the query (1, 0) the order is 0, 1, 2, 3."""
    angles = np.deg2rad([0.0, 30.0, 60.0, 90.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    memory = Memory(2, "emb", "flat")
    memory.add(vectors, ["a", "b", "a", "b"])
    return memory


QUERY = np.array([[1.0, 0.0]], np.float32)


def test_gpu_path_unrestricted_search_is_the_plain_top_k(monkeypatch):
    """Kills Memory._search_gpu: ``return self.index.search(queries, k, params=params)`` with queries, k or params
    replaced or dropped (the unrestricted branch, ``mask is None``)."""
    memory = _on_gpu_path(_line_memory(), monkeypatch)
    scores, ids = memory.search(QUERY, 3)
    assert ids.tolist() == [[0, 1, 2]]
    assert np.allclose(scores, [[1.0, np.cos(np.deg2rad(30)), 0.5]], atol=1e-6)


def test_gpu_path_pads_when_the_memory_holds_fewer_than_k(monkeypatch):
    """Kills Memory._search_gpu's padding: ``if out_ids.shape[1] < k`` → ``<=``; ``pad = k - out_ids.shape[1]``
    → None, ``k + ...``, ``shape[2]``; each ``np.pad`` of ids and scores with its array, widths or
    ``constant_values`` replaced (None, (1, 0), (0, 1), (1, pad), +1, -2, +inf); and the -1 / -inf given to
    fetched entries of other classes (``-1`` → ``-2``, ``-np.inf`` → ``+np.inf`` or None)."""
    memory = _on_gpu_path(_line_memory(), monkeypatch)
    scores, ids = memory.search(QUERY, 6, allowed=["b"])  # 4 entries, 2 of them "b": fetch stops at 4 < k = 6
    assert ids.tolist() == [[1, 3, -1, -1, -1, -1]]
    assert scores.dtype == np.float32 and scores.shape == (1, 6)
    assert np.allclose(scores[0, :2], [np.cos(np.deg2rad(30)), 0.0], atol=1e-6)
    assert np.isneginf(scores[0, 2:]).all()


def test_gpu_path_keeps_score_order_within_the_allowed_entries(monkeypatch):
    """Kills Memory._search_gpu: the allowed entries kept in score order, ``-1`` ids and ``-inf`` scores only where
    nothing allowed is left (two queries, so the row axis matters)."""
    memory = _on_gpu_path(_line_memory(), monkeypatch)
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    scores, ids = memory.search(queries, 2, allowed=["a"])
    assert ids.tolist() == [[0, 2], [2, 0]]
    assert np.allclose(scores, [[1.0, 0.5], [np.sin(np.deg2rad(60)), 0.0]], atol=1e-6)


# -- bench.heads.knn: KnnHead._memory_to_local ----------------------------------------------------------------------
def test_memory_to_local_maps_absent_names_and_missing_neighbours_to_minus_one():
    """Kills KnnHead._memory_to_local: ``local.get(n, -1)`` → ``+1`` / ``-2`` (a memory class outside the
    vocabulary) and the trailing ``[-1]`` (the code of a missing neighbour, id -1) → ``[+1]``."""
    memory = Memory(2, "emb", "flat")
    memory.add(np.eye(2, dtype=np.float32)[[0, 1, 0]], ["cat", "dog", "bird"])
    head = KnnHead.__new__(KnnHead)  # only the memory is read; no base model needed
    head.memory = memory
    vocabulary = SimpleNamespace(classes=["dog", "cat"])
    lut = head._memory_to_local(vocabulary)
    assert lut.dtype == np.int64
    assert lut.tolist() == [1, 0, -1, -1]  # cat → 1, dog → 0, bird absent, and the slot for id -1
    assert lut[memory.label_codes(np.array([[1, -1, 2]]))].tolist() == [[0, -1, -1]]


# -- bench.baselines.methods: AdapterFinetune._training_data / _update_buffer ----------------------------------------
BATCH = 3  # not mask_embeddings' default (8): the configured batch size must reach it
BASE = object()  # the run's base model, as the fake mask_embeddings expects it


def _fake_embeddings(calls: list[tuple[str, int]]):
    """mask_embeddings stand-in: task ``j``'s adapt split has 3 segments with embeddings j*10 + 0..2."""
    names_of = {"ds0": ["sky", "road", "sky"], "ds1": ["car", "sky", "car"], "ds2": ["road", "road", "tree"],
                "ds3": ["sky", "road", "sky", "sky"], "ds4": ["car", "sky", "road", "car", "road"]}

    def fake(base, dataset, batch_size=8, protocol=None):
        assert base is BASE, "the run's base model must reach mask_embeddings"
        assert protocol is PROTOCOL, "the run's inference protocol must reach mask_embeddings"
        calls.append((dataset, batch_size))
        j, names = int(dataset[2:]), names_of[dataset]
        return torch.arange(len(names), dtype=torch.float32).unsqueeze(1) + 10 * j, list(names)

    return fake


PROTOCOL = SimpleNamespace(mode="whole")


def _ctx(per_class: int = 2) -> SimpleNamespace:
    tasks = [SimpleNamespace(name=f"t{j}", inference={}) for j in range(5)]
    return SimpleNamespace(base=BASE, dm=SimpleNamespace(adapt_dataset=lambda j: f"ds{j}"),
                           spec=SimpleNamespace(tasks=tasks),
                           cfg=SimpleNamespace(batch_size=BATCH, inference=PROTOCOL,
                                               finetune=SimpleNamespace(replay_per_class=per_class)))


def test_joint_trains_on_every_task_so_far_and_finetune_on_the_current_one(monkeypatch):
    """Kills AdapterFinetune._training_data: ``range(t + 1) if self.joint else [t]`` → ``(self.joint) and False``,
    ``or True``, ``range(None)``, ``range(t - 1)``, ``range(t + 2)``; and ``ctx.cfg.batch_size`` → None or left
    out (mask_embeddings' own default)."""
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(baseline_methods, "mask_embeddings", _fake_embeddings(calls))
    x, names = Joint()._training_data(_ctx(), 2)
    assert calls == [("ds0", BATCH), ("ds1", BATCH), ("ds2", BATCH)]
    assert x.flatten().tolist() == [0, 1, 2, 10, 11, 12, 20, 21, 22]
    assert names == ["sky", "road", "sky", "car", "sky", "car", "road", "road", "tree"]
    calls.clear()
    x, names = Finetune()._training_data(_ctx(), 2)
    assert calls == [("ds2", BATCH)] and x.flatten().tolist() == [20, 21, 22]


def test_replay_trains_on_the_task_and_then_the_buffer(monkeypatch):
    """Kills AdapterFinetune._training_data's replay branch (buffer appended after the task's own data)."""
    monkeypatch.setattr(baseline_methods, "mask_embeddings", _fake_embeddings([]))
    method = Replay()
    method.buffer = (torch.tensor([[7.0]]), ["old"])
    x, names = method._training_data(_ctx(), 1)
    assert x.flatten().tolist() == [10, 11, 12, 7] and names == ["car", "sky", "car", "old"]


def test_replay_buffer_with_one_exemplar_per_class(monkeypatch):
    """Kills AdapterFinetune._update_buffer: ``counts.get(n, 0) < per_class`` → ``counts.get(n, 1)`` (with a cap
    of 1 a new class would never enter), ``ctx.base`` → None, and ``ctx.cfg.batch_size`` → None or left out."""
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(baseline_methods, "mask_embeddings", _fake_embeddings(calls))
    method = Replay()
    method.buffer = (torch.zeros(0, 1), [])
    method._update_buffer(_ctx(per_class=1), 0)
    assert method.buffer[1] == ["sky", "road"] and method.buffer[0].flatten().tolist() == [0, 1]
    method._update_buffer(_ctx(per_class=1), 1)  # sky is full; car enters once
    assert method.buffer[1] == ["sky", "road", "car"] and method.buffer[0].flatten().tolist() == [0, 1, 10]
    assert calls == [("ds0", BATCH), ("ds1", BATCH)]


def test_replay_buffer_counts_what_it_holds_and_what_it_adds(monkeypatch):
    """Kills AdapterFinetune._update_buffer's counting, in the loop over the buffer and in the loop over the task:
    ``counts[n] = counts.get(n, 0) + 1`` → ``counts.get(None, 0)``, ``counts.get(n, 1)``, ``+ 2``. Cap 2: a
    class seen three times keeps two, a class the buffer holds once takes one more, a full class takes none."""
    monkeypatch.setattr(baseline_methods, "mask_embeddings", _fake_embeddings([]))
    method = Replay()
    method.buffer = (torch.zeros(0, 1), [])
    method._update_buffer(_ctx(per_class=2), 3)  # sky road sky sky
    assert method.buffer[1] == ["sky", "road", "sky"] and method.buffer[0].flatten().tolist() == [30, 31, 32]
    method._update_buffer(_ctx(per_class=2), 4)  # car sky road car road: sky full, road has room for one
    assert method.buffer[1] == ["sky", "road", "sky", "car", "road", "car"]
    assert method.buffer[0].flatten().tolist() == [30, 31, 32, 40, 42, 43]


# -- bench.memory.store: Memory.search and Memory.label_codes --------------------------------------------------------
def test_search_with_exactly_one_allowed_entry_returns_it():
    """Kills Memory.search: ``if available == 0`` → ``== 1`` (one qualifying entry is not an empty result), and
    the empty result's scores keep float32 (``np.float32`` → None)."""
    memory = _line_memory()
    memory.add(np.array([[0.0, -1.0]], np.float32), ["c"])
    scores, ids = memory.search(QUERY, 2, allowed=["c"])
    assert ids.tolist() == [[4, -1]] and np.isclose(scores[0, 0], 0.0) and np.isneginf(scores[0, 1])
    scores, ids = memory.search(QUERY, 2, allowed=["none of these"])
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert ids.tolist() == [[-1, -1]] and np.isneginf(scores).all()


def test_label_codes_keeps_minus_one_for_missing_neighbours():
    """Kills Memory.label_codes: ``np.full(ids.shape, -1, ...)`` → ``-2`` and ``valid = ids >= 0`` → None (an id -1
    would then read the last entry's label)."""
    memory = _line_memory()  # labels a b a b → codes 0 1 0 1
    codes = memory.label_codes(np.array([[3, -1], [-1, 0]]))
    assert codes.dtype == np.int64 and codes.tolist() == [[1, -1], [-1, 0]]


def test_gpu_path_unrestricted_search_passes_the_ivf_probes(monkeypatch):
    """Kills Memory._search_gpu: ``self.index.search(queries, k, params=params)`` → ``params=None`` or dropped in
    the unrestricted branch: an IVF memory probing all its lists (``nprobe = nlist``) is exact only when the
    search parameters reach FAISS (FAISS's own default probes one list)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    memory = Memory(8, "emb", "ivf-flat", nlist=16, nprobe=16, train_size=256)
    memory.add(x, [f"c{i % 3}" for i in range(len(x))])
    assert memory.trained
    queries = x[:32] + 0.3 * rng.standard_normal((32, 8)).astype(np.float32)
    exact = np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :5]
    _, ids = _on_gpu_path(memory, monkeypatch).search(queries, 5)
    assert (ids == exact).mean() > 0.99


# -- bench.heads.knn: KnnHead.forward without memory features, KnnHead.with_settings ----------------------------------
def test_knn_head_without_memory_features_says_what_is_missing():
    """Kills KnnHead.forward's error message (None, "XX...XX", lower or upper case)."""
    head = KnnHead.__new__(KnnHead)
    torch.nn.Module.__init__(head)
    head.text, head.vocabularies = [torch.eye(2)], [SimpleNamespace(classes=["a", "b"])]
    head.base = SimpleNamespace(logit_scale=1.0)
    with pytest.raises(ValueError, match="^the kNN head needs the memory embedder's features$"):
        head(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 1, 1), None, 0)


def test_with_settings_is_a_copy_with_other_settings_only():
    """Kills KnnHead.with_settings: ``other = copy.copy(self)`` → None or ``copy.copy(None)``, and
    ``other.settings = settings`` → None."""
    head = KnnHead.__new__(KnnHead)
    torch.nn.Module.__init__(head)
    head.memory, head.settings, head._luts = "memory", SimpleNamespace(k=4), ["lut"]
    other = head.with_settings(SimpleNamespace(k=9))
    assert other is not head and other.settings.k == 9 and head.settings.k == 4
    assert other.memory is head.memory and other._luts is head._luts


# -- bench.methods.knn: MemoryWriter (the adapt pass), one process and the DDP path with fakes ------------------------
class _Identity:
    """An embedder whose dense features are the sample's ``image`` itself (D×h×w)."""

    @staticmethod
    def preprocess(image: torch.Tensor) -> torch.Tensor:
        return image

    @staticmethod
    def dense_features(images: torch.Tensor) -> torch.Tensor:
        return images


def _sample(value: float, segments: list[list[int]], classes: list[int], crowd: list[bool]) -> dict:
    seg = torch.tensor(segments)
    feats = torch.zeros(2, *seg.shape)
    feats[0] = value  # every segment pools to (value, 0) → unit (1, 0) for value > 0
    feats[1] = seg.float()  # ... plus its own id in the second dim, so segments differ
    return {"image": feats, "segments": seg, "segment_classes": torch.tensor(classes),
            "segment_iscrowd": torch.tensor(crowd)}


def _writer():
    from bench.methods.knn import MemoryWriter

    memory = Memory(2, "emb", "flat")
    return MemoryWriter(_Identity(), memory, SimpleNamespace(classes=["sky", "car", "tree"])), memory


def test_adapt_keeps_a_one_pixel_segment_and_skips_crowd_and_empty_ones():
    """Kills MemoryWriter.predict_step: ``...[1:] > 0`` → ``> 1`` (a segment of one pixel is a segment)."""
    writer, memory = _writer()
    # segment 1: 3 pixels (sky), 2: 1 pixel (car), 3: crowd (tree), 4: no pixel (car)
    sample = _sample(1.0, [[1, 1, 1], [2, 3, 3]], [0, 1, 2, 1], [False, False, True, False])
    assert writer.predict_step([sample], 0) == 2
    assert memory.class_names_of(np.array([[0, 1]])) == [["sky", "car"]]


def test_ddp_adapt_defers_every_batch_and_adds_them_in_batches(monkeypatch):
    """Kills MemoryWriter's DDP path: ``self._pending = []`` → None; ``world_size() > 1`` → ``> 2`` (twice);
    ``self._pending += samples`` → ``=`` or ``-=``; on_predict_epoch_end's ``gather_in_shard_order(self._pending)``
    → None, ``merged, self._pending = ..., []`` → None, ``size`` → None, ``range(0, len(merged), size)`` with any
    argument replaced or dropped or started at 1, ``merged[start:start + size]`` → None or ``start - size``."""
    from bench.methods import knn as knn_method

    writer, memory = _writer()
    monkeypatch.setattr(knn_method, "world_size", lambda: 2)
    gathered = []
    monkeypatch.setattr(knn_method, "gather_in_shard_order", lambda items: gathered.append(list(items)) or items)
    added = []
    original_add = memory.add
    monkeypatch.setattr(memory, "add", lambda e, names: added.append(list(names)) or original_add(e, names))
    batches = [[_sample(1.0, [[1, 2]], [0, 1], [False, False])], [_sample(2.0, [[1, 1]], [2], [False])],
               [_sample(3.0, [[0, 1]], [1], [False])]]
    for i, batch in enumerate(batches):
        writer.predict_step(batch, i)
    assert len(memory) == 0 and len(writer._pending) == 3  # nothing added before every rank's share is known
    writer._trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=2))  # what Lightning attaches
    writer.on_predict_epoch_end()
    assert len(gathered) == 1 and len(gathered[0]) == 3 and writer._pending == []
    assert added == [["sky", "car", "tree"], ["car"]]  # samples in batches of 2: (s0, s1), (s2)
    assert memory.class_names_of(np.arange(4)[None]) == [["sky", "car", "tree", "car"]]


# -- bench.fusion: retrieval_distribution ----------------------------------------------------------------------------
def test_a_query_without_neighbours_does_not_spoil_the_others():
    """Kills retrieval_distribution: ``valid.any(1, keepdim=True)`` → ``valid.any(None, ...)`` or without the dim
    (a query with no valid neighbour then shares "has any" with the batch and gets NaN votes)."""
    scores = torch.tensor([[0.9, 0.1], [0.5, 0.4]])
    classes = torch.tensor([[1, 0], [-1, -1]])
    p, conf = retrieval_distribution(scores, classes, 2, 0.1)
    w = torch.softmax(torch.tensor([9.0, 1.0]), 0)
    assert torch.allclose(p[0], torch.tensor([w[1], w[0]]))
    assert torch.equal(p[1], torch.zeros(2)) and not torch.isnan(p).any()
    assert conf[0] == pytest.approx(0.9) and torch.isneginf(conf[1])


def test_retrieval_distribution_keeps_the_scores_dtype():
    """Kills retrieval_distribution: ``torch.zeros(..., dtype=scores.dtype, ...)`` → ``dtype=None`` or left out
    (float64 scores would meet a float32 accumulator)."""
    scores = torch.tensor([[0.9, 0.8]], dtype=torch.float64)
    p, conf = retrieval_distribution(scores, torch.tensor([[0, 0]]), 2, 0.5)
    assert p.dtype == torch.float64 and conf.dtype == torch.float64
    assert torch.allclose(p, torch.tensor([[1.0, 0.0]], dtype=torch.float64))


# -- bench.heads.zeroshot: ZeroShotHead.pooled / text_probabilities -------------------------------------------------
def _zeroshot_head(text: torch.Tensor):
    from bench.heads.zeroshot import ZeroShotHead

    base = SimpleNamespace(logit_scale=10.0, text_embeddings=lambda classes: text)
    head = ZeroShotHead(base)
    head.begin([SimpleNamespace(classes=["a", "b"])])
    return head


def test_empty_label_map_has_no_proposal():
    """Kills ZeroShotHead.pooled: ``int(label_map.max()) if label_map.numel() else 0`` → ``(...) or True`` (max
    of an empty map) and ``else 1`` (one phantom proposal)."""
    head = _zeroshot_head(torch.eye(2))
    assert head.pooled(torch.zeros(0, 0, dtype=torch.long), torch.ones(2, 1, 1)).shape == (0, 2)


def test_text_embeddings_are_cast_to_the_pooled_features():
    """Kills ZeroShotHead.text_probabilities: ``self.text[task].T.to(pooled)`` → ``.to(None)`` (float64 text
    embeddings against float32 features)."""
    head = _zeroshot_head(torch.eye(2, dtype=torch.float64))
    probs = head.text_probabilities(torch.tensor([[1.0, 0.0]]), 0)
    assert probs.dtype == torch.float32
    assert torch.allclose(probs, torch.softmax(torch.tensor([[10.0, 0.0]]), 1))


# -- bench.module: eval_features and evaluate_tasks -------------------------------------------------------------------
def test_an_embedder_that_is_the_bases_own_tower_takes_one_pass():
    """Kills eval_features: ``getattr(embedder, "base", None) is base and hasattr(base, "dense_and_token_features")``
    with ``embedder`` → None, the attribute names changed ("XXbaseXX", "BASE", "XXdense_and_token_featuresXX",
    "DENSE_AND_TOKEN_FEATURES") or ``base`` → None: the shared pass must be the one taken."""
    from bench.module import eval_features

    calls = []
    base = SimpleNamespace(preprocess=lambda image: image,
                           dense_and_token_features=lambda images: calls.append("one pass") or (images, -images),
                           dense_features=lambda images: calls.append("base pass") or images)
    embedder = SimpleNamespace(base=base, preprocess=lambda image: image,
                               dense_features=lambda images: calls.append("embedder pass") or images)
    batch = [{"image": torch.ones(3, 2, 2)}]
    got_base, got_memory = eval_features(base, embedder, batch)
    assert calls == ["one pass"]
    assert torch.equal(got_base[0].features, torch.ones(1, 3, 2, 2))
    assert torch.equal(got_memory[0].features, -torch.ones(1, 3, 2, 2))
    calls.clear()
    other = SimpleNamespace(base=None, preprocess=embedder.preprocess, dense_features=embedder.dense_features)
    eval_features(base, other, batch)
    assert calls == ["base pass", "embedder pass"]


def test_evaluate_tasks_runs_one_quiet_test_pass_and_hands_back_the_scores():
    """Kills evaluate_tasks: ``trainer().test(module, datamodule=datamodule, verbose=False)`` → ``verbose=None``,
    ``True`` or left out (Lightning's default prints a results table per pass)."""
    from bench.module import evaluate_tasks

    seen = {}
    module = SimpleNamespace(scores=[], begin_eval=lambda v, p, protocols=None: seen.update(begin=(v, p)))

    def test(mod, datamodule, **kwargs):
        seen.update(test=(mod, datamodule, kwargs))
        mod.scores = [{"miou": 1.0}]

    scores = evaluate_tasks(lambda: SimpleNamespace(test=test), module, "dm", ["v"], [True])
    assert seen["begin"] == (["v"], [True]) and seen["test"] == (module, "dm", {"verbose": False})
    assert scores == [{"miou": 1.0}] and module.scores == []


# -- bench.run: _pq_summary --------------------------------------------------------------------------------------
def test_pq_summary_mid_sequence_when_every_seen_task_is_panoptic():
    """Kills _pq_summary: ``all(v is not None for v in matrix[t][: t + 1])`` → ``[: t + 2]`` (the next, unseen
    task's empty cell would withhold the continual summary after step 1 of an all-panoptic sequence)."""
    from bench.run import _pq_summary

    summary = _pq_summary([[50.0, None], [None, None]], 0)
    assert summary.average_incremental == 50.0 and summary.final_average == 50.0 and summary.forgetting == [None]


def test_pq_summary_of_a_row_without_any_pq_score():
    """Kills _pq_summary: ``sum(scored) / len(scored) if scored else None`` → ``if (scored) or True`` (a row
    whose panoptic tasks all have no PQ, e.g. no class occurred)."""
    from bench.run import _pq_summary

    summary = _pq_summary([[None, None], [None, None]], 0)
    assert summary.final_average is None and summary.forgetting == [None] and summary.bwt is None


# -- bench.metrics: MeanIoU, confusion_matrix, _checked, pixel_accuracy ------------------------------------------------
def test_mean_iou_state_is_an_int64_sum_and_one_class_is_allowed():
    """Kills MeanIoU.__init__: ``num_classes < 1`` → ``<= 1`` / ``< 2`` (one class is a vocabulary), the error
    → ``ValueError(None)``, ``class_names`` dropped (→ None, ``and False``), the state's ``dtype=torch.int64`` →
    None or left out (float32 counts stop being exact past 2**24 pixels), and ``dist_reduce_fx="sum"`` → None or
    left out (what makes the DDP result exact; the DDP test itself is too slow for the gate)."""
    from torchmetrics.utilities.data import dim_zero_sum

    from bench.metrics import MeanIoU

    single = MeanIoU(1, class_names=["sky"])
    assert single.class_names == ["sky"] and single.confmat.dtype == torch.int64
    assert single._reductions["confmat"] is dim_zero_sum
    with pytest.raises(ValueError, match="^num_classes must be >= 1, got 0$"):
        MeanIoU(0)


def test_mean_iou_pixel_accuracy_is_float64():
    """Kills MeanIoU.compute: ``torch.tensor(pixel_accuracy(...), dtype=torch.float64, ...)`` → ``dtype=None`` or
    left out (float32)."""
    from bench.metrics import MeanIoU

    metric = MeanIoU(2)
    metric.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]))
    accuracy = metric.compute()["pixel_accuracy"]
    assert accuracy.dtype == torch.float64 and accuracy.item() == pytest.approx(2 / 3, abs=0)


def test_confusion_matrix_errors_name_the_argument():
    """Kills confusion_matrix: the ``num_classes`` error → ``ValueError(None)``; the names ``"pred"`` / ``"target"``
    in the dtype check → "XXpredXX", "PRED", "XXtargetXX", "TARGET"; ``... or t.is_complex() or t.dtype ==
    torch.bool`` → ``... and t.dtype == torch.bool`` (bool maps must be refused)."""
    from bench.metrics.semantic import confusion_matrix

    ids = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="^num_classes must be >= 1, got 0$"):
        confusion_matrix(ids, ids, 0)
    with pytest.raises(ValueError, match="^pred must hold integer class ids, got dtype torch.bool$"):
        confusion_matrix(ids.bool(), ids, 2)
    with pytest.raises(ValueError, match="^target must hold integer class ids, got dtype torch.float32$"):
        confusion_matrix(ids, ids.float(), 2)


def test_a_square_confusion_matrix_is_refused():
    """Kills _checked: ``cm.ndim != 2 or cm.shape[1] != cm.shape[0] + 1`` → ``and`` (a C×C matrix passes), and
    its message → None or ``tuple(None)``."""
    from bench.metrics.semantic import iou_from_confusion

    with pytest.raises(ValueError, match=r"^confusion matrix must have shape C×\(C\+1\), got \(2, 2\)$"):
        iou_from_confusion(torch.zeros(2, 2, dtype=torch.long))


def test_pixel_accuracy_of_a_single_pixel():
    """Kills pixel_accuracy: ``if total > 0`` → ``total > 1`` (one counted pixel is an accuracy, not NaN)."""
    from bench.metrics.semantic import pixel_accuracy

    assert pixel_accuracy(torch.tensor([[1, 0, 0], [0, 0, 0]])) == 1.0
    assert pixel_accuracy(torch.tensor([[0, 1, 0], [0, 0, 0]])) == 0.0


# -- bench.continual: _filled ------------------------------------------------------------------------------------------
def test_no_filled_row_message_is_exact():
    """Kills _filled: ``ValueError("result matrix has no filled row")`` → "XX...XX"."""
    from bench.continual import summarize

    with pytest.raises(ValueError, match="^result matrix has no filled row$"):
        summarize([[None, None], [None, None]])


# -- bench.metrics.panoptic / pq: input checks, mask dtypes, PanopticQuality ------------------------------------------
def _pq_inputs():
    seg = torch.tensor([[1, 1], [2, 2]])
    return seg, torch.tensor([0, 1]), seg.clone(), torch.tensor([0, 1]), torch.tensor([False, False])


def test_pq_stats_errors_name_the_input_and_its_shape():
    """Kills _check_segments: the ``{name}_classes must be 1-D`` message → None or ``tuple(None)``; _flat_inputs:
    the gt_void shape message → None or ``tuple(None)`` (either half)."""
    from bench.metrics.panoptic import pq_stats

    pred, pred_classes, gt, gt_classes, crowd = _pq_inputs()
    with pytest.raises(ValueError, match=r"^pred_classes must be 1-D \[S\], got shape \(1, 2\)$"):
        pq_stats(pred, pred_classes[None], gt, gt_classes, crowd, 2)
    with pytest.raises(ValueError, match=r"^gt_void must have the shape of gt_segments \(2, 2\), got \(4,\)$"):
        pq_stats(pred, pred_classes, gt, gt_classes, crowd, 2, gt_void=torch.zeros(4, dtype=torch.bool))


def test_pq_stats_reads_integer_void_and_crowd_flags_as_booleans():
    """Kills _flat_inputs: ``gt_void....to(device, torch.bool)`` → ``.to(device, None)`` / ``.to(device, )`` and
    ``gt_iscrowd.to(device, torch.bool)`` → ``.to(device, None)`` / ``.to(device, )`` (0/1 integer flags)."""
    from bench.metrics.panoptic import pq_stats

    pred, pred_classes, gt, gt_classes, _ = _pq_inputs()
    as_bool = pq_stats(pred, pred_classes, gt, gt_classes, torch.tensor([True, False]), 2,
                       gt_void=torch.tensor([[False, False], [True, False]]))
    as_int = pq_stats(pred, pred_classes, gt, gt_classes, torch.tensor([1, 0]), 2,
                      gt_void=torch.tensor([[0, 0], [1, 0]], dtype=torch.uint8))
    assert torch.equal(as_int, as_bool)
    # class 0 is crowd (never matched, never a false negative); class 1 keeps 1 of its 2 pixels: IoU 1/1 > 0.5
    assert as_bool[:, 0].tolist() == [0.0, 1.0] and as_bool[1, 3].item() == 1.0


def test_pq_from_stats_refuses_misshapen_input():
    """Kills pq_from_stats: ``stats.ndim != 2 or stats.shape[1] != 4`` → ``and``; both messages → None,
    ``tuple(None)``, and ``[{stats.shape[0]}]`` → ``[{stats.shape[1]}]``."""
    from bench.metrics.panoptic import pq_from_stats

    with pytest.raises(ValueError, match=r"^stats must have shape \[C, 4\], got \(2, 3\)$"):
        pq_from_stats(torch.zeros(2, 3), torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"^is_thing must have shape \[2\], got \(3,\)$"):
        pq_from_stats(torch.zeros(2, 4), torch.tensor([True, False, True]))


def test_panoptic_quality_over_one_class():
    """Kills PanopticQuality.__init__: ``num_classes < 1`` → ``<= 1`` / ``< 2`` (one class is a vocabulary)."""
    from bench.metrics import PanopticQuality

    metric = PanopticQuality(1, [True])
    seg = torch.tensor([[1, 1]])
    metric.update(seg, torch.tensor([0]), seg, torch.tensor([0]), torch.tensor([False]))
    assert metric.compute()["All"]["pq"] == 1.0


# -- bench.memory.store: which search path, and the IVF search parameters ----------------------------------------------
def test_a_memory_on_cpu_never_takes_the_gpu_path(monkeypatch):
    """Kills Memory.search: ``self._gpu is not None and self.trained`` → ``or`` / ``self._gpu is None and ...``."""
    memory = _line_memory()
    monkeypatch.setattr(memory, "_search_gpu", lambda *a, **k: pytest.fail("CPU memory took the GPU path"))
    assert memory.search(QUERY, 2, allowed=["a"])[1].tolist() == [[0, 2]]
    assert memory.search(QUERY, 1)[1].tolist() == [[0]]


def test_flat_memory_searches_with_plain_parameters():
    """Kills Memory.search_params: ``self.trained and self.spec.kind == "hnsw"`` → ``or`` (a flat memory would be given
    HNSW parameters)."""
    import faiss

    assert type(_line_memory().search_params(None)) is faiss.SearchParameters


def test_ivf_with_a_graph_quantizer_passes_its_search_breadth():
    """Kills Memory.search_params' graph branch: ``self.resolved.get("nlist", 0)`` → ``get(None, 0)``, "XXnlistXX",
    "NLIST"; ``>= HNSW_QUANTIZER_FROM`` → ``>`` (at exactly that many lists); ``graph`` → None; and
    ``efSearch=max(64, 2 * nprobe)`` → ``max(65, ...)``, ``2 / nprobe``, ``3 * nprobe``."""
    import dataclasses

    import faiss

    from bench.memory.store import HNSW_QUANTIZER_FROM

    rng = np.random.default_rng(0)
    x = rng.standard_normal((HNSW_QUANTIZER_FROM, 4)).astype(np.float32)
    memory = Memory(4, "emb", "ivf-flat", nlist=HNSW_QUANTIZER_FROM, nprobe=8, train_size=HNSW_QUANTIZER_FROM)
    memory.add(x / np.linalg.norm(x, axis=1, keepdims=True), ["a"] * len(x))
    assert memory.trained and memory.resolved["nlist"] == HNSW_QUANTIZER_FROM
    for nprobe, ef in ((8, 64), (40, 80)):
        memory.spec = dataclasses.replace(memory.spec, nprobe=nprobe)
        params = memory.search_params(None)
        assert isinstance(params, faiss.SearchParametersIVF) and params.nprobe == nprobe
        graph = params.referenced_graph_params  # FAISS hands quantizer_params back as its base class
        assert isinstance(graph, faiss.SearchParametersHNSW) and graph.efSearch == ef
        assert params.quantizer_params is not None and int(params.quantizer_params.this) == int(graph.this)


# -- bench.module: ContinualSegmenter.begin_eval -----------------------------------------------------------------------
def test_begin_eval_without_panoptic_flags_scores_miou_only():
    """Kills ContinualSegmenter.begin_eval: ``panoptic or [False] * len(vocabularies)`` → ``[True] * ...``."""
    from bench.metrics import MeanIoU
    from bench.module import ContinualSegmenter

    head = torch.nn.Identity()
    head.begin = lambda vocabularies: None  # what a head prepares per vocabulary is not the point here
    module = ContinualSegmenter(SimpleNamespace(), SimpleNamespace(), head)
    module.begin_eval([_Vocab(["a", "b"])])
    assert isinstance(module.metrics[0], MeanIoU) and isinstance(module.pq_metrics[0], torch.nn.Identity)


class _Vocab(list):
    """A vocabulary stand-in: its class names, each a thing."""

    @property
    def classes(self) -> list[str]:
        return list(self)

    @property
    def is_thing(self) -> list[bool]:
        return [True] * len(self)

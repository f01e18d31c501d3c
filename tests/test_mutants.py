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


def _fake_embeddings(calls: list[tuple[str, int]]):
    """mask_embeddings stand-in: task ``j``'s adapt split has 3 segments with embeddings j*10 + 0..2."""
    names_of = {"ds0": ["sky", "road", "sky"], "ds1": ["car", "sky", "car"], "ds2": ["road", "road", "tree"]}

    def fake(base, dataset, batch_size=8):
        calls.append((dataset, batch_size))
        j = int(dataset[2:])
        return torch.arange(3, dtype=torch.float32).unsqueeze(1) + 10 * j, list(names_of[dataset])

    return fake


def _ctx(per_class: int = 2) -> SimpleNamespace:
    return SimpleNamespace(base=None, dm=SimpleNamespace(adapt_dataset=lambda j: f"ds{j}"),
                           cfg=SimpleNamespace(batch_size=BATCH, finetune=SimpleNamespace(replay_per_class=per_class)))


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
    of 1 a new class would never enter), and ``ctx.cfg.batch_size`` → None or left out."""
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(baseline_methods, "mask_embeddings", _fake_embeddings(calls))
    method = Replay()
    method.buffer = (torch.zeros(0, 1), [])
    method._update_buffer(_ctx(per_class=1), 0)
    assert method.buffer[1] == ["sky", "road"] and method.buffer[0].flatten().tolist() == [0, 1]
    method._update_buffer(_ctx(per_class=1), 1)  # sky is full; car enters once
    assert method.buffer[1] == ["sky", "road", "car"] and method.buffer[0].flatten().tolist() == [0, 1, 10]
    assert calls == [("ds0", BATCH), ("ds1", BATCH)]

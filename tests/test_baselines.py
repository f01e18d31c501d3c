"""Fine-tuning baselines next to kNN-CLIP: who forgets, who changes parameters, and `compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bench.compare import compare
from bench.run import build_config, run

SMALL = ("SEQ=synth", "adapt_limit=24", "eval_limit=8", "progress=false")  # the fast sequence (tiny-random)


def _run(out: Path, *args: str) -> dict[str, Any]:
    cfg, spec = build_config([f"output_dir={out}", *SMALL, *args])
    return run(cfg, spec)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("baselines")
    return {m: _run(out, f"METHOD={m}") for m in ("knn", "finetune", "replay", "joint")}


def test_finetune_forgets_and_knn_does_not(records):
    """Guards: the trained adapter not applied at evaluation (fine-tuning would score like zero-shot and forget
    nothing; it loses about 35 points on task 1 here), and kNN's memory replaced instead of grown at each step
    (it would lose most of task 1). Margins stay: both bugs move these by tens of points."""
    finetune = records["finetune"]["matrix"]["miou"]
    knn = records["knn"]["matrix"]["miou"]
    assert finetune[0][0] - finetune[-1][0] >= 5, finetune
    assert knn[0][0] - knn[-1][0] <= 0.5, knn


def test_joint_is_the_fine_tuning_upper_bound_and_replay_helps(records):
    """Strict, cell by cell. Guards: the replay buffer never replayed (replay would train on exactly finetune's
    data with finetune's seeds and give a bit-identical matrix: its rows after step 1 must differ on every
    cell, and its forgetting be strictly lower), joint training only on the current task (same: identical to
    finetune), and a buffer or an earlier task leaking into step 1 (all three train on task 1 alone there, so
    their first rows are equal)."""
    matrix = {m: r["matrix"]["miou"] for m, r in records.items()}
    for method in ("replay", "joint"):
        assert matrix[method][0] == matrix["finetune"][0], (method, matrix)
        assert all(matrix[method][t][j] != matrix["finetune"][t][j] for t in (1, 2) for j in range(t + 1)), \
            (method, matrix)
    final = {m: r["summary"]["miou"]["final_average"] for m, r in records.items()}
    assert final["joint"] > final["finetune"] and final["replay"] > final["finetune"], final
    forgetting = {m: r["summary"]["miou"]["mean_forgetting"] for m, r in records.items()}
    assert forgetting["replay"] < forgetting["finetune"] and forgetting["joint"] < forgetting["finetune"], forgetting


def _adapt_names() -> list[list[str]]:
    """Class names of the mask embeddings of each task's adapt split under SMALL (24 images per task)."""
    from bench.baselines.features import mask_embeddings
    from bench.models import build_base
    from datamodules import SequenceDataModule
    from datamodules.sequence import load_sequence

    base = build_base("tiny-random")
    dm = SequenceDataModule(load_sequence("synth"), adapt_limit=24)
    return [mask_embeddings(base, dm.adapt_dataset(t))[1] for t in range(3)]


def test_records_report_trainable_parameters_and_adapt_time(records):
    """Exact sizes, not ``> 0``. Guards: the replay per-class cap dropped or miscounted (the buffer after step t
    holds min(replay_per_class, segments of the class so far) per class: 70, 120, 160 here, not 154, 305, 453),
    the buffer not replayed (replay's training set is task t plus the buffer after step t - 1), and joint not
    training on every task so far."""
    from collections import Counter

    for method in ("finetune", "replay", "joint"):
        state = records[method]["state_size"][-1]
        assert state["trainable_params"] == 64 * 64 + 64  # the residual linear adapter on 64-d embeddings
        assert all(step["adapt_s"] > 0 and step["adapt_samples"] > 0 for step in records[method]["timings"]["steps"])
    names = _adapt_names()
    cap = records["replay"]["config"]["finetune"]["replay_per_class"]
    seen: Counter[str] = Counter()
    buffer = []
    for task in names:
        seen.update(task)
        buffer.append(sum(min(cap, n) for n in seen.values()))
    assert buffer == [70, 120, 160]  # 7 classes at the cap of 10, then 5 and 4 new ones; shared ones stay at 10
    assert [s["replay_buffer"] for s in records["replay"]["state_size"]] == buffer
    samples = {m: [step["adapt_samples"] for step in records[m]["timings"]["steps"]] for m in records if m != "knn"}
    sizes = [len(task) for task in names]
    assert samples["finetune"] == sizes
    assert samples["replay"] == [sizes[0], sizes[1] + buffer[0], sizes[2] + buffer[1]]
    assert samples["joint"] == [sum(sizes[: t + 1]) for t in range(3)]


def test_knn_adapt_changes_no_parameter_and_builds_no_graph(tmp_path):
    import lightning as L

    from bench.memory import Memory
    from bench.methods.knn import MemoryWriter
    from bench.models import build_base, build_embedder
    from datamodules import SequenceDataModule
    from datamodules.sequence import load_sequence

    base = build_base("tiny-random")
    embedder = build_embedder("clip", base)
    spec = load_sequence("synth")
    dm = SequenceDataModule(spec, adapt_limit=8)
    memory = Memory(embedder.dim, embedder.identity)
    writer = MemoryWriter(embedder, memory, spec.tasks[0].vocabulary)
    before = {k: v.clone() for k, v in writer.state_dict().items()}
    seen = {}
    original = memory.add

    def spy(embeddings, names):
        seen["grad_enabled"] = torch.is_grad_enabled()
        return original(embeddings, names)

    memory.add = spy
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).predict(writer, datamodule=dm)
    assert len(memory) > 0 and seen["grad_enabled"] is False
    after = writer.state_dict()
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in writer.parameters())


def test_finetune_changes_the_adapter(tmp_path):
    _run(tmp_path, "METHOD=finetune", "max_steps=1", "finetune.epochs=2")
    state = torch.load(next(tmp_path.glob("synth/finetune/*/adapter/step-1.pt")), weights_only=True)
    assert state["adapter"]["linear.weight"].abs().sum() > 0  # it starts at exactly zero


def test_finetune_resumes_mid_step_from_its_last_epoch(tmp_path, monkeypatch):
    from bench.baselines.adapter import AdapterTraining

    args = ("METHOD=finetune", "max_steps=1", "finetune.epochs=4", "SEQ=synth")
    reference = _run(tmp_path / "ref", *args)
    epochs: list[int] = []
    original = AdapterTraining.on_train_epoch_end if hasattr(AdapterTraining, "on_train_epoch_end") else None

    def crash_after_two(self):
        epochs.append(self.current_epoch)
        if original is not None:
            original(self)
        if self.current_epoch == 1 and crash["on"]:
            raise RuntimeError("killed in epoch 2")

    crash = {"on": True}
    monkeypatch.setattr(AdapterTraining, "on_train_epoch_end", crash_after_two)
    with pytest.raises(RuntimeError, match="killed in epoch 2"):
        _run(tmp_path / "cut", *args)
    assert list(tmp_path.glob("cut/synth/finetune/*/checkpoints/step-1/last.ckpt"))
    crash["on"] = False
    epochs.clear()
    resumed = _run(tmp_path / "cut", *args)
    # The crash came in epoch 1 before its checkpoint: training resumes at epoch 1, epoch 0 is not redone.
    assert epochs == [1, 2, 3]
    assert resumed["matrix"] == reference["matrix"]
    assert not list(tmp_path.glob("cut/synth/finetune/*/checkpoints/step-1"))


def test_training_progress_shows_loss_and_throughput(tmp_path, monkeypatch):
    from bench.baselines.adapter import AdapterTraining

    logged: set[str] = set()
    original = AdapterTraining.log

    def spy(self, name, value, *a, prog_bar=False, **k):
        if prog_bar:
            logged.add(name)
        return original(self, name, value, *a, prog_bar=prog_bar, **k)

    monkeypatch.setattr(AdapterTraining, "log", spy)
    _run(tmp_path, "METHOD=finetune", "max_steps=1", "finetune.epochs=2", "finetune.batch_size=16")
    assert {"loss", "samples/s"} <= logged


def test_compare_writes_one_table_from_the_records(tmp_path):
    markdown = compare([f"output_dir={tmp_path / 'runs'}", *SMALL, "adapt_limit=8", "eval_limit=4",
                        "finetune.epochs=2"], methods=("zeroshot", "knn", "finetune"), out_dir=tmp_path / "cmp")
    table = (tmp_path / "cmp" / "synth.md").read_text()
    assert table == markdown
    import csv

    rows = list(csv.DictReader((tmp_path / "cmp" / "synth.csv").open()))
    assert [r["method"] for r in rows] == ["zeroshot", "knn", "finetune"]
    knn_record = next((tmp_path / "runs").glob("synth/knn/*/record.json"))
    import json

    summary = json.loads(knn_record.read_text())["summary"]["miou"]
    assert rows[1]["final average"] == f"{summary['final_average']:.1f}"
    assert "memory entries" in rows[1]["kept state"] and "trainable parameters" in rows[2]["kept state"]

"""Accuracy against memory size: the per-class subsample, reading vectors back, and the command on a finished run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.cli import main as cli
from bench.errors import ConfigError
from bench.memory import INDEX_KINDS, IndexSpec, Memory
from bench.memory_curve import final_miou, kind_specs, step_boundaries, stored_vectors, subsample_ids

SMALL = ("SEQ=synth", "PROPOSALS=gt", "adapt_limit=6", "eval_limit=3", "progress=false", "wandb=false",
         "num_workers=0")


def test_subsample_is_per_class_deterministic_and_nested():
    labels = np.repeat(np.arange(4), [1, 7, 30, 200])
    np.random.default_rng(5).shuffle(labels)
    for f in (0.01, 0.1, 0.5, 1.0):
        ids = subsample_ids(labels, f, seed=3)
        counts = np.bincount(labels[ids], minlength=4)
        assert counts.tolist() == [max(1, int(np.ceil(round(f * n, 9)))) for n in (1, 7, 30, 200)]
        assert np.array_equal(ids, subsample_ids(labels, f, seed=3))  # same seed, same entries
        assert np.all(np.diff(ids) > 0)  # sorted, no repeats: insertion order is kept
    assert np.array_equal(subsample_ids(labels, 1.0, 3), np.arange(len(labels)))
    assert not np.array_equal(subsample_ids(labels, 0.1, 3), subsample_ids(labels, 0.1, 4))
    small, large = set(subsample_ids(labels, 0.03, 3).tolist()), set(subsample_ids(labels, 0.3, 3).tolist())
    assert small < large  # a smaller fraction keeps a subset of a larger one
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="--fractions"):
            subsample_ids(labels, bad, 0)


def _unit(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_vectors_are_read_back_exactly_or_marked_lossy(tmp_path):
    x, names = _unit(300), [f"c{i % 3}" for i in range(300)]
    for spec, exact in ((IndexSpec("flat"), True), (IndexSpec("hnsw"), True),
                        (IndexSpec("ivf-flat", train_size=100, nlist=4), True),
                        (IndexSpec("ivf-pq", train_size=280, nlist=2, pq_m=4), False),
                        (IndexSpec("flat-fp16"), False)):
        memory = Memory(16, "e", spec)
        memory.add(x, names)
        before = memory.nbytes
        vectors, found = stored_vectors(memory, tmp_path)
        assert found is exact, spec
        assert vectors.shape == x.shape and memory.nbytes == before  # the memory itself is left as it was
        if exact:
            assert np.array_equal(vectors, x)
        else:
            assert np.abs(vectors - x).max() < 0.5
    import faiss

    memory = Memory(16, "e")
    memory.add(x, names)
    memory.index = faiss.IndexIDMap(faiss.IndexFlatIP(16))  # an index that cannot give vectors back
    memory.index.add_with_ids(x, np.arange(len(x)))
    with pytest.raises(ConfigError, match="cannot give back its vectors"):
        stored_vectors(memory, tmp_path / "memory")


def test_every_kind_is_on_the_curve_and_trained_kinds_are_trained():
    labels = [label for label, _ in kind_specs(64, 3050)]
    for name in INDEX_KINDS.names():
        assert any(label == name or label.startswith(name) or f"+ {name}" in label for label in labels), name
    assert "ivf-pq 64 B" in labels and "ivf-pq 8 B" in labels and "pca 32 + ivf-pq 8 B" in labels
    assert all(spec.train_size <= 3050 for _, spec in kind_specs(64, 3050))
    assert all(spec.train_size == 300 for _, spec in kind_specs(64, 300) if spec.needs_training)


def test_step_boundaries_and_final_miou():
    record = {"state_size": [{"memory_entries": 5}, {"memory_entries": 12}]}
    assert step_boundaries(record, 12) == [0, 5, 12]
    assert step_boundaries(record, 10) == [0, 10]  # sizes that do not add up: one chunk
    assert final_miou([50.0, 70.0]) == 60.0 and final_miou([50.0, None]) is None


def test_memory_curve_of_a_finished_run(tmp_path, capsys):
    """The command on a finished knn run: its own memory and the 100 % subsample reproduce the record, the
    subsample keeps a share of each class, every kind is scored or says why not, and the files are written."""
    from bench.run import build_config, run

    overrides = [*SMALL, f"output_dir={tmp_path}"]
    cfg, spec = build_config(["METHOD=knn", *overrides])
    record = run(cfg, spec)
    out = tmp_path / "curve" / "synth-knn"
    assert cli(["memory-curve", *overrides, "--fractions", "0.1,1", "--subsample-seed", "7", "--out", str(out)]) == 0
    table = json.loads(out.with_suffix(".json").read_text())
    recorded = record["summary"]["miou"]["final_average"]
    assert table["run_memory"]["final_miou"] == pytest.approx(recorded, abs=1e-3)
    assert table["vectors"] == "exact (fp32 storage)"
    subsample = {p["fraction"]: p for p in table["points"] if p["group"] == "subsample"}
    whole = record["state_size"][-1]["memory_entries"]
    assert subsample[1.0]["entries"] == whole and subsample[1.0]["seed"] == 7
    assert subsample[1.0]["final_miou"] == pytest.approx(recorded, abs=1e-3)
    assert subsample[1.0]["per_task_miou"] == pytest.approx(record["matrix"]["miou"][-1], abs=1e-3)
    assert subsample[0.1]["classes"] == subsample[1.0]["classes"] < subsample[0.1]["entries"] < whole / 5
    assert subsample[0.1]["bytes"] < subsample[1.0]["bytes"]
    kinds = {p["label"]: p for p in table["points"] if p["group"] == "kind"}
    assert kinds["flat"]["final_miou"] == subsample[1.0]["final_miou"]
    assert kinds["flat-fp16"]["bytes"] < kinds["flat"]["bytes"]
    for point in kinds.values():
        assert ("skipped" in point) != ("final_miou" in point)
        if "skipped" in point:
            assert "training vectors" in point["skipped"]  # too small a memory for PQ codebooks, said so
        else:
            assert point["entries"] == whole
    assert table["base_alone"]["final_miou"] is not None
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = out.with_suffix(".md").read_text()
    assert "![final mIoU against memory size](synth-knn.png)" in md and "| 10 % | flat |" in md
    assert not list(out.parent.glob("*.tmp"))


def test_missing_run_and_bad_input_are_one_line_errors(tmp_path, capsys):
    assert cli(["memory-curve", "SEQ=synth", f"output_dir={tmp_path}", "RUN_ID=none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no finished knn run in" in err
    assert "make it with `python -m bench run SEQ=synth" in err and "METHOD=knn`" in err
    assert cli(["memory-curve", "SEQ=synth", "METHOD=zeroshot"]) == 2
    assert "memory-curve scores knn runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["memory-curve", "SEQ=synth", "--fractions", "a,b"])


def test_a_run_saved_in_a_lossy_kind_is_read_back_and_reproduced(tmp_path):
    """Whatever kind the run saved: its decoded vectors are used (and said to be), its own memory reproduces it."""
    from bench.memory_curve import memory_curve, resolve_run

    overrides = [*SMALL, f"output_dir={tmp_path}", "knn.index=flat-fp16", "eval_limit=2"]
    with pytest.raises(ConfigError, match="no finished knn run"):
        resolve_run(overrides)
    cli(["run", "METHOD=knn", *overrides])
    cfg, spec, folder, record = resolve_run(overrides)
    table = memory_curve(cfg, spec, folder, record, fractions=[1.0])
    assert table["vectors"] == "reconstructed by a lossy index" and table["source_index"].startswith("flat-fp16")
    assert table["run_memory"]["final_miou"] == pytest.approx(record["summary"]["miou"]["final_average"], abs=1e-3)

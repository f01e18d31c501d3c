"""A 2-process DDP run on CPU (gloo) against a 1-process run of the same config (issue 9, acceptance 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.distributed import interleave
from bench.errors import ConfigError
from bench.sampling import ShardSampler

REPO = Path(__file__).resolve().parents[1]
ARGS = ["SEQ=synth", "METHOD=knn", "adapt_limit=11", "eval_limit=7", "batch_size=3", "progress=false",
        "wandb=false"]
# What may differ between the two records: where and how the run ran, and how long it took.
RUN_FIELDS = ("timings", "config", "versions", "git_commit")


def test_interleave_restores_the_order_of_one_process() -> None:
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            parts = [list(ShardSampler(n, world, r)) for r in range(world)]
            assert interleave(parts) == list(range(n))


def _run_subprocess(out: Path, *extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, "-m", "bench", "run", *ARGS, f"output_dir={out}", *extra], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = out.glob("synth/knn/*/record.json")
    return json.loads(record.read_text())


def _memory(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vectors and labels of a saved memory step; a sharded one (knn.shard, the default with several processes)
    put back together by global id."""
    import faiss

    if (path / "shards.json").exists():
        shards = json.loads((path / "shards.json").read_text())["shards"]
        parts = [(_memory(path / name), np.load(path / f"{name}.ids.npy")) for name in shards]
        n = sum(len(ids) for _, ids in parts)
        x, y = np.zeros((n, parts[0][0][0].shape[1]), np.float32), np.zeros(n, np.int64)
        for (xs, ys), ids in parts:
            x[ids], y[ids] = xs, ys
        return x, y
    index = faiss.read_index(str(path / "index.faiss"))
    return index.reconstruct_n(0, index.ntotal), np.load(path / "labels.npy")


def test_two_process_ddp_run_writes_the_record_of_one_process(tmp_path: Path) -> None:
    from bench.protocols import load_counts
    from bench.run import build_config, run

    cfg, spec = build_config([*ARGS, f"output_dir={tmp_path / 'one'}"])
    one = run(cfg, spec).to_json()  # as record.json holds it, like the subprocess's record
    two = _run_subprocess(tmp_path / "two", "DEVICES=2")

    assert two["config"]["devices"] == 2 and one["config"]["devices"] == 1
    assert two["complete"] and two["steps_done"] == len(spec.tasks)
    for key in one:
        if key not in RUN_FIELDS:
            assert two[key] == one[key], key
    assert [s["memory_added"] for s in two["timings"]["steps"]] == [s["memory_added"] for s in
                                                                    one["timings"]["steps"]]
    # Every rank added (its part of) every rank's segments in the one-process order: same labels, same vectors up
    # to the rounding of a different batch composition in the embedder.
    (one_dir,) = (tmp_path / "one").glob("synth/knn/*")
    (two_dir,) = (tmp_path / "two").glob("synth/knn/*")
    for step in range(1, len(spec.tasks) + 1):
        x1, y1 = _memory(one_dir / "memory" / f"step-{step}")
        x2, y2 = _memory(two_dir / "memory" / f"step-{step}")
        assert np.array_equal(y1, y2)
        np.testing.assert_allclose(x2, x1, rtol=0, atol=1e-6)
        # the per-image class counts behind the intervals, gathered from both ranks in image order
        c1, c2 = load_counts(one_dir, step), load_counts(two_dir, step)
        assert c1.keys() == c2.keys() and all(np.array_equal(a, b) for k in c1 for a, b in zip(c1[k], c2[k]))
        assert all(len(c1[k]) == len(c2[k]) for k in c1)
    assert two["intervals"] == one["intervals"] and two["intervals"]["miou"]["final_average"] is not None


def test_fine_tuning_refuses_more_than_one_process(tmp_path: Path) -> None:
    from bench.run import build_config, run

    cfg, spec = build_config(["SEQ=synth", "METHOD=finetune", "DEVICES=2", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="one process only.*knn"):
        run(cfg, spec)


def test_rank_from_the_environment_needs_a_world(monkeypatch) -> None:
    from bench.distributed import is_rank_zero, rank

    monkeypatch.setenv("RANK", "3")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank() == 0 and is_rank_zero()  # a lone process under a scheduler's RANK still writes its record
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank() == 3 and not is_rank_zero()
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's launcher sets LOCAL_RANK and WORLD_SIZE
    assert rank() == 1

"""``eval_future``: the result matrix's upper triangle, the base-alone row and forward transfer.

A tiny ``synth`` run scored at every step on every task must fill each cell, give ``record.initial`` one score per
task, compute forward transfer from exactly those cells, and leave everything an ``eval_future=false`` run records
unchanged (its cells, per-class IoU, memory and run name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.config import config_hash
from bench.continual import forward_transfer
from bench.results import format_matrix
from bench.run import build_config, run

TINY = ("SEQ=synth", "adapt_limit=4", "eval_limit=4", "wandb=false", "progress=false", "num_workers=0")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Any]:
    out = tmp_path_factory.mktemp("eval-future")
    records = {}
    for future in (True, False):
        cfg, spec = build_config([*TINY, f"eval_future={str(future).lower()}", f"output_dir={out}"])
        records[future] = run(cfg, spec)
    return records


def test_every_cell_and_the_initial_row_are_filled(runs):
    record = runs[True]
    T = len(record.tasks)
    for metric in ("miou", "pq"):
        matrix = record.matrix[metric]
        assert all(matrix[t][j] is not None and 0 <= matrix[t][j] <= 100 for t in range(T) for j in range(T)), \
            (metric, matrix)
    assert len(record.initial["miou"]) == T and all(0 <= v <= 100 for v in record.initial["miou"])
    # per-class IoU of every task at every step, the future ones included
    assert all(set(step) == set(record.tasks) for step in record.per_class_iou)
    assert record.complete


def test_forward_transfer_is_computed_from_the_record(runs):
    record = runs[True]
    R, initial = record.matrix["miou"], record.initial["miou"]
    by_hand = sum(R[j - 1][j] - initial[j] for j in range(1, len(R))) / (len(R) - 1)
    assert record.summary["miou"].forward_transfer == pytest.approx(by_hand, abs=1e-9)
    assert runs[False].summary["miou"].forward_transfer is None and not runs[False].initial


def test_scoring_future_tasks_changes_nothing_else(runs):
    """The lower triangle, the summaries of it, per-class IoU of the tasks seen and the memory are those of the
    run without ``eval_future``: evaluating a task early must not touch the method's state."""
    on, off = runs[True], runs[False]
    T = len(on.tasks)
    for metric in off.matrix:
        assert [row[: t + 1] for t, row in enumerate(on.matrix[metric])] == \
            [row[: t + 1] for t, row in enumerate(off.matrix[metric])], metric
        assert all(v is None for t, row in enumerate(off.matrix[metric]) for v in row[t + 1:]), metric
    for t in range(T):
        assert {k: on.per_class_iou[t][k] for k in off.per_class_iou[t]} == off.per_class_iou[t]
    for key in ("final_average", "average_incremental", "forgetting", "bwt", "mean_forgetting"):
        assert on.summary["miou"][key] == off.summary["miou"][key], key
    assert on.memory_classes == off.memory_classes and on.state_size == off.state_size


def test_eval_future_false_keeps_the_run_name():
    """``eval_future`` came after the first runs were named: off, it leaves the hash (the run folder and the
    committed references' names) as it was (tests/test_config_validation.py HASHES); on, it is another run."""
    off = build_config(["SEQ=synth", "METHOD=knn", "eval_future=false", "knn.index=ivf-flat"])[0]
    on = build_config(["SEQ=synth", "METHOD=knn", "eval_future=true", "knn.index=ivf-flat"])[0]
    assert config_hash(off) == "871cef69a5" != config_hash(on)


def test_forward_transfer_by_hand():
    R = [[50.0, 20.0, 10.0],
         [48.0, 60.0, 30.0],
         [47.0, 58.0, 70.0]]
    initial = [40.0, 15.0, 5.0]
    # task 1: 20 - 15 = 5; task 2: 30 - 5 = 25
    assert forward_transfer(R, initial) == pytest.approx(15.0)
    # a run stopped after step 2: only task 1 has been reached
    assert forward_transfer([R[0], R[1], [None, None, None]], initial) == pytest.approx(5.0)
    assert forward_transfer(R[:1], initial) is None  # one step: no task scored before its adaptation
    assert forward_transfer([[50.0, None, 10.0], R[1], R[2]], initial) is None  # a missing cell
    assert forward_transfer(R, [40.0, None, 5.0]) is None


OLD = {"sequence": "synth", "method": "knn", "model": {"name": "tiny-random", "weights": "random-init"},
       "tasks": ["park", "beach"], "matrix": {"miou": [[69.44, None], [68.6, 58.81]]},
       "summary": {"miou": {"final_average": 63.7, "average_incremental": 66.5, "bwt": -0.84,
                            "forgetting": [0.84, None]}}}


def test_a_record_without_future_cells_prints_as_before():
    assert format_matrix(OLD) == "\n".join([
        "synth · knn · tiny-random (random-init) · miou (%), row = after step t, column = task j",
        "after step     park    beach",
        "1 park        69.4        -",
        "2 beach       68.6     58.8",
        "final average 63.7 · average incremental 66.5 · BWT -0.8 · forgetting: park 0.8"])


def test_future_cells_the_initial_row_and_forward_transfer_are_printed():
    record = {**OLD, "matrix": {"miou": [[69.44, 12.2], [68.6, 58.81]]}, "initial": {"miou": [2.8, 1.09]},
              "summary": {"miou": {**OLD["summary"]["miou"], "forward_transfer": 11.11}}}
    assert format_matrix(record) == "\n".join([
        "synth · knn · tiny-random (random-init) · miou (%), row = after step t, column = task j; "
        "(x) = task j not yet adapted to",
        "after step         park    beach",
        "0 base alone      (2.8)    (1.1)",
        "1 park             69.4   (12.2)",
        "2 beach            68.6     58.8",
        "final average 63.7 · average incremental 66.5 · BWT -0.8 · FWT 11.1 · forgetting: park 0.8"])


def test_the_table_on_disk_shows_the_upper_triangle(runs):
    folder = Path(runs[True].config["output_dir"]) / "synth" / "knn"
    table = next(folder.glob("*/table.txt")).read_text()
    assert "0 base alone" in table and "FWT" in table and "(" in table.splitlines()[3]

"""Fusion sweep: re-scoring one knn run under many (T, λ, τ) gives what ordinary runs give; the table's choice."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from bench.run import build_config, run, run_dir
from bench.sweep import FusionPoint, GridResult, evaluate_grid, grid, miou_percent

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("SEQ=synth", "METHOD=knn", "PROPOSALS=gt", "adapt_limit=6", "eval_limit=3", "progress=false",
         "wandb=false")


def _sweep_script():
    spec = importlib.util.spec_from_file_location("sweep_fusion", ROOT / "scripts" / "sweep_fusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_has_every_combination_and_the_base_alone_once():
    points = grid([0.0, 0.9], [0.0, 0.5, 1.0], [0.05, 0.1])
    assert len(points) == 1 + 2 * 2 * 2
    assert [p for p in points if p.lam == 0] == [FusionPoint(0.0, 0.0, 0.05)]


def test_rescoring_a_run_equals_ordinary_runs_at_other_settings(tmp_path):
    """The anchor's own setting reproduces its record (else an error); another setting equals its own run."""
    cfg, spec = build_config([*SMALL, f"output_dir={tmp_path}"])
    anchor = run(cfg, spec)
    other = FusionPoint(0.0, 1.0, 0.2)
    points = [FusionPoint(cfg.knn.threshold, cfg.knn.lam, cfg.knn.temperature), other, FusionPoint(0.0, 0.0, 0.05)]
    result = evaluate_grid(run_dir(cfg, spec), points, cfg, spec, anchor_row=anchor["matrix"]["miou"][-1])
    cfg2, spec2 = build_config([*SMALL, f"output_dir={tmp_path}", "knn.threshold=0", "knn.lam=1",
                                "knn.temperature=0.2"])
    assert result.final_row(1) == run(cfg2, spec2)["matrix"]["miou"][-1]
    assert result.final_row(0) != result.final_row(2)  # the base alone differs from the fused setting
    wrong = [v + 1.0 for v in anchor["matrix"]["miou"][-1]]
    with pytest.raises(RuntimeError, match="no longer computes what bench run computes"):
        evaluate_grid(run_dir(cfg, spec), points[:1], cfg, spec, anchor_row=wrong)


def _confusions(correct: list[int], total: int = 10) -> np.ndarray:
    """Per image a 2-class confusion matrix: ``correct[i]`` of ``total`` pixels of each class right."""
    cms = np.zeros((len(correct), 2, 3), dtype=np.int64)
    for i, c in enumerate(correct):
        cms[i] = [[c, total - c, 0], [total - c, c, 0]]
    return cms


def test_bootstrap_interval_of_a_paired_difference():
    good = _confusions([9, 8, 9, 10, 9, 8])
    bad = _confusions([8, 7, 9, 9, 8, 7])
    result = GridResult([FusionPoint(0, 1, 0.05), FusionPoint(0, 0.5, 0.05)], ["t"], [[good], [bad]])
    diff = result.final_average(0) - result.final_average(1)
    assert diff == pytest.approx(miou_percent(good.sum(0)) - miou_percent(bad.sum(0)))
    b = result.bootstrap_difference(0, 1, samples=400)
    assert b["low"] <= diff <= b["high"] and b["low"] > 0 and b["p_not_better"] == 0.0
    same = result.bootstrap_difference(0, 0, samples=50)
    assert same["mean"] == same["low"] == same["high"] == 0.0 and same["p_not_better"] == 1.0


def test_table_picks_the_best_overall_and_the_best_pure_retrieval():
    script = _sweep_script()
    cms = {k: _confusions([k] * 4) for k in (5, 7, 8, 9)}
    points = [FusionPoint(0, 0, 0.05), FusionPoint(0, 0.5, 0.05), FusionPoint(0, 1, 0.05), FusionPoint(0.9, 1, 0.05)]
    result = GridResult(points, ["a", "b"], [[cms[5], cms[5]], [cms[9], cms[8]], [cms[7], cms[8]],
                                             [cms[8], cms[8]]])
    table = script.build_table(result, points[1], None, 100, sequence="s", split="tune", model="m", k=16,
                               anchor_run="r", chosen_from=None)
    assert table["best"] == {"threshold": 0, "lam": 0.5, "temperature": 0.05}
    assert table["best_pure_retrieval"] == {"threshold": 0.9, "lam": 1.0, "temperature": 0.05}
    assert table["best_per_lam"] == {"0": 0, "0.5": 1, "1": 3}
    assert [t["best"] for t in table["best_per_task"]] == [1, 1]
    md = script.markdown(table)
    assert "| best setting | 0 | 0.5 | 0.05 |" in md and "| best pure retrieval (λ = 1) | 0.9 | 1 | 0.05 |" in md
    # Checking a choice made on another split picks nothing: the named points are compared as they are.
    checked = script.build_table(result, points[1], {"split": "tune", "best": vars(points[0]),
                                                     "best_pure_retrieval": vars(points[2])},
                                 100, sequence="s", split="eval", model="m", k=16, anchor_run="r",
                                 chosen_from="t.json")
    assert (checked["best_index"], checked["best_pure_retrieval_index"]) == (0, 2)
    assert "Nothing is chosen here" in script.markdown(checked)

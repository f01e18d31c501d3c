"""`bench.regress`: the CI gate exits 1 on a drop beyond tolerance, 0 within it, 2 on mismatched runs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.continual import summarize
from bench.io import atomic_write_json
from bench.regress import (
    DEFAULT_TOLERANCES,
    REFERENCE_KEYS,
    ReferenceMismatch,
    compare,
    make_reference,
    regress_main,
)

MATRIX = [[68.2, None, None], [68.0, 68.8, None], [67.9, 68.8, 73.7]]


def make_record(matrix: list[list[Any]] = MATRIX, tasks: tuple[str, ...] = ("park", "beach", "city"),
                complete: bool = True) -> dict[str, Any]:
    return {
        "record_version": 1, "sequence": "synth", "method": "knn",
        "model": {"name": "tiny-random", "pretrained": "random-init", "identity": "tiny",
                  "weights": "random-init, not pretrained"},
        "tasks": list(tasks), "steps_done": 3 if complete else 2, "complete": complete,
        "matrix": {"miou": matrix}, "summary": {"miou": summarize(matrix)}, "per_class_iou": [],
        "memory_size": [1, 2, 3], "config": {"sequence": "synth", "method": "knn", "output_dir": "/tmp/x"},
        "config_hash": "h", "seed": 0, "versions": {}, "git_commit": "abc", "timings": {"steps": []},
    }


def lowered(cell: tuple[int, int], by: float) -> dict[str, Any]:
    """The reference record with one R cell lowered and every summary recomputed, as a real run would."""
    matrix = copy.deepcopy(MATRIX)
    matrix[cell[0]][cell[1]] -= by
    return make_record(matrix)


def _files(tmp_path: Path, record: dict[str, Any], reference: dict[str, Any]) -> tuple[Path, Path]:
    run_dir = tmp_path / "runs" / "synth" / "knn" / "r"
    atomic_write_json(run_dir / "record.json", record)
    atomic_write_json(tmp_path / "reference.json", reference)
    return tmp_path / "reference.json", run_dir


def _status(rows: list, name: str) -> str:
    return next(r.status for r in rows if r.metric == name)


def test_identical_record_passes(tmp_path, capsys):
    assert regress_main(*_files(tmp_path, make_record(), make_record())) == 0
    out = capsys.readouterr().out
    assert "metric" in out and "tolerance" in out and "12 values compared" in out and "WORSE" not in out


def test_drop_within_tolerance_passes(tmp_path):
    rows = compare(lowered((2, 0), 0.3), make_record())
    assert all(r.status == "ok" for r in rows)
    assert regress_main(*_files(tmp_path, lowered((2, 0), 0.3), make_record())) == 0


def test_drop_beyond_tolerance_fails(tmp_path, capsys):
    record = lowered((2, 0), 2.0)
    rows = compare(record, make_record())
    assert _status(rows, "miou R[3 city][park]") == "WORSE"
    assert _status(rows, "miou final_average") == "WORSE"  # 2 / 3 tasks = 0.67 > 0.5
    worse = next(r for r in rows if r.metric == "miou R[3 city][park]")
    assert worse.delta == pytest.approx(-2.0) and worse.tolerance == DEFAULT_TOLERANCES["matrix"]
    assert regress_main(*_files(tmp_path, record, make_record())) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "miou R[3 city][park]" in out


def test_forgetting_rise_is_flagged_and_its_fall_is_not(tmp_path):
    reference = make_record()
    record = copy.deepcopy(reference)
    record["summary"]["miou"]["forgetting"][0] += 1.5
    record["summary"]["miou"]["mean_forgetting"] += 1.5
    rows = compare(record, reference)
    assert _status(rows, "miou forgetting[park]") == "WORSE"
    assert _status(rows, "miou mean_forgetting") == "WORSE"
    assert regress_main(*_files(tmp_path, record, reference)) == 1
    record["summary"]["miou"]["forgetting"][0] -= 3.0
    record["summary"]["miou"]["mean_forgetting"] -= 3.0
    rows = compare(record, reference)
    assert _status(rows, "miou forgetting[park]") == "better"
    assert regress_main(*_files(tmp_path, record, reference)) == 0


def test_improvement_passes_and_is_reported(tmp_path, capsys):
    record = lowered((2, 2), -3.0)  # raised by 3 points
    assert _status(compare(record, make_record()), "miou R[3 city][city]") == "better"
    assert regress_main(*_files(tmp_path, record, make_record())) == 0
    assert "better beyond tolerance" in capsys.readouterr().out


def test_reference_tolerances_override_the_defaults(tmp_path):
    reference = make_record() | {"tolerances": {"default": 5.0, "matrix": 5.0, "final_average": 5.0,
                                                "forgetting": 5.0}}
    assert regress_main(*_files(tmp_path, lowered((2, 0), 2.0), reference)) == 0
    rows = compare(lowered((2, 0), 2.0), make_record(), tolerances={"miou.matrix": 0.1, "default": 9.0,
                                                                      "final_average": 9.0})
    assert _status(rows, "miou R[3 city][park]") == "WORSE"


def test_other_metrics_and_nan_are_compared(tmp_path):
    reference = make_record()
    pq = [[40.0, None, None], [39.0, math.nan, None], [38.0, math.nan, 50.0]]
    reference["matrix"]["pq"] = pq
    record = copy.deepcopy(reference)
    assert all(not r.failed for r in compare(record, reference))
    record["matrix"]["pq"][2][2] = 45.0
    record["matrix"]["pq"][2][1] = 10.0  # NaN in the reference, a number now: flagged
    rows = compare(record, reference)
    assert _status(rows, "pq R[3 city][city]") == "WORSE"
    assert _status(rows, "pq R[3 city][beach]") == "WORSE"


def test_missing_scores_fail(tmp_path):
    partial = make_record([[68.2, None, None], [68.0, 68.8, None], [None, None, None]], complete=False)
    rows = compare(partial, make_record())
    assert _status(rows, "miou R[3 city][city]") == "MISSING"
    assert regress_main(*_files(tmp_path, partial, make_record())) == 1


def test_mismatched_runs_exit_2(tmp_path, capsys):
    other_tasks = make_record(tasks=("park", "city", "beach"))
    with pytest.raises(ReferenceMismatch, match="tasks differ"):
        compare(other_tasks, make_record())
    assert regress_main(*_files(tmp_path, other_tasks, make_record())) == 2
    assert "tasks differ" in capsys.readouterr().err
    other_method = make_record() | {"method": "zeroshot"}
    assert regress_main(*_files(tmp_path, other_method, make_record())) == 2
    assert regress_main(tmp_path / "nowhere.json", tmp_path) == 2


def test_make_reference_round_trip(tmp_path):
    run_dir = tmp_path / "runs" / "synth" / "knn" / "r"
    atomic_write_json(run_dir / "record.json", make_record())
    out = tmp_path / "reference" / "synth-knn.json"
    written = make_reference(run_dir, out)
    on_disk = json.loads(out.read_text())
    assert on_disk == written
    assert set(on_disk) == {*REFERENCE_KEYS, "tolerances"}
    assert on_disk["tolerances"] == DEFAULT_TOLERANCES
    assert on_disk["matrix"] == make_record()["matrix"]
    assert regress_main(out, run_dir) == 0
    atomic_write_json(run_dir / "record.json", lowered((1, 1), 1.0))
    assert regress_main(out, run_dir / "record.json") == 1


def test_make_reference_refuses_an_incomplete_run(tmp_path):
    atomic_write_json(tmp_path / "record.json", make_record(complete=False))
    with pytest.raises(ValueError, match="incomplete"):
        make_reference(tmp_path, tmp_path / "ref.json")
    assert not (tmp_path / "ref.json").exists()


def _regress_runs() -> list[tuple[str, str]]:
    """``REGRESS_RUNS`` of the Makefile: (sequence, method) per run."""
    import re

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    [value] = re.findall(r"^REGRESS_RUNS := (.+)$", makefile, flags=re.M)
    return [tuple(item.split(":")) for item in value.split()]


def test_every_regression_run_has_a_reference_of_the_same_config():
    """What ``make regress`` runs is what the committed reference was made from (sequence defaults included, such
    as a YAML's fusion setting): a changed default without ``make reference`` fails here, not in CI's regress."""
    from bench.config import RUN_ONLY_KEYS, to_dict
    from bench.run import build_config

    runs = _regress_runs()
    assert {("synth", "knn"), ("synth-shift", "knn"), ("synth-shift", "zeroshot")} <= set(runs)
    root = Path(__file__).resolve().parents[1] / "results" / "reference"
    for seq, method in runs:
        reference = json.loads((root / f"{seq}-{method}.json").read_text())
        cfg, _ = build_config([f"SEQ={seq}", f"METHOD={method}"])
        expected = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_KEYS}
        stored = {k: v for k, v in reference["config"].items() if k not in RUN_ONLY_KEYS}
        assert stored == expected, (seq, method)

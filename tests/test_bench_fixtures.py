"""Whole runs over the native-format fixtures (tests/fixtures/make_fixtures.py), through ``bench.run`` as
``python -m bench run`` / ``make bench`` call it: the headline sequence, and a user's own sequence YAML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures.make_fixtures import shared_fixture_root

from bench.run import build_config, run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_fixture_root(tmp_path_factory)


def _run(*args: str) -> dict[str, Any]:
    cfg, spec = build_config([*args, "progress=false", "wandb=false"])
    return run(cfg, spec)


def _check_matrices(record: dict[str, Any], n: int) -> None:
    """Every matrix is n×n, empty above the diagonal, in [0, 100] where filled; mIoU filled on and below it."""
    for metric, matrix in record["matrix"].items():
        assert len(matrix) == n and all(len(row) == n for row in matrix), metric
        assert all(matrix[t][j] is None for t in range(n) for j in range(t + 1, n)), metric
        assert all(0 <= v <= 100 for row in matrix for v in row if v is not None), metric
    miou = record["matrix"]["miou"]
    assert all(miou[t][j] is not None for t in range(n) for j in range(t + 1)), miou


def _on_disk(record: dict[str, Any], seq: str) -> dict[str, Any]:
    path = Path(record["config"]["output_dir"]) / seq / record["method"]
    (record_path,) = path.glob("*/record.json")
    return json.loads(record_path.read_text())


def test_ade_coco_lvis_on_fixtures_writes_a_3x3_record(data: Path, tmp_path: Path) -> None:
    """Acceptance 4: ``make bench SEQ=ade-coco-lvis DATA_ROOT=<fixtures>`` (the Makefile passes these overrides
    to ``python -m bench run``). Ground-truth proposals keep it fast; the fixture splits are a few images each."""
    record = _run("SEQ=ade-coco-lvis", f"DATA_ROOT={data}", f"output_dir={tmp_path}", "proposals.kind=gt")
    assert record["sequence"] == "ade-coco-lvis" and record["complete"] and record["steps_done"] == 3
    assert record["tasks"] == ["ade150", "coco133", "lvis1203"]
    assert record["vocabulary_sizes"] == [150, 133, 1203]
    _check_matrices(record, 3)
    on_disk = _on_disk(record, "ade-coco-lvis")
    assert on_disk["matrix"] == record["matrix"] and on_disk["complete"]
    # every eval split was read: 2 ADE + 2 COCO + the LVIS val images that have annotations
    steps = record["timings"]["steps"]
    assert [s["eval_images"] for s in steps][:2] == [2, 4] and steps[2]["eval_images"] >= 6
    assert set(record["per_class_iou"][-1]) == {"ade150", "coco133", "lvis1203"}


def test_users_own_yaml_runs_end_to_end(data: Path, tmp_path: Path) -> None:
    """Acceptance 5: a sequence the user writes (own vocabulary files, a class subset, the generic ``label_map``
    format with their own folder templates, run defaults in the YAML) runs through ``bench run`` as it is."""
    user = tmp_path / "mine"
    user.mkdir()
    (user / "streets.txt").write_text((REPO / "tasks/vocab/cityscapes19.txt").read_text())
    (user / "context.txt").write_text((REPO / "tasks/vocab/pc59.txt").read_text())
    (user / "my-seq.yaml").write_text(f"""
name: my-seq
description: a user's own sequence over data in supported formats
defaults: {{proposals: {{kind: gt}}}}
tasks:
  - name: streets
    format: cityscapes
    root: {data / 'cityscapes'}
    vocabulary: streets.txt
    classes: [road, sidewalk, vegetation, sky, person, rider, car, bicycle]
    adapt: train
    eval: val
  - name: context
    format: label_map
    root: pascal_ctx_d2
    vocabulary: context.txt
    num_classes: 59
    adapt: {{split: training, limit: 2}}
    eval: validation
    options: {{image_dir: "images/{{split}}", label_dir: "annotations_ctx59/{{split}}", ignore_values: [255]}}
""")
    record = _run(f"SEQ={user / 'my-seq.yaml'}", f"DATA_ROOT={data}", f"output_dir={tmp_path / 'runs'}")
    assert record["sequence"] == "my-seq" and record["complete"]
    assert record["tasks"] == ["streets", "context"] and record["vocabulary_sizes"] == [8, 59]
    assert record["config"]["proposals"]["kind"] == "gt"  # from the YAML's defaults
    _check_matrices(record, 2)
    assert list(record["per_class_iou"][0]["streets"]) == ["road", "sidewalk", "vegetation", "sky", "person",
                                                           "rider", "car", "bicycle"]
    assert _on_disk(record, "my-seq")["matrix"] == record["matrix"]

"""The class-incremental protocol (MiB / PLOP / CoMFormer; ``datamodules.protocols``, ``bench.protocols``): old /
new / all worked out by hand, the real sequence files run on the native-format fixtures, their printed table and
report, the sequence-file errors, and the LVIS rare / common / frequent and memory breakdowns."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from fixtures.make_fixtures import LVIS_FREQUENCY, shared_fixture_root

from bench.bootstrap import class_iou, dense
from bench.breakdowns import breakdowns_md, class_breakdown
from bench.config import RunConfig
from bench.protocols import CUMULATIVE, _cumulative, load_counts
from bench.record import RunRecord
from bench.report import build_report
from bench.results import format_cumulative
from bench.run import build_config, run
from datamodules.contract import DataError
from datamodules.sequence import load_sequence

REPO = Path(__file__).resolve().parents[1]
ADE_VOCAB = REPO / "tasks/vocab/ade150.txt"
NAN = math.nan


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_fixture_root(tmp_path_factory)


def _small_run(*args: str) -> RunRecord:
    cfg, spec = build_config([*args, "MODEL=tiny-random", "progress=false", "wandb=false", "num_workers=0",
                              "adapt_limit=2", "eval_limit=2"])
    return run(cfg, spec)


def _yaml(tmp_path: Path, tasks: list[dict[str, Any]], name: str = "toy-ci") -> Path:
    """A class-incremental sequence file with ``tasks`` (each: name, classes; format etc. default to ADE)."""
    lines = [f"name: {name}", "protocol: class-incremental", "tasks:"]
    for task in tasks:
        task = {"format": "ade20k", "root": "ADEChallengeData2016", "vocabulary": str(ADE_VOCAB),
                "num_classes": 150, "adapt": "{split: training}", "eval": "{split: validation}"} | task
        lines.append(f"  - name: {task.pop('name')}")
        lines += [f"    {k}: {v}" for k, v in task.items()]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- old / new / all by hand

# Three steps of ADE20K's first 7 classes: wall, building, sky | floor, tree | ceiling, road.
TOY_STEPS = [{"name": "s0", "classes": "{start: 0, stop: 3}"}, {"name": "s1", "classes": "{start: 3, stop: 5}"},
             {"name": "s2", "classes": "{start: 5, stop: 7}"}]
# Per step t, what the evaluation with every class seen so far returns: IoU per class (NaN: the class is in no
# eval image and predicted nowhere, so it has no score) and PQ per class (present=False: no score).
TOY_IOU = [[0.5, 0.25, NAN], [0.5, 0.25, NAN, NAN, NAN], [0.5, 0.25, NAN, 0.8, 0.1, NAN, 0.4]]
TOY_PQ = [0.6, 0.2, 0.0, 0.0, 0.9, 0.0, 0.6]
TOY_PRESENT = [True, True, False, True, True, False, True]
# Worked out by hand. Old = the classes of step 0 with a score, new = those of steps 1..t, all = both together
# (the mean over every scored class, not the mean of the two means).
TOY_MIOU = [{"old": 37.5, "new": None, "all": 37.5},  # (50 + 25) / 2
            {"old": 37.5, "new": None, "all": 37.5},  # floor and tree in no image: no new score
            {"old": 37.5, "new": 43.3333, "all": 41.0}]  # new (80 + 10 + 40) / 3, all (50 + 25 + 80 + 10 + 40) / 5
TOY_PQ_BY_HAND = [{"old": 40.0, "new": None, "all": 40.0},  # (60 + 20) / 2
                  {"old": 40.0, "new": 45.0, "all": 42.5},  # floor is present with PQ 0: new (0 + 90) / 2
                  {"old": 40.0, "new": 50.0, "all": 46.0}]  # new (0 + 90 + 60) / 3, all (60 + 20 + 0 + 90 + 60) / 5


def test_cumulative_old_new_all_worked_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.module

    spec = load_sequence(str(_yaml(tmp_path, TOY_STEPS)))
    asked: list[tuple[list[str], list[bool]]] = []
    steps: list[Any] = []

    def fake_evaluate(trainer: Any, module: Any, dm: Any, vocabularies: list[Any], panoptic: list[bool],
                      protocols: Any) -> list[dict[str, Any]]:
        asked.append((list(vocabularies[0].classes), panoptic))
        t = len(asked) - 1
        n = len(TOY_IOU[t])
        pq = {"per_class": [{"pq": v} for v in TOY_PQ[:n]], "present": TOY_PRESENT[:n]}
        return [{"per_class_iou": torch.tensor(TOY_IOU[t]), "pq": pq, "counts": []}]

    monkeypatch.setattr(bench.module, "evaluate_tasks", fake_evaluate)
    dm = SimpleNamespace(set_step=lambda t, tasks=None: steps.append((t, tasks)),
                         eval_dataset=lambda task: SimpleNamespace(panoptic=True))
    ctx = SimpleNamespace(spec=spec, dm=dm, cfg=RunConfig(), trainer=None)
    record = RunRecord(sequence=spec.name, method="toy", model={"name": "none"}, tasks=["s0", "s1", "s2"],
                       matrix={"miou": [[None] * 3 for _ in range(3)]})
    for t in range(3):
        _cumulative(ctx, None, t, record)
    # each step evaluated once, with the classes of steps 0..t, old ones first
    names = ["wall", "building", "sky", "floor", "tree", "ceiling", "road, route"]
    assert [a[0] for a in asked] == [names[:3], names[:5], names[:7]]
    assert [len(tasks[0].vocabulary) for _, tasks in steps] == [3, 5, 7]
    assert record.cumulative["miou"] == TOY_MIOU
    assert record.cumulative["pq"] == TOY_PQ_BY_HAND
    # the printed table: a row per step, old / new / all
    table = format_cumulative(record).splitlines()
    assert "class-incremental" in table[0] and table[2].split() == ["after", "step", "old", "new", "all", "old",
                                                                     "new", "all"]
    assert table[3].split()[2:] == ["37.5", "-", "37.5", "40.0", "-", "40.0"]
    assert table[5].split()[2:] == ["37.5", "43.3", "41.0", "40.0", "50.0", "46.0"]


# ---------------------------------------------------------------- the real sequence files on the fixtures


def _recomputed(out: Path, record: RunRecord, t: int) -> dict[str, float | None]:
    """Old / new / all after step ``t`` from the per-image counts the run wrote (counts/step-<t+1>.npz)."""
    counts = load_counts(out, t + 1)
    assert counts is not None and CUMULATIVE in counts
    n_old, n_all = record.vocabulary_sizes[0], sum(record.vocabulary_sizes[: t + 1])
    with np.errstate(invalid="ignore"):
        iou = class_iou(dense(counts[CUMULATIVE], n_all).sum(0))
    ious = [None if math.isnan(v) else round(float(v), 4) for v in iou]

    def mean(ids: range) -> float | None:
        known = [ious[c] for c in ids if ious[c] is not None]
        return sum(known) / len(known) if known else None

    return {"old": mean(range(n_old)), "new": mean(range(n_old, n_all)), "all": mean(range(n_all))}


def test_ade_50_50_three_steps_end_to_end(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The 3-step sequence ade-50-50 on the ADE fixtures (ground-truth proposals, 2 images per split)."""
    record = _small_run("SEQ=ade-50-50", f"DATA_ROOT={data}", f"output_dir={tmp_path}", "PROPOSALS=gt")
    assert record.protocol == "class-incremental" and record.complete
    rows = record.cumulative["miou"]
    assert len(rows) == 3 and all(set(r) == {"old", "new", "all"} for r in rows)
    assert rows[0]["new"] is None and rows[0]["old"] == rows[0]["all"]
    # After step 1 the evaluation with every class seen is the task's own: 'all' is the mean of its class IoUs.
    first = [v for v in record.per_class_iou[0]["ade-0-50"].values() if v is not None]
    assert rows[0]["all"] == pytest.approx(sum(first) / len(first), abs=1e-4)
    out = next(tmp_path.glob("ade-50-50/knn/*"))
    for t, row in enumerate(rows):  # every step's old / new / all from the counts the run kept
        again = _recomputed(out, record, t)
        for group in ("old", "new", "all"):
            assert (row[group] is None) == (again[group] is None), (t, group)
            if row[group] is not None:
                assert row[group] == pytest.approx(again[group], abs=1e-3), (t, group)
    assert set(record.intervals["cumulative_miou"]) == {"old", "new", "all"}
    # printed after the run and kept in table.txt: old / new / all per step, the last step's interval
    printed = capsys.readouterr().out
    table = format_cumulative(record)
    assert table in printed and table in (out / "table.txt").read_text()
    assert "3 ade-100-150" in table and "95 % interval after step 3 (mIoU)" in table
    # the run's report page shows it, and the classes with and without memory entries
    report = tmp_path / "report"
    build_report([tmp_path], report)
    page = "\n".join(p.read_text() for p in report.glob("ade-50-50-knn-*.md"))
    assert "| after step | mIoU old | mIoU new | mIoU all |" in page
    assert "with memory entries" in page and "without memory entries" in page


@pytest.mark.parametrize(("seq", "proposals", "steps"), [("ade-100-10", "superpixel", 3), ("coco-83-5", "gt", 2)])
def test_class_incremental_sequence_files_run_on_fixtures(data: Path, tmp_path: Path, seq: str, proposals: str,
                                                          steps: int) -> None:
    """The first steps of ade-100-10 (3 of 6) and coco-83-5 (2 of 11), 2 images per split."""
    record = _small_run(f"SEQ={seq}", f"DATA_ROOT={data}", f"output_dir={tmp_path}", f"PROPOSALS={proposals}",
                        f"max_steps={steps}")
    assert record.protocol == "class-incremental" and record.steps_done == steps
    assert len(record.cumulative["miou"]) == steps and record.cumulative["miou"][0]["new"] is None
    assert all(v is None or 0 <= v <= 100 for row in record.cumulative["miou"] for v in row.values())
    if seq == "coco-83-5":  # panoptic: PQ with every class seen so far too
        assert len(record.cumulative["pq"]) == steps
        assert record.cumulative["pq"][0]["new"] is None
    else:
        assert "pq" not in record.cumulative


# ---------------------------------------------------------------- sequence files that do not fit the protocol


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "s1", "classes": "{start: 2, stop: 5}"}, "class 'sky' was already new in task 's0'"),
    ({"name": "s1", "classes": "{start: 3, stop: 5}", "format": "coco_panoptic", "root": "coco"},
     "field 'format' differs from task 's0'"),
    ({"name": "s1", "classes": "{start: 3, stop: 5}", "eval": "{split: training}"},
     "eval split or vocabulary differs from task 's0'"),
])
def test_class_incremental_file_errors_name_file_and_task(tmp_path: Path, change: dict[str, str],
                                                          message: str) -> None:
    path = _yaml(tmp_path, [TOY_STEPS[0], change])
    with pytest.raises(DataError) as e:
        load_sequence(str(path))
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{path}: task 's1'") and message in text


# ---------------------------------------------------------------- breakdowns: LVIS frequency groups, memory


def test_lvis_reader_groups_classes_by_frequency(data: Path) -> None:
    from datamodules.lvis import LVISReader
    from datamodules.vocabulary import Vocabulary

    vocab = Vocabulary.from_names("some", ["person", "dog", "cup", "dining_table", "bottle"])
    groups = LVISReader(data / "lvis", "val", vocab).class_groups
    assert groups == {"rare": ["dog"], "common": ["cup", "dining_table"], "frequent": ["person", "bottle"]}
    assert LVIS_FREQUENCY == {"dog": "r", "cup": "c", "dining_table": "c"}


def test_lvis_frequency_breakdown_in_record_and_report(data: Path, tmp_path: Path) -> None:
    """A one-task LVIS sequence on a class subset: the record keeps the task's groups, cut to its classes, and
    the report gives each group's mean IoU after the last step (and with / without memory entries)."""
    path = tmp_path / "lvis-some.yaml"
    path.write_text(f"""name: lvis-some
tasks:
  - name: lvis-some
    format: lvis
    root: lvis
    vocabulary: {REPO / 'tasks/vocab/lvis1203.txt'}
    num_classes: 1203
    classes: [person, dog, cup, dining_table, bottle, car_(automobile)]
    adapt: {{split: train}}
    eval: {{split: val}}
""")
    record = _small_run(f"SEQ={path}", f"DATA_ROOT={data}", f"output_dir={tmp_path / 'runs'}", "PROPOSALS=gt",
                        "eval_limit=0")
    assert record.class_groups == {"lvis-some": {"rare": ["dog"], "common": ["cup", "dining_table"],
                                                 "frequent": ["person", "bottle", "car_(automobile)"]}}
    ious = record.per_class_iou[-1]["lvis-some"]
    rows = {(r["task"], r["group"]): r for r in class_breakdown(record)}
    common = [v for c in ("cup", "dining_table") if (v := ious[c]) is not None]
    assert rows["lvis-some", "rare"]["mean_iou"] == ious["dog"]
    assert rows["lvis-some", "common"]["mean_iou"] == pytest.approx(sum(common) / len(common))
    memory = set(record.memory_classes[-1])
    assert memory and rows["lvis-some", "with memory entries"]["classes"] == len(memory & set(ious))
    build_report([tmp_path / "runs"], tmp_path / "report")
    page = "\n".join(p.read_text() for p in (tmp_path / "report").glob("*.md") if p.name != "summary.md")
    assert "| lvis-some | rare | 1 / 1 |" in page and "| lvis-some | frequent |" in page


def test_breakdowns_empty_for_records_without_them() -> None:
    """Records of other protocols, or written before these fields: no table, no section."""
    record = {"sequence": "s", "method": "zeroshot", "model": {"name": "m", "weights": ""}, "tasks": ["a"],
              "steps_done": 1, "per_class_iou": [{"a": {"x": 10.0}}], "matrix": {"miou": [[10.0]]}}
    assert format_cumulative(record) == "" and breakdowns_md(record) == []
    record["memory_classes"] = [[]]  # a method without a memory
    assert breakdowns_md(record) == []

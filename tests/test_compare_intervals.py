"""`compare`: intervals in the table, paired bootstrap differences, `seeds=`, and retention (bench.retention)."""

import csv
import json

import numpy as np
import pytest

from bench.bootstrap import dense, draws, interval, miou, resampled
from bench.compare import compare, split_seeds
from bench.errors import ConfigError
from bench.protocols import intervals, paired_intervals, save_counts
from bench.record import RunRecord
from bench.retention import retention


def _image(rows):
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


# Three images, two classes, one task, one step. Each image holds 10 pixels of its class; "good" predicts them
# all, "bad" only 5 (the other 5 as the other class).
GOOD = [_image([[0, 10, 10, 10]]), _image([[1, 10, 10, 10]]), _image([[0, 10, 10, 10], [1, 10, 10, 10]])]
BAD = [_image([[0, 5, 10, 5], [1, 0, 0, 5]]), _image([[0, 0, 0, 5], [1, 5, 10, 5]]),
       _image([[0, 5, 10, 10], [1, 5, 10, 10]])]


def _record(method, miou, classes=("a", "b"), memory=()):
    return RunRecord(sequence="toy", method=method, model={"name": "m"}, tasks=["t0"], vocabulary_sizes=[2],
                     steps_done=1, matrix={"miou": [[miou]]},
                     summary={"miou": {"final_average": miou, "average_incremental": miou}},
                     per_class_iou=[{"t0": dict(zip(classes, (100.0, 100.0)))}], memory_classes=[list(memory)])


def _run(tmp_path, name, per_image):
    out = tmp_path / name
    save_counts(out, 1, {"0": per_image})
    return out


def test_identical_runs_differ_by_zero_in_every_replicate(tmp_path):
    a, b = _run(tmp_path, "a", BAD), _run(tmp_path, "b", BAD)
    d = paired_intervals(a, _record("x", 50.0), b, _record("y", 50.0))
    assert d["final_average"] == {"diff": 0.0, "interval": [0.0, 0.0]}
    assert d["average_incremental"]["interval"] == [0.0, 0.0] and d["images"] == 3


def test_a_run_better_on_every_image_has_a_positive_interval(tmp_path):
    a, b = _run(tmp_path, "a", GOOD), _run(tmp_path, "b", BAD)
    d = paired_intervals(a, _record("x", 100.0), b, _record("y", 33.0))
    low, high = d["final_average"]["interval"]
    # GOOD scores 100 on any resample; BAD at most 50 (the images' IoUs are 1/3 .. 1/2), so the difference of
    # every replicate is at least 50 points.
    assert 50.0 <= low <= high <= 100.0
    assert d["final_average"]["diff"] == 67.0


def test_runs_on_other_images_are_not_paired(tmp_path):
    a, b = _run(tmp_path, "a", GOOD), _run(tmp_path, "b", BAD[:2])
    assert "unpaired" in paired_intervals(a, _record("x", 1.0), b, _record("y", 1.0))
    assert "unpaired" in paired_intervals(a, _record("x", 1.0), tmp_path / "none", _record("y", 1.0))


def test_paired_and_record_intervals_share_one_draw_rule(tmp_path):
    """Rebuilt from the documented rule: task key "0" is the first key in sorted order, so its draws have seed 0."""
    a, b = _run(tmp_path, "a", GOOD[:2] + BAD[2:]), _run(tmp_path, "b", BAD)
    w = draws(3, 1000, seed=0)
    reps_a, reps_b = (miou(resampled(dense(x, 2), w)) for x in (GOOD[:2] + BAD[2:], BAD))
    assert intervals(a, _record("x", 80.0), [2])["miou"]["final_average"] == interval(reps_a)
    d = paired_intervals(a, _record("x", 80.0), b, _record("y", 30.0))
    assert d["final_average"]["interval"] == d["average_incremental"]["interval"] == interval(reps_a - reps_b)


def test_retention_counts_only_classes_the_memory_does_not_hold(tmp_path):
    knn = _record("knn", 80.0, memory=["a"])
    knn.per_class_iou = [{"t0": {"a": 90.0, "b": 40.0}}]
    base = _record("zeroshot", 60.0)
    base.per_class_iou = [{"t0": {"a": 50.0, "b": 45.0}}]
    r = retention(knn, base)  # no counts: point figures only
    assert r["tasks"]["t0"] == {"classes": ["b"], "diff": -5.0, "interval": None}
    assert r["overall"] == {"classes": 1, "diff": -5.0, "interval": None} and r["held"] == ["a"]
    same = {"0": BAD}
    r = retention(knn, base, same, same)
    assert r["tasks"]["t0"]["interval"] == [0.0, 0.0]
    knn.memory_classes = [["a", "b"]]
    assert retention(knn, base)["overall"]["classes"] == 0
    knn.memory_classes = []
    with pytest.raises(ValueError, match="memory classes"):
        retention(knn, base)


def test_retention_interval_from_class_counts(tmp_path):
    knn, base = _record("knn", 100.0), _record("zeroshot", 33.0)
    r = retention(knn, base, {"0": GOOD}, {"0": BAD})
    low, high = r["overall"]["interval"]
    assert 50.0 <= low <= high <= 100.0 and r["overall"]["classes"] == 2


def test_seeds_argument():
    assert split_seeds(["SEQ=synth", "seeds=1,2"]) == ([1, 2], ["SEQ=synth"])
    assert split_seeds(["SEQ=synth"]) == (None, ["SEQ=synth"])
    for bad in ("seeds=1,x", "seeds=", "seeds=2,2"):
        with pytest.raises(ConfigError, match="seeds="):
            split_seeds([bad])


def test_compare_runs_a_seeded_method_once_per_seed(tmp_path):
    args = [f"output_dir={tmp_path / 'runs'}", "SEQ=synth", "adapt_limit=4", "eval_limit=4", "finetune.epochs=2",
            "wandb=false", "progress=false", "num_workers=0", "max_steps=1", "seeds=1,2"]
    markdown = compare(args, methods=("knn", "finetune"), out_dir=tmp_path / "cmp")
    assert len(list((tmp_path / "runs").glob("synth/knn/*/record.json"))) == 1
    finetunes = sorted((tmp_path / "runs").glob("synth/finetune/*/record.json"))
    assert sorted(json.loads(p.read_text())["seed"] for p in finetunes) == [1, 2]
    rows = list(csv.DictReader((tmp_path / "cmp" / "synth.csv").open()))
    assert [(r["method"], r["seeds"]) for r in rows] == [("knn", ""), ("finetune", "1,2")]
    assert "±" in rows[1]["final average"] and rows[1]["final average 95% CI"] == ""
    knn = json.loads(next((tmp_path / "runs").glob("synth/knn/*/record.json")).read_text())
    low, high = knn["intervals"]["miou"]["final_average"]
    assert rows[0]["final average 95% CI"] == f"[{low:.1f}, {high:.1f}]"
    diffs = list(csv.DictReader((tmp_path / "cmp" / "synth-differences.csv").open()))
    assert [d["difference"] for d in diffs] == ["knn - finetune (seed 1)", "knn - finetune (seed 2)"]
    assert all(d["final average 95% CI"].startswith("[") and d["paired images"] == "4" for d in diffs)
    assert "knn - finetune (seed 1)" in markdown and "retention: needs a knn and a zeroshot run" in markdown

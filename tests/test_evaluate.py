"""``eval panoptic`` and ``eval semantic`` on small fixtures written here and on the real COCO sample."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.evaluate import add_eval_commands
from datamodules.coco_panoptic import encode_panoptic_ids
from datamodules.contract import DataError

REAL = Path(__file__).parent / "fixtures" / "coco_real"

SKY, PERSON, TREE = 10, 20, 30  # category ids; tree never occurs
CATEGORIES = [{"id": SKY, "name": "sky", "isthing": 0}, {"id": PERSON, "name": "person", "isthing": 1},
              {"id": TREE, "name": "tree", "isthing": 0}]

# Image 1: sky 1000 over a person 70000, bottom row void (the void case of test_metrics_panoptic).
GT_A = np.array([[1000] * 4, [1000] * 4, [70000] * 4, [0] * 4])
PRED_A = np.array([[11, 11, 11, 11], [11, 11, 12, 12], [12, 12, 12, 12], [12, 12, 13, 13]])
# Image 2: a person 5 beside a crowd of persons 6 (the crowd case).
GT_B = np.array([[5, 5, 5, 6, 6, 6]] * 2)
PRED_B = np.array([[21, 21, 22, 22, 23, 23]] * 2)


def _seg(sid: int, cat: int, crowd: int = 0) -> dict:
    return {"id": sid, "category_id": cat, "iscrowd": crowd}


def _gt_doc() -> dict:
    return {"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4},
                       {"id": 2, "file_name": "b.jpg", "height": 2, "width": 6}],
            "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": [_seg(1000, SKY),
                                                                                    _seg(70000, PERSON)]},
                            {"image_id": 2, "file_name": "b.png", "segments_info": [_seg(5, PERSON),
                                                                                    _seg(6, PERSON, 1)]}],
            "categories": CATEGORIES}


def _pred_doc() -> dict:
    # Only annotations, as many writers produce; file names differ from the ground truth's (paired by image_id).
    return {"annotations": [
        {"image_id": 2, "file_name": "pred_b.png", "segments_info": [_seg(21, PERSON), _seg(22, PERSON),
                                                                     _seg(23, PERSON)]},
        {"image_id": 1, "file_name": "pred_a.png", "segments_info": [_seg(11, SKY), _seg(12, PERSON),
                                                                     _seg(13, PERSON)]}]}


def _write_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(encode_panoptic_ids(ids)).save(path)


@pytest.fixture
def pan(tmp_path: Path) -> dict[str, Path]:
    paths = {"gt_json": tmp_path / "gt.json", "gt_dir": tmp_path / "gt", "pred_json": tmp_path / "pred.json",
             "pred_dir": tmp_path / "pred", "out": tmp_path / "out" / "pq.json"}
    paths["gt_json"].write_text(json.dumps(_gt_doc()))
    paths["pred_json"].write_text(json.dumps(_pred_doc()))
    for folder, name, ids in ((paths["gt_dir"], "a.png", GT_A), (paths["gt_dir"], "b.png", GT_B),
                              (paths["pred_dir"], "pred_a.png", PRED_A), (paths["pred_dir"], "pred_b.png", PRED_B)):
        _write_png(folder / name, ids)
    return paths


def run_eval(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def run_panoptic(p: dict[str, Path]) -> int:
    return run_eval(["eval", "panoptic", "--gt-json", str(p["gt_json"]), "--gt-dir", str(p["gt_dir"]),
                     "--pred-json", str(p["pred_json"]), "--pred-dir", str(p["pred_dir"]), "--out", str(p["out"]),
                     "--quiet"])


def test_panoptic_numbers_and_json_structure(pan: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert run_panoptic(pan) == 0
    out = json.loads(pan["out"].read_text())
    assert list(out) == ["All", "Things", "Stuff", "per_class"]
    # sky: one TP at IoU 0.75. person: image 1 a TP at 2/3; image 2 a TP at 2/3 and a FP ->
    # tp 2, fp 1, iou 4/3: SQ = 2/3, RQ = 2 / 2.5 = 0.8, PQ = (4/3) / 2.5 = 8/15. tree never occurs.
    assert out["per_class"] == {"10": pytest.approx({"pq": 0.75, "sq": 0.75, "rq": 1.0}),
                                "20": pytest.approx({"pq": 8 / 15, "sq": 2 / 3, "rq": 0.8}),
                                "30": {"pq": 0.0, "sq": 0.0, "rq": 0.0}}
    assert out["All"] == pytest.approx({"pq": (0.75 + 8 / 15) / 2, "sq": (0.75 + 2 / 3) / 2, "rq": 0.9, "n": 2})
    assert out["Things"] == pytest.approx({"pq": 8 / 15, "sq": 2 / 3, "rq": 0.8, "n": 1})
    assert out["Stuff"] == pytest.approx({"pq": 0.75, "sq": 0.75, "rq": 1.0, "n": 1})
    table = capsys.readouterr().out
    assert "PQ" in table and "64.2" in table and "53.3" in table  # percent: (0.75 + 8/15) / 2 = 64.17 %
    assert [p.name for p in pan["out"].parent.iterdir()] == ["pq.json"]  # no temporary file left behind


def test_panoptic_real_coco_sample_against_itself(tmp_path: Path) -> None:
    out = tmp_path / "pq.json"
    gt_json, gt_dir = REAL / "annotations" / "panoptic_val2017.json", REAL / "panoptic_val2017"
    assert run_eval(["eval", "panoptic", "--gt-json", str(gt_json), "--gt-dir", str(gt_dir), "--pred-json",
                     str(gt_json), "--pred-dir", str(gt_dir), "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 4}
    assert result["Things"]["n"] == 3 and result["Stuff"]["n"] == 1
    assert set(result["per_class"]) == {"17", "63", "75", "93"}


def _edit_json(key: str, edit: Callable[[dict], None]) -> Callable[[dict[str, Path]], None]:
    def apply(p: dict[str, Path]) -> None:
        doc = json.loads(p[key].read_text())
        edit(doc)
        p[key].write_text(json.dumps(doc))
    return apply


def _extra_prediction(doc: dict) -> None:
    doc["annotations"].append({"image_id": 99, "file_name": "pred_z.png", "segments_info": []})


def _drop_prediction(doc: dict) -> None:
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != 2]


def _drop_pred_segment(doc: dict) -> None:
    doc["annotations"][1]["segments_info"].pop(1)  # id 12 of pred_a.png


def _drop_gt_segment(doc: dict) -> None:
    doc["annotations"][0]["segments_info"].pop(0)  # id 1000 of a.png


def _add_pred_segment(doc: dict) -> None:
    doc["annotations"][1]["segments_info"].append(_seg(14, SKY))


def _unknown_category(doc: dict) -> None:
    doc["annotations"][0]["segments_info"][0]["category_id"] = 77


def _resize_pred(p: dict[str, Path]) -> None:
    _write_png(p["pred_dir"] / "pred_b.png", np.pad(PRED_B, ((0, 1), (0, 0)), constant_values=21))


def _delete_pred_png(p: dict[str, Path]) -> None:
    (p["pred_dir"] / "pred_a.png").unlink()


@pytest.mark.parametrize(("break_input", "message"), [
    (_edit_json("pred_json", _extra_prediction), r"pred\.json: prediction for image_id 99 .*not in the ground truth"),
    (_edit_json("pred_json", _drop_prediction), r"pred\.json: no prediction for ground-truth image_id 2 \('b\.png'\)"),
    (_edit_json("pred_json", _drop_pred_segment), r"pred_a\.png: segment id 12 is in the PNG but not in the "
                                                  r"segments_info .*pred\.json"),
    (_edit_json("gt_json", _drop_gt_segment), r"a\.png: segment id 1000 is in the PNG but not .*gt\.json"),
    (_edit_json("pred_json", _add_pred_segment), r"pred\.json: segment id 14 of pred_a\.png is in segments_info "
                                                 r"but has no pixel"),
    (_edit_json("pred_json", _unknown_category), r"pred\.json: image 2 .*category_id 77"),
    (_resize_pred, r"pred_b\.png: prediction is 6×3 \(W×H\) but the ground truth .*b\.png is 6×2"),
    (_edit_json("pred_json", lambda d: d["annotations"][0].pop("image_id")), r"malformed annotation .*'image_id'"),
    (lambda p: p["pred_json"].write_text("{\"annotations\": ["), r"pred\.json: not valid JSON"),
    (_delete_pred_png, r"pred_a\.png: panoptic PNG missing"),
])
def test_panoptic_refuses_mismatched_input(pan: dict[str, Path], break_input, message: str) -> None:
    break_input(pan)
    with pytest.raises(DataError, match=message):
        run_panoptic(pan)
    assert not pan["out"].exists()


# --- semantic ------------------------------------------------------------------------------------------------------

def _write_labels(path: Path, labels: list[list[int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array(labels, dtype=np.uint8)).save(path)


@pytest.fixture
def sem(tmp_path: Path) -> dict[str, Path]:
    # The hand-worked example of test_metrics_semantic, split over two files.
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write_labels(gt / "x.png", [[0, 0, 1]])
    _write_labels(pred / "x.png", [[0, 1, 1]])
    _write_labels(gt / "y.png", [[1, 2, 255]])
    _write_labels(pred / "y.png", [[255, 2, 2]])
    return {"gt_dir": gt, "pred_dir": pred, "out": tmp_path / "miou.json"}


def run_semantic(p: dict[str, Path], *extra: str) -> int:
    return run_eval(["eval", "semantic", "--gt-dir", str(p["gt_dir"]), "--pred-dir", str(p["pred_dir"]),
                     "--num-classes", "4", "--out", str(p["out"]), "--quiet", *extra])


def test_semantic_numbers_in_percent(sem: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert run_semantic(sem) == 0
    out = json.loads(sem["out"].read_text())
    assert list(out) == ["miou", "per_class_iou", "pixel_accuracy"]
    # class 0: 1/2, class 1: 1/3, class 2: 1/1, class 3 absent; 3 of 5 counted pixels right.
    assert out["per_class_iou"][:3] == pytest.approx([50.0, 100 / 3, 100.0]) and out["per_class_iou"][3] is None
    assert out["miou"] == pytest.approx(100 * (1 / 2 + 1 / 3 + 1) / 3)
    assert out["pixel_accuracy"] == pytest.approx(60.0)
    assert "mIoU 61.11" in capsys.readouterr().out


def test_semantic_ignore_index_option(sem: dict[str, Path]) -> None:
    # With 254 as the ignore id, 255 in the gt is no longer skipped and becomes an error.
    with pytest.raises(DataError, match=r"y\.png: ground truth has class id 255"):
        run_semantic(sem, "--ignore-index", "254")


@pytest.mark.parametrize("ignore", ["0", "3"])
def test_semantic_ignore_index_that_is_a_class_is_refused(sem: dict[str, Path], ignore: str) -> None:
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^--ignore-index {ignore} is class {ignore} of the 4 classes "
                                          r"\(--num-classes 4: ids 0\.\.3\)"):
        run_semantic(sem, "--ignore-index", ignore)
    assert not sem["out"].exists()


def _move(src: str, dst: str) -> Callable[[dict[str, Path]], None]:
    def apply(p: dict[str, Path]) -> None:
        (p["pred_dir"] / src).rename(p["pred_dir"] / dst)
    return apply


@pytest.mark.parametrize(("break_input", "message"), [
    (lambda p: (p["pred_dir"] / "y.png").unlink(), r"gt/y\.png: ground truth has no prediction .*pred/y\.png"),
    (_move("y.png", "z.png"), r"pred/z\.png: prediction has no ground truth .*gt/z\.png"),
    (lambda p: _write_labels(p["pred_dir"] / "x.png", [[0, 1, 1, 1]]),
     r"pred/x\.png: prediction is 4×1 \(W×H\) but the ground truth .*gt/x\.png is 3×1"),
    (lambda p: _write_labels(p["gt_dir"] / "x.png", [[0, 7, 1]]), r"gt/x\.png: ground truth has class id 7"),
    (lambda p: Image.new("RGB", (3, 1)).save(p["pred_dir"] / "x.png"), r"pred/x\.png: label map has shape"),
])
def test_semantic_refuses_mismatched_input(sem: dict[str, Path], break_input, message: str) -> None:
    break_input(sem)
    with pytest.raises(DataError, match=message):
        run_semantic(sem)
    assert not sem["out"].exists()


def test_bad_num_classes_is_a_usage_error(sem: dict[str, Path]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_eval(["eval", "semantic", "--gt-dir", str(sem["gt_dir"]), "--pred-dir", str(sem["pred_dir"]),
                  "--num-classes", "0"])
    assert exit_info.value.code == 2


def test_command_module_is_cheap_to_import() -> None:
    """The CLI builds its parser on every call: the eval commands must not pull in torch until they run."""
    code = "import sys, bench.evaluate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0

"""Scores of predictions stored on disk by any model: the work behind ``python -m bench eval`` (bench/evaluate.py).

:func:`evaluate_panoptic` reads the COCO panoptic format (a json with ``annotations[*].segments_info`` and a folder
of PNGs, id = R + 256·G + 256²·B) for ground truth and prediction alike and returns panopticapi's ``pq_compute``
structure: ``All`` / ``Things`` / ``Stuff`` each ``{pq, sq, rq, n}`` as fractions, and ``per_class`` keyed by
category id. :func:`evaluate_semantic` reads PNG label maps paired by file name and returns ``miou``,
``per_class_iou`` and ``pixel_accuracy`` in percent. Bad input raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from bench.metrics import MeanIoU, PanopticQuality
from datamodules.coco_panoptic import load_panoptic_ids, panoptic_maps, segments_info
from datamodules.contract import DataError
from datamodules.ignore import PNG_IGNORE
from datamodules.jsonio import load_json
from datamodules.labelmaps import PIL_ERRORS


def _read_png(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: {what} missing")
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except PIL_ERRORS as e:
        raise DataError(f"{path}: cannot decode {what} ({e})") from e


def nan_to_none(x: float) -> float | None:
    """JSON has no NaN: a score over nothing is written as null."""
    return None if math.isnan(x) else x


# --- panoptic -----------------------------------------------------------------------------------------------------

def _tensors(ids: np.ndarray, ann: dict[str, Any], png: Path, json_path: Path, class_of: dict[int, int],
             require_all: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Segment map (1-based in json order, 0 = void), classes and iscrowd of one annotation and its PNG.

    Every non-zero id in the PNG must be in the json; with ``require_all`` every json segment must be in the PNG
    (panopticapi's checks on predictions; ground-truth segments without pixels stay, as false negatives).
    """
    where = f"{json_path}: image {ann['image_id']} ({ann.get('file_name')!r})"
    info = segments_info(ann.get("segments_info", []), class_of, where, known="the ground-truth categories")
    maps = panoptic_maps(ids, info, png, f"its annotation in {json_path}", keep_all=True)
    if require_all and maps.unpainted:
        raise DataError(f"{json_path}: segment id {maps.unpainted[0]} of {png.name} is in segments_info but has "
                        f"no pixel in {png}")
    return (torch.from_numpy(maps.segments), torch.tensor(maps.classes, dtype=torch.int64),
            torch.tensor(maps.crowd, dtype=torch.bool))


def _categories(gt_doc: dict[str, Any], gt_json: Path) -> tuple[list[int], list[bool]]:
    """Category ids and isthing flags, in json order (the class index order)."""
    categories = gt_doc.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DataError(f"{gt_json}: field 'categories' missing or empty; expected COCO panoptic categories")
    try:
        return [int(c["id"]) for c in categories], [bool(c["isthing"]) for c in categories]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{gt_json}: malformed category (missing or wrong field {e}); expected id and isthing") from e


def _pairs(gt_doc: dict[str, Any], pred_doc: dict[str, Any], gt_json: Path,
           pred_json: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(gt, pred) annotations paired by image_id, in ground-truth order; each side must cover the other."""
    preds: dict[int, dict[str, Any]] = {}
    for ann in pred_doc["annotations"]:
        if int(ann["image_id"]) in preds:
            raise DataError(f"{pred_json}: image_id {ann['image_id']} has more than one annotation")
        preds[int(ann["image_id"])] = ann
    gt_images = {int(ann["image_id"]) for ann in gt_doc["annotations"]}
    if extra := [i for i in preds if i not in gt_images]:
        raise DataError(f"{pred_json}: prediction for image_id {extra[0]} ({preds[extra[0]].get('file_name')!r}), "
                        f"which is not in the ground truth {gt_json}")
    if missing := [ann for ann in gt_doc["annotations"] if int(ann["image_id"]) not in preds]:
        raise DataError(f"{pred_json}: no prediction for ground-truth image_id {missing[0]['image_id']} "
                        f"({missing[0].get('file_name')!r}) of {gt_json}")
    return [(ann, preds[int(ann["image_id"])]) for ann in gt_doc["annotations"]]


def _update(metric: PanopticQuality, gt_ann: dict[str, Any], pred_ann: dict[str, Any], paths: dict[str, Path],
            class_of: dict[int, int]) -> None:
    gt_png, pred_png = paths["gt_dir"] / gt_ann["file_name"], paths["pred_dir"] / pred_ann["file_name"]
    gt_ids, pred_ids = load_panoptic_ids(gt_png), load_panoptic_ids(pred_png)
    if gt_ids.shape != pred_ids.shape:
        raise DataError(f"{pred_png}: prediction is {pred_ids.shape[1]}×{pred_ids.shape[0]} (W×H) but the ground "
                        f"truth {gt_png} is {gt_ids.shape[1]}×{gt_ids.shape[0]}; expected the same size")
    gt = _tensors(gt_ids, gt_ann, gt_png, paths["gt_json"], class_of, require_all=False)
    pred = _tensors(pred_ids, pred_ann, pred_png, paths["pred_json"], class_of, require_all=True)
    metric.update(pred[0], pred[1], *gt)


def evaluate_panoptic(gt_json: Path, gt_dir: Path, pred_json: Path, pred_dir: Path,
                      progress: bool = True) -> dict[str, Any]:
    """PQ of stored COCO-panoptic predictions, in the structure of panopticapi's ``pq_compute`` result.

    Images are paired by ``image_id``; categories (ids, ``isthing``) come from the ground-truth json and the
    prediction uses the same category ids. ``per_class`` is keyed by category id.
    """
    paths = {"gt_json": gt_json, "gt_dir": gt_dir, "pred_json": pred_json, "pred_dir": pred_dir}
    gt_doc = load_json(gt_json, ("annotations",), "COCO panoptic ground-truth json")
    pred_doc = load_json(pred_json, ("annotations",), "COCO panoptic prediction json")
    cat_ids, is_thing = _categories(gt_doc, gt_json)
    class_of = {cat: k for k, cat in enumerate(cat_ids)}
    metric = PanopticQuality(len(cat_ids), is_thing)
    try:
        pairs = _pairs(gt_doc, pred_doc, gt_json, pred_json)
        for gt_ann, pred_ann in tqdm(pairs, desc="eval panoptic", unit="img", disable=not progress):
            _update(metric, gt_ann, pred_ann, paths, class_of)
    except DataError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{gt_json} / {pred_json}: malformed annotation (missing or wrong field {e}); expected "
                        "COCO panoptic annotations with image_id, file_name and segments_info") from e
    result = metric.compute()
    result["per_class"] = {cat_ids[k]: v for k, v in result["per_class"].items()}
    return result


def format_pq_table(result: dict[str, Any]) -> str:
    """The All / Things / Stuff rows in percent, as panopticapi prints them."""
    lines = [f"{'':10}|{'PQ':>7}{'SQ':>7}{'RQ':>7}{'N':>6}", "-" * 38]
    for name in ("All", "Things", "Stuff"):
        r = result[name]
        lines.append(f"{name:10}|" + "".join(f"{100 * r[k]:7.1f}" for k in ("pq", "sq", "rq")) + f"{r['n']:6d}")
    return "\n".join(lines)


# --- semantic -----------------------------------------------------------------------------------------------------

def _label_map(path: Path) -> np.ndarray:
    labels = _read_png(path, "label map")
    if labels.ndim != 2:
        raise DataError(f"{path}: label map has shape {labels.shape}; expected a single-channel PNG (mode L, P "
                        "or I) of class ids")
    return labels.astype(np.int64)


def _png_names(folder: Path, what: str) -> set[str]:
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder missing")
    return {p.name for p in folder.iterdir() if p.suffix.lower() == ".png"}


def evaluate_semantic(gt_dir: Path, pred_dir: Path, num_classes: int, ignore_index: int = PNG_IGNORE,
                      progress: bool = True) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy, in percent, of PNG label maps paired by file name.

    Per-class IoU is None for a class in neither ground truth nor prediction; prediction values outside the
    vocabulary count as misses.
    """
    gt_names, pred_names = _png_names(gt_dir, "ground-truth"), _png_names(pred_dir, "prediction")
    if not gt_names:
        raise DataError(f"{gt_dir}: no .png label maps in the ground-truth folder")
    if extra := sorted(pred_names - gt_names):
        raise DataError(f"{pred_dir / extra[0]}: prediction has no ground truth {gt_dir / extra[0]}")
    if missing := sorted(gt_names - pred_names):
        raise DataError(f"{gt_dir / missing[0]}: ground truth has no prediction {pred_dir / missing[0]}")
    metric = MeanIoU(num_classes, ignore_index=ignore_index)
    for name in tqdm(sorted(gt_names), desc="eval semantic", unit="img", disable=not progress):
        gt, pred = _label_map(gt_dir / name), _label_map(pred_dir / name)
        if gt.shape != pred.shape:
            raise DataError(f"{pred_dir / name}: prediction is {pred.shape[1]}×{pred.shape[0]} (W×H) but the ground "
                            f"truth {gt_dir / name} is {gt.shape[1]}×{gt.shape[0]}; expected the same size")
        bad = (gt != ignore_index) & ((gt < 0) | (gt >= num_classes))
        if bad.any():
            raise DataError(f"{gt_dir / name}: ground truth has class id {int(gt[bad][0])}, expected "
                            f"0..{num_classes - 1} or {ignore_index} (ignore)")
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
    out = metric.compute()
    return {
        "miou": nan_to_none(100 * float(out["miou"])),
        "per_class_iou": [nan_to_none(100 * v) for v in out["per_class_iou"].tolist()],
        "pixel_accuracy": nan_to_none(100 * float(out["pixel_accuracy"])),
    }

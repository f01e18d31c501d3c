"""``python -m bench eval panoptic|semantic``: score predictions stored on disk by any model.

``eval panoptic`` reads the COCO panoptic format (a json with ``annotations[*].segments_info`` and a folder of
PNGs, id = R + 256·G + 256²·B) for both ground truth and prediction, and writes a JSON shaped like the return
value of panopticapi's ``pq_compute``: ``All`` / ``Things`` / ``Stuff`` each ``{pq, sq, rq, n}`` as fractions,
and ``per_class`` keyed by category id. ``eval semantic`` reads PNG label maps with matching file names and writes
``miou``, ``per_class_iou`` and ``pixel_accuracy`` in percent. Bad input raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import argparse
import json as jsonlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from bench.io import atomic_write_json
from bench.metrics import MeanIoU, PanopticQuality
from datamodules.contract import IGNORE_INDEX, DataError

_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _read_png(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: {what} missing")
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except _PIL_ERRORS as e:
        raise DataError(f"{path}: cannot decode {what} ({e})") from e


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: {what} missing")
    try:
        doc = jsonlib.loads(path.read_text(encoding="utf-8"))
    except jsonlib.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}: line {e.lineno}, column {e.colno})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read {what} ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise DataError(f"{path}: expected a COCO panoptic JSON object with an 'annotations' list")
    return doc


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


# --- panoptic -----------------------------------------------------------------------------------------------------

def _decode_ids(path: Path) -> np.ndarray:
    rgb = _read_png(path, "panoptic PNG")
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise DataError(f"{path}: panoptic PNG has shape {rgb.shape}; expected an RGB PNG with "
                        "segment id = R + 256·G + 256²·B")
    rgb = rgb[..., :3].astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _segments(ann: dict[str, Any], json_path: Path, class_of: dict[int, int]) -> dict[int, tuple[int, bool]]:
    """Segment id → (class index, iscrowd) of one annotation, in json order."""
    out: dict[int, tuple[int, bool]] = {}
    for s in ann.get("segments_info", []):
        cat = int(s["category_id"])
        if cat not in class_of:
            raise DataError(f"{json_path}: image {ann['image_id']} ({ann.get('file_name')!r}): segment {s['id']} "
                            f"has category_id {cat}, which is not among the ground-truth categories")
        if int(s["id"]) in out:
            raise DataError(f"{json_path}: image {ann['image_id']}: segment id {s['id']} is listed twice")
        out[int(s["id"])] = (class_of[cat], bool(s.get("iscrowd", 0)))
    return out


def _to_tensors(ids: np.ndarray, info: dict[int, tuple[int, bool]], png: Path, json_path: Path,
                require_all: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Segment map (1-based in json order, 0 = void), classes and iscrowd of one PNG.

    Every non-zero id in the PNG must be in the json; with ``require_all`` every json segment must be in the PNG
    (panopticapi's checks on predictions; ground-truth segments without pixels stay, as false negatives).
    """
    uniq, inverse = np.unique(ids, return_inverse=True)
    unknown = [u for u in uniq.tolist() if u != 0 and u not in info]
    if unknown:
        raise DataError(f"{png}: segment id {unknown[0]} is in the PNG but not in the segments_info of its "
                        f"annotation in {json_path}")
    if require_all:
        absent = sorted(set(info) - set(uniq.tolist()))
        if absent:
            raise DataError(f"{json_path}: segment id {absent[0]} of {png.name} is in segments_info but has no "
                            f"pixel in {png}")
    number = {sid: k for k, sid in enumerate(info, 1)}
    lut = np.array([number.get(u, 0) for u in uniq.tolist()], dtype=np.int64)
    segments = torch.from_numpy(lut[inverse.reshape(ids.shape)])
    classes = torch.tensor([c for c, _ in info.values()], dtype=torch.int64)
    crowd = torch.tensor([k for _, k in info.values()], dtype=torch.bool)
    return segments, classes, crowd


def evaluate_panoptic(gt_json: Path, gt_dir: Path, pred_json: Path, pred_dir: Path,
                      progress: bool = True) -> dict[str, Any]:
    """PQ of stored COCO-panoptic predictions, in the structure of panopticapi's ``pq_compute`` result.

    Images are paired by ``image_id``; categories (ids, ``isthing``) come from the ground-truth json and the
    prediction uses the same category ids. ``per_class`` is keyed by category id.
    """
    gt_doc, pred_doc = _read_json(gt_json, "ground-truth json"), _read_json(pred_json, "prediction json")
    categories = gt_doc.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DataError(f"{gt_json}: field 'categories' missing or empty; expected COCO panoptic categories")
    try:
        cat_ids = [int(c["id"]) for c in categories]
        is_thing = [bool(c["isthing"]) for c in categories]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{gt_json}: malformed category (missing or wrong field {e}); expected id and isthing") from e
    class_of = {cat: k for k, cat in enumerate(cat_ids)}

    try:
        preds = {}
        for ann in pred_doc["annotations"]:
            if int(ann["image_id"]) in preds:
                raise DataError(f"{pred_json}: image_id {ann['image_id']} has more than one annotation")
            preds[int(ann["image_id"])] = ann
        gt_images = {int(ann["image_id"]) for ann in gt_doc["annotations"]}
        extra = [i for i in preds if i not in gt_images]
        if extra:
            raise DataError(f"{pred_json}: prediction for image_id {extra[0]} "
                            f"({preds[extra[0]].get('file_name')!r}), which is not in the ground truth {gt_json}")
        missing = [ann for ann in gt_doc["annotations"] if int(ann["image_id"]) not in preds]
        if missing:
            raise DataError(f"{pred_json}: no prediction for ground-truth image_id {missing[0]['image_id']} "
                            f"({missing[0].get('file_name')!r}) of {gt_json}")

        metric = PanopticQuality(len(cat_ids), is_thing)
        for gt_ann in tqdm(gt_doc["annotations"], desc="eval panoptic", unit="img", disable=not progress):
            pred_ann = preds[int(gt_ann["image_id"])]
            gt_png, pred_png = gt_dir / gt_ann["file_name"], pred_dir / pred_ann["file_name"]
            gt_ids, pred_ids = _decode_ids(gt_png), _decode_ids(pred_png)
            if gt_ids.shape != pred_ids.shape:
                raise DataError(f"{pred_png}: prediction is {pred_ids.shape[1]}×{pred_ids.shape[0]} (W×H) but the "
                                f"ground truth {gt_png} is {gt_ids.shape[1]}×{gt_ids.shape[0]}; expected the same size")
            gt = _to_tensors(gt_ids, _segments(gt_ann, gt_json, class_of), gt_png, gt_json, require_all=False)
            pred = _to_tensors(pred_ids, _segments(pred_ann, pred_json, class_of), pred_png, pred_json,
                               require_all=True)
            metric.update(pred[0], pred[1], *gt)
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


def _panoptic_json(result: dict[str, Any]) -> dict[str, Any]:
    out = {name: {k: (_nan_to_none(v) if k != "n" else v) for k, v in result[name].items()}
           for name in ("All", "Things", "Stuff")}
    out["per_class"] = {str(cat): q for cat, q in result["per_class"].items()}
    return out


def _cmd_panoptic(args: argparse.Namespace) -> int:
    result = evaluate_panoptic(Path(args.gt_json), Path(args.gt_dir), Path(args.pred_json), Path(args.pred_dir),
                               progress=not args.quiet)
    if args.out:
        atomic_write_json(args.out, _panoptic_json(result))
    print(format_pq_table(result))
    return 0


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


def evaluate_semantic(gt_dir: Path, pred_dir: Path, num_classes: int, ignore_index: int = IGNORE_INDEX,
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
        "miou": _nan_to_none(100 * float(out["miou"])),
        "per_class_iou": [_nan_to_none(100 * v) for v in out["per_class_iou"].tolist()],
        "pixel_accuracy": _nan_to_none(100 * float(out["pixel_accuracy"])),
    }


def _cmd_semantic(args: argparse.Namespace) -> int:
    if args.num_classes < 1:
        raise DataError(f"--num-classes must be >= 1, got {args.num_classes}")
    result = evaluate_semantic(Path(args.gt_dir), Path(args.pred_dir), args.num_classes, args.ignore_index,
                               progress=not args.quiet)
    if args.out:
        atomic_write_json(args.out, result)
    print(f"mIoU {_pct(result['miou'])}  pixel accuracy {_pct(result['pixel_accuracy'])}  "
          f"({sum(v is not None for v in result['per_class_iou'])} of {args.num_classes} classes present)")
    return 0


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``eval panoptic`` and ``eval semantic``; each parsed namespace's ``func`` returns an exit code."""
    p = sub.add_parser("eval", help="score stored predictions (panoptic: COCO format; semantic: PNG label maps)")
    kinds = p.add_subparsers(dest="eval_kind", required=True)
    pan = kinds.add_parser("panoptic", help="PQ / SQ / RQ of COCO panoptic predictions (panopticapi's numbers)")
    pan.add_argument("--gt-json", required=True, help="ground-truth COCO panoptic json (with categories)")
    pan.add_argument("--gt-dir", required=True, help="folder of ground-truth panoptic PNGs")
    pan.add_argument("--pred-json", required=True, help="prediction json (annotations with segments_info)")
    pan.add_argument("--pred-dir", required=True, help="folder of predicted panoptic PNGs")
    pan.add_argument("--out", help="write the result JSON here (pq_compute's structure, fractions)")
    pan.add_argument("--quiet", action="store_true", help="no progress bar")
    pan.set_defaults(func=_cmd_panoptic)
    sem = kinds.add_parser("semantic", help="mIoU of PNG label maps paired by file name")
    sem.add_argument("--gt-dir", required=True, help="folder of ground-truth label map PNGs")
    sem.add_argument("--pred-dir", required=True, help="folder of predicted label map PNGs, same file names")
    sem.add_argument("--num-classes", type=int, required=True, help="number of classes (ids 0..N-1)")
    sem.add_argument("--ignore-index", type=int, default=IGNORE_INDEX, help="ground-truth id to skip (255)")
    sem.add_argument("--out", help="write miou, per_class_iou, pixel_accuracy (percent) as JSON here")
    sem.add_argument("--quiet", action="store_true", help="no progress bar")
    sem.set_defaults(func=_cmd_semantic)

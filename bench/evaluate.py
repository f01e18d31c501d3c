"""``python -m bench eval panoptic|semantic``: score predictions stored on disk by any model.

Only the command line lives here, cheap to import (the parser is built on every ``python -m bench`` call); the
work, with torch and torchmetrics, is in :mod:`bench.scoring`. Bad input raises ``DataError`` naming the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from datamodules.ignore import PNG_IGNORE  # torch-free: the parser stays cheap to build


def panoptic_json(result: dict[str, Any]) -> dict[str, Any]:
    """The result of ``evaluate_panoptic`` as JSON: pq_compute's structure, null for NaN, category ids as keys."""
    from bench.scoring import nan_to_none

    out: dict[str, Any] = {name: {k: (v if k == "n" else nan_to_none(v)) for k, v in result[name].items()}
                           for name in ("All", "Things", "Stuff")}
    out["per_class"] = {str(cat): q for cat, q in result["per_class"].items()}
    return out


def _check_out(out: str | None) -> None:
    """An ``--out`` that is a folder or cannot be written is refused before any scoring."""
    if out:
        from bench.io import check_writable

        check_writable(out, "--out")


def _cmd_panoptic(args: argparse.Namespace) -> int:
    from bench.io import atomic_write_json
    from bench.scoring import evaluate_panoptic, format_pq_table

    _check_out(args.out)
    result = evaluate_panoptic(Path(args.gt_json), Path(args.gt_dir), Path(args.pred_json), Path(args.pred_dir),
                               progress=not args.quiet)
    if args.out:
        atomic_write_json(args.out, panoptic_json(result))
    print(format_pq_table(result))
    return 0


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _cmd_semantic(args: argparse.Namespace) -> int:
    from bench.errors import ConfigError
    from bench.io import atomic_write_json
    from bench.scoring import evaluate_semantic

    if 0 <= args.ignore_index < args.num_classes:
        last = args.num_classes - 1
        raise ConfigError(f"--ignore-index {args.ignore_index} is class {args.ignore_index} of the {args.num_classes} "
                          f"classes (--num-classes {args.num_classes}: ids 0..{last}); its pixels would not be "
                          f"scored. Give the id of unlabelled pixels, outside 0..{last} (default {PNG_IGNORE})")
    _check_out(args.out)
    result = evaluate_semantic(Path(args.gt_dir), Path(args.pred_dir), args.num_classes, args.ignore_index,
                               progress=not args.quiet)
    if args.out:
        atomic_write_json(args.out, result)
    print(f"mIoU {_pct(result['miou'])}  pixel accuracy {_pct(result['pixel_accuracy'])}  "
          f"({sum(v is not None for v in result['per_class_iou'])} of {args.num_classes} classes present)")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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
    sem.add_argument("--num-classes", type=_positive_int, required=True, help="number of classes (ids 0..N-1)")
    sem.add_argument("--ignore-index", type=int, default=PNG_IGNORE,
                     help=f"ground-truth id to skip ({PNG_IGNORE})")
    sem.add_argument("--out", help="write miou, per_class_iou, pixel_accuracy (percent) as JSON here")
    sem.add_argument("--quiet", action="store_true", help="no progress bar")
    sem.set_defaults(func=_cmd_semantic)

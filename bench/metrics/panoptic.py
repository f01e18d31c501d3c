"""Panoptic quality (PQ = SQ × RQ) as defined for COCO panoptic: pure functions on tensors.

One image gives per-class counts that add up over images and ranks: ``[C, 4]`` float64 rows of
``(tp, fp, fn, iou_sum)``. The rules are those of panopticapi's ``pq_compute``:

- a prediction and a ground-truth segment of the same class match when IoU > 0.5, where the prediction's pixels
  on ground-truth void are left out of the union (the ground truth's pixels are all counted); with non-overlapping
  segments IoU > 0.5 makes every match one-to-one, so no assignment step is needed;
- a crowd ground-truth segment is never matched and never a false negative;
- an unmatched prediction is not a false positive when more than half of its pixels lie on void or on crowd
  segments of its class;
- per-class PQ, SQ, RQ are averaged over the classes with ``tp + fp + fn > 0``, for all, things and stuff.

Where this differs from panopticapi, only on input panopticapi never sees from COCO: all crowd segments of a class
count (panopticapi keeps the last one listed; COCO has at most one per class and image), the ground-truth area is
the pixel count (panopticapi reads the json's ``area``, equal to it in COCO), a prediction with no pixel is skipped
(panopticapi refuses the file), and an average over no class is NaN (panopticapi divides by zero).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

TP, FP, FN, IOU_SUM = range(4)


def _check_segments(name: str, segments: Tensor, classes: Tensor, num_classes: int) -> None:
    if segments.is_floating_point() or segments.dtype == torch.bool:
        raise ValueError(f"{name}_segments must hold integer segment ids, got dtype {segments.dtype}")
    if classes.ndim != 1:
        raise ValueError(f"{name}_classes must be 1-D [S], got shape {tuple(classes.shape)}")
    if segments.numel():
        low, high = (int(v) for v in torch.aminmax(segments))
        if low < 0 or high > len(classes):
            raise ValueError(f"{name}_segments holds ids in [{low}, {high}], expected 0 (void) or "
                             f"1..{len(classes)} (one per entry of {name}_classes)")
    if len(classes) and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise ValueError(f"{name}_classes holds class ids in [{int(classes.min())}, {int(classes.max())}], "
                         f"expected 0..{num_classes - 1}")


def _bincount(keys: Tensor, size: int) -> Tensor:
    # On CPU, numpy's bincount is several times faster than torch's (same int64 counts).
    if keys.device.type == "cpu":
        return torch.from_numpy(np.bincount(keys.numpy(), minlength=size))
    return torch.bincount(keys, minlength=size)


def _flat_inputs(pred_segments: Tensor, pred_classes: Tensor, gt_segments: Tensor, gt_classes: Tensor,
                 gt_iscrowd: Tensor, num_classes: int, gt_void: Tensor | None) -> tuple[Tensor, ...]:
    """Checked inputs on ``gt_segments``' device: flat int64 pred and gt ids (extra void folded into gt id 0),
    int64 pred and gt classes, bool crowd flags."""
    if pred_segments.shape != gt_segments.shape:
        raise ValueError(f"pred_segments and gt_segments must have the same shape, got "
                         f"{tuple(pred_segments.shape)} and {tuple(gt_segments.shape)}")
    if gt_iscrowd.shape != gt_classes.shape:
        raise ValueError(f"gt_iscrowd must have the shape of gt_classes {tuple(gt_classes.shape)}, "
                         f"got {tuple(gt_iscrowd.shape)}")
    if gt_void is not None and gt_void.shape != gt_segments.shape:
        raise ValueError(f"gt_void must have the shape of gt_segments {tuple(gt_segments.shape)}, "
                         f"got {tuple(gt_void.shape)}")
    _check_segments("pred", pred_segments, pred_classes, num_classes)
    _check_segments("gt", gt_segments, gt_classes, num_classes)
    device = gt_segments.device
    gt = gt_segments.reshape(-1).long()
    if gt_void is not None:
        gt = gt.masked_fill(gt_void.reshape(-1).to(device, torch.bool), 0)
    return (pred_segments.reshape(-1).long().to(device), pred_classes.long().to(device), gt,
            gt_classes.long().to(device), gt_iscrowd.to(device, torch.bool))


def _count(stats: Tensor, column: int, classes: Tensor, values: Tensor | None = None) -> None:
    values = torch.ones(len(classes), dtype=stats.dtype, device=stats.device) if values is None else values
    stats[:, column].index_add_(0, classes, values)


def pq_stats(pred_segments: Tensor, pred_classes: Tensor, gt_segments: Tensor, gt_classes: Tensor,
             gt_iscrowd: Tensor, num_classes: int, gt_void: Tensor | None = None) -> Tensor:
    """Per-class PQ counts of one image.

    pred_segments, gt_segments: int64 ``H×W`` segment maps, 0 = void / unlabelled, ``k`` = the k-th segment
    (1-based) of ``pred_classes`` / ``gt_classes`` (int64 ``[P]`` / ``[G]``, class ids in ``[0, num_classes)``);
    gt_iscrowd: bool ``[G]``; gt_void: optional bool ``H×W``, more ground-truth void on top of segment 0.
    Returns float64 ``[num_classes, 4]`` on ``gt_segments``' device, columns ``(tp, fp, fn, iou_sum)``
    (see :data:`TP`, :data:`FP`, :data:`FN`, :data:`IOU_SUM`), to be summed over images.
    """
    pred, pred_classes, gt, gt_classes, crowd = _flat_inputs(pred_segments, pred_classes, gt_segments, gt_classes,
                                                             gt_iscrowd, num_classes, gt_void)
    n_gt, n_pred = len(gt_classes), len(pred_classes)

    # One pass over the pixels: the (gt id, pred id) co-occurrence table, void row and column included.
    table = _bincount(gt * (n_pred + 1) + pred, (n_gt + 1) * (n_pred + 1)).view(n_gt + 1, n_pred + 1)
    pred_area, gt_area = table.sum(0)[1:], table.sum(1)[1:]
    pred_on_void = table[0, 1:]
    inter = table[1:, 1:]  # G×P

    same_class = gt_classes[:, None] == pred_classes[None, :]
    union = pred_area[None, :] + gt_area[:, None] - inter - pred_on_void[None, :]
    # IoU > 0.5 in exact integer arithmetic; at most one match per row and column (segments do not overlap).
    matched = same_class & ~crowd[:, None] & (inter > 0) & (2 * inter > union)
    gt_idx, pred_idx = matched.nonzero(as_tuple=True)
    iou = inter[gt_idx, pred_idx].double() / union[gt_idx, pred_idx].double()

    stats = torch.zeros(num_classes, 4, dtype=torch.float64, device=gt.device)
    _count(stats, TP, gt_classes[gt_idx])
    _count(stats, IOU_SUM, gt_classes[gt_idx], iou)
    _count(stats, FN, gt_classes[~matched.any(1) & ~crowd])
    on_own_crowd = (inter * (same_class & crowd[:, None])).sum(0)
    excused = 2 * (pred_on_void + on_own_crowd) > pred_area  # more than half on void or crowd of its class
    _count(stats, FP, pred_classes[~matched.any(0) & (pred_area > 0) & ~excused])
    return stats


def _per_class(stats: Tensor) -> list[dict[str, float] | None]:
    """Per-class PQ, SQ, RQ as Python floats (the arithmetic of panopticapi); None for a class that never occurs."""
    out: list[dict[str, float] | None] = []
    for tp, fp, fn, iou_sum in stats.double().cpu().tolist():
        denom = tp + 0.5 * fp + 0.5 * fn
        out.append(None if denom == 0 else
                   {"pq": iou_sum / denom, "sq": iou_sum / tp if tp else 0.0, "rq": tp / denom})
    return out


def pq_from_stats(stats: Tensor, is_thing: Tensor) -> dict:
    """PQ, SQ, RQ from summed counts, with the structure of panopticapi's ``pq_compute`` result.

    stats: ``[C, 4]`` from :func:`pq_stats` (summed); is_thing: bool ``[C]``. Returns ``{"All", "Things",
    "Stuff"}`` each ``{"pq", "sq", "rq"}`` as fractions (NaN when no class of the group occurs) and ``"n"``, the
    number of classes averaged over (those with ``tp + fp + fn > 0``); and ``"per_class"``: class index →
    ``{"pq", "sq", "rq"}``, all 0.0 for a class that never occurs, as panopticapi reports it.
    """
    if stats.ndim != 2 or stats.shape[1] != 4:
        raise ValueError(f"stats must have shape [C, 4], got {tuple(stats.shape)}")
    if is_thing.shape != (stats.shape[0],):
        raise ValueError(f"is_thing must have shape [{stats.shape[0]}], got {tuple(is_thing.shape)}")
    per_class = _per_class(stats)
    things = is_thing.bool().tolist()
    out: dict = {}
    for group, keep in (("All", lambda t: True), ("Things", lambda t: t), ("Stuff", lambda t: not t)):
        rows = [q for q, t in zip(per_class, things) if q is not None and keep(t)]
        n = len(rows)
        out[group] = {k: sum(q[k] for q in rows) / n if n else math.nan for k in ("pq", "sq", "rq")}
        out[group]["n"] = n
    out["per_class"] = {c: q if q is not None else {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                        for c, q in enumerate(per_class)}
    out["present"] = [q is not None for q in per_class]  # which classes occur (per_class shows 0.0 for the others)
    return out

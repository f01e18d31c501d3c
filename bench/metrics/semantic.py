"""Semantic segmentation scores from a confusion matrix: pure functions on tensors.

The confusion matrix has one extra column for predictions that are no class at all (255 = "no prediction",
or any id outside the vocabulary): such a pixel is a miss of its target class and a hit for no class, so it
lowers the target class's IoU without raising any other class's false positives.
"""

from __future__ import annotations

import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Count (target, prediction) pairs over all pixels not marked ``ignore_index`` in the target.

    pred, target: integer tensors of the same shape (any shape, e.g. ``H×W`` or ``B×H×W``), class ids in
    ``[0, num_classes)``. Target pixels equal to ``ignore_index`` are skipped; predictions outside
    ``[0, num_classes)`` land in the last column. Returns int64 ``C×(C+1)`` on ``target``'s device:
    rows are target classes, columns predicted classes, column ``C`` the invalid predictions.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got pred {tuple(pred.shape)} "
                         f"and target {tuple(target.shape)}")
    for name, t in (("pred", pred), ("target", target)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().to(target.device)

    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    bad = (target < 0) | (target >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"target holds class id {int(target[bad][0])}, expected ids in [0, {num_classes}) "
                         f"or ignore_index={ignore_index}")

    invalid_column = num_classes
    pred = torch.where((pred >= 0) & (pred < num_classes), pred, invalid_column)
    width = num_classes + 1
    counts = torch.bincount(target * width + pred, minlength=num_classes * width)
    return counts.reshape(num_classes, width)


def _checked(cm: Tensor) -> Tensor:
    if cm.ndim != 2 or cm.shape[1] != cm.shape[0] + 1:
        raise ValueError(f"confusion matrix must have shape C×(C+1), got {tuple(cm.shape)}")
    return cm.to(torch.float64)


def iou_from_confusion(cm: Tensor) -> Tensor:
    """Per-class intersection over union.

    cm: ``C×(C+1)`` counts from :func:`confusion_matrix`. Returns float64 ``[C]``: ``TP / (TP + FP + FN)``,
    where FN includes invalid predictions; NaN for a class absent from both target and prediction.
    """
    cm = _checked(cm)
    num_classes = cm.shape[0]
    tp = cm.diagonal()
    union = cm.sum(1) + cm[:, :num_classes].sum(0) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, torch.nan))


def mean_iou(cm: Tensor) -> float:
    """Mean IoU over the classes that occur in target or prediction, in ``[0, 1]``; NaN if none does.

    cm: ``C×(C+1)`` counts from :func:`confusion_matrix`.
    """
    return float(torch.nanmean(iou_from_confusion(cm)))


def pixel_accuracy(cm: Tensor) -> float:
    """Fraction of counted pixels predicted as their target class, in ``[0, 1]``; NaN if no pixel counted.

    cm: ``C×(C+1)`` counts from :func:`confusion_matrix`.
    """
    cm = _checked(cm)
    total = cm.sum()
    return float(cm.diagonal().sum() / total) if total > 0 else float("nan")

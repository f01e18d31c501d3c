"""Per-image class counts, and bootstrap intervals of the scores built from them (mIoU, its averages, paired
differences between two runs on the same evaluation images).

An evaluation keeps, for every image, the classes present in its target or its prediction with three counts:
``tp`` (pixels of the class predicted as it), ``target`` (pixels of the class) and ``pred`` (pixels predicted as
the class among pixels with a valid target). The IoU of a class over any set of images is
``Σtp / (Σtarget + Σpred − Σtp)``, the mean over classes whose union is not 0 is the mIoU of
:func:`bench.metrics.semantic.mean_iou`, so the summed counts of all images give back the recorded score and a
bootstrap needs no second pass over the images: each replicate draws the evaluation images with replacement
(per evaluated task; the same draw for every step and for every run compared, so differences are paired) and
recomputes the scores from the weighted sums. Intervals are percentile intervals (95 % by default).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

FIELDS = ("tp", "target", "pred")
REPLICATES = 1000


def image_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> np.ndarray:
    """int64 ``K×4`` rows ``(class, tp, target, pred)`` of one image, for the K classes in its target or
    prediction (pixels whose target is ``ignore_index`` are left out; a prediction outside the vocabulary counts
    for no class, as in :func:`bench.metrics.semantic.confusion_matrix`)."""
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().to(target.device)
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    valid = (pred >= 0) & (pred < num_classes)
    tp = torch.bincount(target[pred == target], minlength=num_classes)
    t = torch.bincount(target, minlength=num_classes)
    p = torch.bincount(pred[valid], minlength=num_classes)
    present = torch.nonzero(t + p).flatten()
    return torch.stack([present, tp[present], t[present], p[present]], 1).cpu().numpy().astype(np.int64)


def dense(per_image: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """int64 ``N×C×3`` counts from each image's ``K×4`` rows (images in evaluation order)."""
    out = np.zeros((len(per_image), num_classes, 3), dtype=np.int64)
    for i, rows in enumerate(per_image):
        if len(rows):
            out[i, rows[:, 0]] = rows[:, 1:]
    return out


def miou(totals: np.ndarray) -> np.ndarray:
    """Percent mIoU of summed counts ``...×C×3`` (NaN where no class has a union)."""
    tp, t, p = totals[..., 0], totals[..., 1], totals[..., 2]
    union = t + p - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    if not iou.shape[-1]:
        return np.full(iou.shape[:-1], np.nan)
    with warnings.catch_warnings():  # a replicate with no class present is NaN, as the metric says
        warnings.simplefilter("ignore", RuntimeWarning)
        return 100.0 * np.nanmean(iou, axis=-1)


def class_iou(totals: np.ndarray) -> np.ndarray:
    """Percent IoU per class of summed counts ``...×C×3`` (NaN where the union is 0)."""
    tp, t, p = totals[..., 0], totals[..., 1], totals[..., 2]
    union = t + p - tp
    return np.where(union > 0, 100.0 * tp / np.maximum(union, 1), np.nan)


def draws(n: int, replicates: int = REPLICATES, seed: int = 0) -> np.ndarray:
    """float64 ``B×n``: how often each of ``n`` images is drawn in each replicate (a multinomial resample)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64) if n else np.zeros(
        (replicates, 0))


def task_draws(sizes: Mapping[str, int], replicates: int = REPLICATES) -> dict[str, np.ndarray]:
    """Draws of each evaluated task's images, by counts-file key (``sizes``: key -> number of images). The key
    at index i in sorted order gets seed i, so two runs evaluated on the same images get the same draws: their
    replicates are paired and the replicates of a difference are the differences of the replicates."""
    return {key: draws(n, replicates, seed=i) for i, (key, n) in enumerate(sorted(sizes.items()))}


def resampled(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``B×C×3`` summed counts of each replicate (``counts`` ``N×C×3``, ``weights`` ``B×N``)."""
    n, c, _ = counts.shape
    return (weights @ counts.reshape(n, c * 3).astype(np.float64)).reshape(-1, c, 3)


def interval(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    """The percentile interval of replicate values (NaN replicates dropped); None when none is finite."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    low, high = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return [round(float(low), 4), round(float(high), 4)]


def summary_replicates(counts: Sequence[Sequence[np.ndarray | None]], weights: Sequence[np.ndarray]
                       ) -> dict[str, np.ndarray]:
    """Replicates of the final average and the average incremental mIoU of a run.

    counts[t][j]: ``N_j×C_j×3`` counts of task j's evaluation after step t (None when j was not evaluated);
    weights[j]: ``B×N_j`` draws of task j's images. Only the lower triangle (j <= t) enters, as in
    :mod:`bench.continual`."""
    rows = []
    for t, row in enumerate(counts):
        rows.append([miou(resampled(row[j], weights[j])) for j in range(t + 1)])
    final = np.mean(np.stack(rows[-1]), axis=0)
    incremental = np.mean(np.stack([np.mean(np.stack(r), axis=0) for r in rows]), axis=0)
    return {"final_average": final, "average_incremental": incremental}

"""Panoptic quality as a torchmetrics Metric: per-class counts summed over images and, under DDP, over ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from bench.metrics.panoptic import pq_from_stats, pq_stats


class PanopticQuality(Metric):
    """COCO-style PQ / SQ / RQ over one vocabulary of ``num_classes`` classes, things and stuff.

    The only state is a float64 ``[C, 4]`` table of ``(tp, fp, fn, iou_sum)`` reduced by sum: counts are exact,
    and the IoU sums differ from one process only by the order of float additions (~1e-16 relative).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    stats: Tensor

    def __init__(self, num_classes: int, is_thing: Sequence[bool] | Tensor, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        is_thing = torch.as_tensor(is_thing, dtype=torch.bool).cpu()
        if is_thing.shape != (num_classes,):
            raise ValueError(f"is_thing has shape {tuple(is_thing.shape)}, expected [{num_classes}]")
        self.num_classes = num_classes
        self.is_thing = is_thing
        self.add_state("stats", default=torch.zeros(num_classes, 4, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred_segments: Tensor, pred_classes: Tensor, gt_segments: Tensor, gt_classes: Tensor,
               gt_iscrowd: Tensor, gt_void: Tensor | None = None) -> None:
        """Add one image: segment maps ``H×W`` (0 = void) with per-segment classes ``[P]`` / ``[G]`` and
        ``gt_iscrowd`` bool ``[G]``; see :func:`bench.metrics.panoptic.pq_stats`."""
        self.stats += pq_stats(pred_segments, pred_classes, gt_segments, gt_classes, gt_iscrowd, self.num_classes,
                               gt_void).to(self.stats)

    def compute(self) -> dict:
        """``{"All", "Things", "Stuff"}`` each ``{"pq", "sq", "rq", "n"}`` (fractions) and ``"per_class"``."""
        return pq_from_stats(self.stats, self.is_thing)

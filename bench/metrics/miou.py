"""Mean IoU as a torchmetrics Metric: a confusion matrix summed over batches and, under DDP, over ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from bench.metrics.semantic import confusion_matrix, iou_from_confusion, pixel_accuracy


class MeanIoU(Metric):
    """Semantic segmentation mIoU over one vocabulary of ``num_classes`` classes.

    The only state is an int64 ``C×(C+1)`` confusion matrix reduced by sum, so the result under DDP is exactly
    the single-process result as long as every sample is seen by one rank only.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names, expected num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes + 1, dtype=torch.int64),
                       dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one sample (``H×W``) or a batch (``B×H×W``) of integer class-id maps (ignore_index skipped)."""
        self.confmat += confusion_matrix(pred, target, self.num_classes, self.ignore_index).to(self.confmat)

    def compute(self) -> dict[str, Tensor]:
        """``miou`` (float64 scalar), ``per_class_iou`` (float64 ``[C]``, NaN for absent classes) and
        ``pixel_accuracy`` (float64 scalar), all fractions in ``[0, 1]``."""
        iou = iou_from_confusion(self.confmat)
        accuracy = torch.tensor(pixel_accuracy(self.confmat), dtype=torch.float64, device=iou.device)
        return {"miou": torch.nanmean(iou), "per_class_iou": iou, "pixel_accuracy": accuracy}

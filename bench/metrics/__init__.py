"""Segmentation metrics: pure functions on tensors, and torchmetrics shells with sum-reducible state."""

from bench.metrics.miou import MeanIoU
from bench.metrics.panoptic import pq_from_stats, pq_stats
from bench.metrics.pq import PanopticQuality
from bench.metrics.semantic import confusion_matrix, iou_from_confusion, mean_iou, pixel_accuracy

__all__ = ["MeanIoU", "PanopticQuality", "confusion_matrix", "iou_from_confusion", "mean_iou", "pixel_accuracy",
           "pq_from_stats", "pq_stats"]

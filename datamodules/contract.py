"""The data contract: what every reader yields, and the checks made where data enters.

One sample is a dict:

- ``image``: uint8 tensor ``3×H×W`` (RGB).
- ``semantic``: int64 tensor ``H×W``, local class ids of the task vocabulary, ``IGNORE_INDEX`` (-1) = ignore.
  (Not 255: ADE-847, PC-459 and LVIS have a real class 255; datasets' own ignore values, such as
  ``PNG_IGNORE`` (255) in label PNGs, are mapped to -1; see :mod:`datamodules.ignore`.)
- ``segments``: int64 tensor ``H×W``, panoptic segment map; 0 = void, ``k`` = the k-th segment (1-based).
- ``segment_classes``: int64 tensor ``[S]``, local class id of segment ``k`` at index ``k-1``.
- ``segment_iscrowd``: bool tensor ``[S]``.
- ``meta``: dict with ``dataset`` (str), ``file_id`` (str), ``source`` (path of the image or a description),
  ``size`` (original ``(H, W)``).

Readers without panoptic annotations still yield ``segments``: connected regions of one class are not split, so
each class present becomes one segment (enough for the ground-truth proposals of semantic tasks).
"""

from __future__ import annotations

from typing import Any

import torch

from datamodules.ignore import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "DataError", "validate_sample"]


class DataError(ValueError):
    """Bad dataset input. The message names the file, the field and what was expected."""


def validate_sample(sample: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """Check one sample against the contract; raise :class:`DataError` naming the source file."""
    src = sample.get("meta", {}).get("source", "<unknown source>")
    image, semantic = sample["image"], sample["semantic"]
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise DataError(f"{src}: field 'image' must be uint8 3×H×W, got {image.dtype} {tuple(image.shape)}")
    h, w = image.shape[1:]
    if semantic.shape != (h, w):
        raise DataError(f"{src}: field 'semantic' has size {tuple(semantic.shape)} but the image is {(h, w)}")
    low, high = torch.aminmax(semantic) if semantic.numel() else (torch.tensor(0), torch.tensor(0))
    if int(low) < min(IGNORE_INDEX, 0) or int(high) >= num_classes:  # one pass; the search below only on error
        bad = (semantic != IGNORE_INDEX) & ((semantic < 0) | (semantic >= num_classes))
        value = int(semantic[bad][0])
        raise DataError(f"{src}: field 'semantic' has class id {value}, outside the vocabulary of "
                        f"{num_classes} classes (expected 0..{num_classes - 1} or {IGNORE_INDEX} for ignore)")
    segments = sample.get("segments")
    if segments is not None:
        if segments.shape != (h, w):
            raise DataError(f"{src}: field 'segments' has size {tuple(segments.shape)} but the image is {(h, w)}")
        classes = sample["segment_classes"]
        if int(segments.max()) > len(classes):
            raise DataError(f"{src}: field 'segments' refers to segment {int(segments.max())} but only "
                            f"{len(classes)} segment classes are given")
        if len(classes) and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
            raise DataError(f"{src}: field 'segment_classes' has a class id outside 0..{num_classes - 1}")
    return sample

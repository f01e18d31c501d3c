"""Overlapping scored masks (a mask model's queries or prompts) turned into one label map: a pure function."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from bench.errors import WeightsUnavailable, first_line

# Mask2Former's panoptic inference drops a query when less than this fraction of its mask survives the overlaps
# (detectron2 config MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD 0.8; facebookresearch/Mask2Former, maskformer_model.py)
KEEP_FRACTION = 0.8
TINY_RANDOM = "tiny-random"  # proposals.model: a tiny random-init model built offline, for tests only


def paint_by_score(masks: torch.Tensor, scores: torch.Tensor, keep_fraction: float = KEEP_FRACTION,
                   min_area: int = 0) -> torch.Tensor:
    """One label map from overlapping masks: masks are painted in descending score, each only on pixels no
    better mask took; a mask is kept when what remains of it is at least ``keep_fraction`` of its own area and at
    least ``min_area`` pixels (and not empty), else its pixels stay uncovered (0). Ties keep the input order.

    ``masks``: bool ``K×H×W``; ``scores``: float ``K``. Returns int64 ``H×W``: 0 = uncovered, ids 1..n contiguous
    in descending score (n ≤ K)."""
    h, w = masks.shape[-2:]
    labels = torch.zeros((h, w), dtype=torch.int64, device=masks.device)
    taken = torch.zeros((h, w), dtype=torch.bool, device=masks.device)
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    areas = masks.flatten(1).sum(1).tolist()
    n = 0
    for k in order:
        free = masks[k] & ~taken
        left = int(free.sum())
        if left == 0 or left < min_area or left < keep_fraction * areas[k]:
            continue
        n += 1
        labels[free] = n
        taken |= free
    return labels


def load_pretrained(kind: str, name: str, load: Callable[[str], Any]) -> Any:
    """``load(name)`` (a ``from_pretrained``: hub name or local folder) or a one-line WeightsUnavailable naming
    ``proposals.model``; a random model is never put in its place."""
    try:
        return load(name)
    except Exception as e:
        hint = " (HF_HUB_OFFLINE=1 is set and it is not in the cache)" if os.environ.get("HF_HUB_OFFLINE") == "1" \
            else ""
        raise WeightsUnavailable(f"proposals.model={name!r}: cannot load the {kind} checkpoint{hint}: "
                                 f"{first_line(e)}; use a cached hub name or a local folder (tests: "
                                 f"proposals.model={TINY_RANDOM})") from e

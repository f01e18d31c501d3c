"""Semantic maps from per-proposal class distributions."""

from __future__ import annotations

import torch

IGNORE_INDEX = 255


def semantic_from_proposals(label_map: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Each pixel takes the most probable class of the proposal covering it.

    label_map: int64 ``H×W``, 0 = not covered, k = proposal k (1-based); probs: float ``Q×C``.
    Returns int64 ``H×W`` with local class ids, ``IGNORE_INDEX`` where no proposal covers the pixel (which the
    metric counts as a miss, never as a correct pixel).
    """
    best = probs.argmax(1)
    lut = torch.cat([torch.tensor([IGNORE_INDEX], device=best.device), best])
    return lut[label_map]

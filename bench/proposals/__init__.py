"""Mask proposal generators, found by name.

A proposal set for one image is a label map: int64 ``H×W`` at the image's original size, 0 = not covered,
``k`` = the k-th proposal (1-based). Non-overlapping proposals cover what the methods here need (ground-truth
segments, superpixels); soft overlapping query masks can come with a second representation later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench.errors import ConfigError

Proposer = Callable[[dict[str, Any]], torch.Tensor]


def ground_truth(sample: dict[str, Any]) -> torch.Tensor:
    """The oracle: each ground-truth segment (thing instance or stuff region) is a proposal."""
    return sample["segments"].long()


def superpixels(n_segments: int = 64, compactness: float = 10.0) -> Proposer:
    """SLIC superpixels on the RGB image: training-free, class-agnostic, over-segmenting by design."""
    from skimage.segmentation import slic

    def propose(sample: dict[str, Any]) -> torch.Tensor:
        image = sample["image"].permute(1, 2, 0).cpu().numpy()
        labels = slic(image, n_segments=n_segments, compactness=compactness, start_label=1, channel_axis=-1)
        return torch.from_numpy(labels.astype(np.int64))

    return propose


def build_proposer(kind: str, n_segments: int = 64, compactness: float = 10.0) -> Proposer:
    builders: dict[str, Callable[[], Proposer]] = {
        "gt": lambda: ground_truth,
        "superpixel": lambda: superpixels(n_segments, compactness),
    }
    if kind not in builders:
        raise ConfigError(f"unknown proposals.kind {kind!r}; expected one of: {', '.join(builders)}")
    return builders[kind]()


def pool_features(features: torch.Tensor, label_map: torch.Tensor, num_regions: int) -> torch.Tensor:
    """Average a feature map inside each region of a label map.

    features: float ``D×h×w`` (any grid); label_map: int64 ``H×W`` at image size, values 0..num_regions.
    Returns float ``num_regions×D``: row ``k-1`` is the mean feature of region ``k``, each pixel of the region
    voting for the grid cell it falls in (exact area weights when H, W are multiples of h, w). A region with no
    pixels gets a zero row.
    """
    d, h, w = features.shape
    H, W = label_map.shape
    rows = (torch.arange(H, device=label_map.device) * h // H).view(H, 1)
    cols = (torch.arange(W, device=label_map.device) * w // W).view(1, W)
    cell = (rows * w + cols).expand(H, W)
    counts = torch.bincount((label_map * (h * w) + cell).flatten(), minlength=(num_regions + 1) * h * w)
    weights = counts.view(num_regions + 1, h * w)[1:].to(features.dtype)
    pooled = weights @ features.reshape(d, h * w).T
    return pooled / weights.sum(1, keepdim=True).clamp_min(1)

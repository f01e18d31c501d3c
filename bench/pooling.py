"""Mask pooling: the mean of a dense feature map inside each region of a label map."""

from __future__ import annotations

from typing import Any

import torch


def pool_features(features: torch.Tensor, label_map: torch.Tensor, num_regions: int) -> torch.Tensor:
    """Average a feature map inside each region of a label map.

    features: float ``D×h×w`` (any grid); label_map: int64 ``H×W`` at image size, values 0..num_regions.
    Returns float ``num_regions×D``: row ``k-1`` is the mean feature of region ``k``, each pixel of the region
    voting for the grid cell it falls in (exact area weights when H, W are multiples of h, w). A region with no
    pixels gets a zero row.
    """
    return pool_with_area(features, label_map, num_regions)[0]


def pool_with_area(features: torch.Tensor, label_map: torch.Tensor, num_regions: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pool_features`, and each region's pixel count (int64 ``num_regions``) from the same counting pass."""
    return pool_cells(features, region_cells(label_map, num_regions, *features.shape[-2:]))


def region_cells(label_map: torch.Tensor, num_regions: int, h: int, w: int) -> torch.Tensor:
    """int64 ``num_regions×(h·w)``: how many pixels of each region (label ``k`` in row ``k-1``) fall in each cell
    of an ``h×w`` grid spanning the map: all that :func:`pool_cells` needs of the map, and small (a loader worker
    computes it for the adapt pass: :class:`bench.inputs.PreparedInputs`)."""
    H, W = label_map.shape
    # The (region, cell) index of each pixel, in int32 where it fits: the same counts, a third of the time of
    # int64 on a 512×683 map (less memory to stream through).
    kind = torch.int32 if (num_regions + 1) * h * w < 2**31 else torch.int64
    rows = (torch.arange(H, device=label_map.device, dtype=kind) * h // H).view(H, 1)
    cols = (torch.arange(W, device=label_map.device, dtype=kind) * w // W).view(1, W)
    index = label_map.to(kind) * (h * w) + (rows * w + cols)
    counts = torch.bincount(index.flatten(), minlength=(num_regions + 1) * h * w)
    return counts.view(num_regions + 1, h * w)[1:]


def pool_cells(features: torch.Tensor, per_cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The region means of ``features`` (float ``D×h×w``) from :func:`region_cells` counts on its grid, and
    each region's pixel count."""
    d, h, w = features.shape
    weights = per_cell.to(features.device, features.dtype)
    pooled = weights @ features.reshape(d, h * w).T
    return pooled / weights.sum(1, keepdim=True).clamp_min(1), per_cell.sum(1)


def pool_regions(features: Any, label_map: torch.Tensor, num_regions: int) -> torch.Tensor:
    """:func:`pool_features` for a feature map given as a tensor ``D×h×w`` spanning the image, or the pooling of a
    :class:`bench.dense.DenseFeatures` (windows under an inference protocol) for anything with ``pool``."""
    if isinstance(features, torch.Tensor):
        return pool_features(features, label_map, num_regions)
    return features.pool(label_map, num_regions)

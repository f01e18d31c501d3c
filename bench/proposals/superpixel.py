"""SLIC superpixels on the RGB image: training-free, class-agnostic, over-segmenting by design."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.proposals import PROPOSERS


@PROPOSERS.register("superpixel")
class Superpixels:
    """SLIC superpixels (training-free; panoptic inference joins same-class superpixels)"""

    instances, runs_on = False, "loader"

    def __init__(self, n_segments: int = 64, compactness: float = 10.0, **_: Any) -> None:
        self.n_segments, self.compactness = n_segments, compactness

    def __call__(self, sample: dict[str, Any]) -> torch.Tensor:
        from skimage.segmentation import slic

        image = sample["image"].permute(1, 2, 0).cpu().numpy()
        labels = slic(image, n_segments=self.n_segments, compactness=self.compactness, start_label=1,
                      channel_axis=-1)
        return torch.from_numpy(labels.astype(np.int64))

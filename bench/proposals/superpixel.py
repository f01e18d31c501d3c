"""SLIC superpixels on the RGB image: training-free, class-agnostic, over-segmenting by design."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.proposals import PROPOSERS


@PROPOSERS.register("superpixel")
class Superpixels:
    """SLIC superpixels (training-free; panoptic inference joins same-class superpixels)"""

    instances, runs_on = False, "loader"

    def __init__(self, n_segments: int = 64, compactness: float = 10.0, max_side: int = 0, **_: Any) -> None:
        """``max_side`` > 0: SLIC on the image scaled so that its long side is at most ``max_side`` (antialiased),
        the labels scaled back to the image's size (nearest); the same ``n_segments``, coarser boundaries."""
        self.n_segments, self.compactness, self.max_side = n_segments, compactness, max_side

    def __call__(self, sample: dict[str, Any]) -> torch.Tensor:
        """int64 ``H×W`` label map of the uint8 ``3×H×W`` image, ids 1..n."""
        from skimage.segmentation import slic

        image = sample["image"].cpu()
        h, w = image.shape[-2:]
        small = _downscaled(image, self.max_side)
        labels = slic(small.permute(1, 2, 0).numpy(), n_segments=self.n_segments, compactness=self.compactness,
                      start_label=1, channel_axis=-1)
        labels = torch.from_numpy(labels.astype(np.int64))
        if small is image:
            return labels
        sh, sw = labels.shape  # nearest, as bench.dense places pixels: every small pixel keeps at least one
        return labels[(torch.arange(h) * sh // h).view(-1, 1), (torch.arange(w) * sw // w).view(1, -1)]


def _downscaled(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """The uint8 ``3×H×W`` image scaled (bilinear, antialiased) so its long side is ``max_side``; the image
    itself when ``max_side`` is 0 or not below its long side."""
    h, w = image.shape[-2:]
    if not max_side or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(round(h * scale), 1), max(round(w * scale), 1))
    x = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return x.round_().clamp_(0, 255).to(torch.uint8)

"""Mask2Former's query masks as class-agnostic instance proposals (Cheng et al., "Masked-attention Mask Transformer
for Universal Image Segmentation", CVPR 2022), through Hugging Face transformers.

Only the masks and how sure the model is that a query is an object are used; its class predictions over its
training vocabulary are not (kNN-CLIP classifies every mask). Overlaps: :func:`bench.proposals.overlaps.paint_by_score`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bench.proposals import PROPOSERS
from bench.proposals.overlaps import TINY_RANDOM, load_pretrained, paint_by_score

DEFAULT_MODEL = "facebook/mask2former-swin-large-coco-panoptic"
# A query is a proposal when its object probability (1 - p(no object)) reaches this: Mask2Former's panoptic
# inference threshold on the class score (MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD 0.8).
MIN_OBJECT = 0.8


@PROPOSERS.register("mask2former")
class Mask2FormerProposals:
    """Mask2Former query masks (transformers; class-agnostic: its own classes unused; proposals.model)"""

    instances, runs_on = True, "device"

    def __init__(self, model: str = "", min_area: int = 0, **_: Any) -> None:
        """``model``: a hub name or a local folder (empty: :data:`DEFAULT_MODEL`), or ``tiny-random`` (random
        weights, seed 0, every query kept: tests only). ``min_area``: pixels a kept mask must cover."""
        self.name, self.min_area = model or DEFAULT_MODEL, min_area
        if self.name == TINY_RANDOM:
            self.model, self.processor = _tiny_random()
            self.min_object = 0.0
        else:
            from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

            self.model = load_pretrained("Mask2Former", self.name,
                                         Mask2FormerForUniversalSegmentation.from_pretrained)
            self.processor = load_pretrained("Mask2Former", self.name, AutoImageProcessor.from_pretrained)
            self.min_object = MIN_OBJECT
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, sample: dict[str, Any]) -> torch.Tensor:
        """int64 ``H×W`` label map of the uint8 ``3×H×W`` image, on the image's device; one image per forward."""
        image = sample["image"]
        device, (h, w) = image.device, image.shape[-2:]
        self.model.to(device)
        inputs = self.processor(images=image.cpu(), return_tensors="pt")
        pixels = inputs["pixel_values"].to(device)
        mask = inputs.get("pixel_mask")
        out = self.model(pixel_values=pixels, pixel_mask=None if mask is None else mask.to(device))
        objectness = 1 - out.class_queries_logits[0].softmax(-1)[:, -1]  # the last class is "no object"
        keep = objectness >= self.min_object
        logits = out.masks_queries_logits[0][keep]
        if not len(logits):
            return torch.zeros((h, w), dtype=torch.int64, device=device)
        # to the padded input, cut to the resized image (the processor pads at the bottom and right), to the image
        logits = F.interpolate(logits[None], size=pixels.shape[-2:], mode="bilinear", align_corners=False)[0]
        if mask is not None:
            logits = logits[:, :int(mask[0].any(1).sum()), :int(mask[0].any(0).sum())]
        probs = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0].sigmoid()
        masks = probs > 0.5
        # Mask2Former's instance score, class-agnostic: object probability x mean mask probability inside the mask
        quality = (probs * masks).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp(min=1)
        return paint_by_score(masks, objectness[keep] * quality, min_area=self.min_area)


def _tiny_random() -> tuple[Any, Any]:
    """A Mask2Former with a 4-stage Swin of width 16, 20 queries and random weights (seed 0), and a processor
    that resizes to a short side of 128: for tests, offline and in a second on CPU."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
                               num_attention_heads=2, num_queries=20, num_labels=5, use_pretrained_backbone=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Mask2FormerForUniversalSegmentation(config)
    processor = Mask2FormerImageProcessor(size={"shortest_edge": 128, "longest_edge": 192}, size_divisor=32)
    return model, processor

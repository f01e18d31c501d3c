"""Segment Anything's automatic masks as class-agnostic instance proposals (Kirillov et al., "Segment Anything",
ICCV 2023), through the transformers ``mask-generation`` pipeline: a grid of point prompts, masks kept by their
predicted IoU and stability score, duplicates removed by box NMS (SAM's SamAutomaticMaskGenerator, one crop
layer). Overlaps (SAM's masks nest: whole, part, subpart): :func:`bench.proposals.overlaps.paint_by_score` on the
predicted IoU. SAM has no classes; kNN-CLIP classifies every mask.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.proposals import PROPOSERS
from bench.proposals.overlaps import TINY_RANDOM, load_pretrained, paint_by_score

DEFAULT_MODEL = "facebook/sam-vit-base"
# SamAutomaticMaskGenerator's defaults (facebookresearch/segment-anything, automatic_mask_generator.py): a 32x32
# grid, predicted IoU >= 0.88, stability >= 0.95; prompts go through the mask decoder 64 at a time.
GENERATION = {"points_per_crop": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "points_per_batch": 64}


@PROPOSERS.register("sam")
class SamProposals:
    """SAM automatic masks (transformers; point grid, IoU and stability filters; proposals.model)"""

    instances, runs_on = True, "device"

    def __init__(self, model: str = "", min_area: int = 0, **_: Any) -> None:
        """``model``: a hub name or a local folder (empty: :data:`DEFAULT_MODEL`), or ``tiny-random`` (random
        weights, seed 0, an 8x8 grid and no filters: tests only). ``min_area``: pixels a kept mask must cover."""
        self.name, self.min_area = model or DEFAULT_MODEL, min_area
        self.generation = dict(GENERATION)
        if self.name == TINY_RANDOM:
            self.model, self.processor = _tiny_random()
            self.generation.update(points_per_crop=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
        else:
            from transformers import SamImageProcessor, SamModel

            self.model = load_pretrained("SAM", self.name, SamModel.from_pretrained)
            self.processor = load_pretrained("SAM", self.name, SamImageProcessor.from_pretrained)
        self.model.eval().requires_grad_(False)
        self.pipes: dict[str, Any] = {}  # one pipeline per device

    @torch.no_grad()
    def __call__(self, sample: dict[str, Any]) -> torch.Tensor:
        """int64 ``H×W`` label map of the uint8 ``3×H×W`` image, on the image's device; one image at a time (the
        point prompts are batched)."""
        from PIL import Image

        image = sample["image"]
        device, (h, w) = image.device, image.shape[-2:]
        if str(device) not in self.pipes:
            from transformers import pipeline

            self.pipes[str(device)] = pipeline("mask-generation", model=self.model, image_processor=self.processor,
                                               device=device)
        out = self.pipes[str(device)](Image.fromarray(image.permute(1, 2, 0).cpu().numpy()), **self.generation)
        if not len(out["masks"]):
            return torch.zeros((h, w), dtype=torch.int64, device=device)
        masks = torch.stack([torch.as_tensor(m) for m in out["masks"]]).to(device=device, dtype=torch.bool)
        scores = torch.as_tensor(out["scores"]).float().to(device)
        return paint_by_score(masks, scores, min_area=self.min_area)


def _tiny_random() -> tuple[Any, Any]:
    """A SAM with a 2-layer ViT of width 32 on 64-pixel inputs and random weights (seed 0): tests only."""
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                             image_size=64, patch_size=8, mlp_dim=64, window_size=2, global_attn_indexes=[1],
                             num_pos_feats=8)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32,
                                   iou_head_hidden_dim=16)
    config = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                       mask_decoder_config=decoder.to_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SamModel(config)
    return model, SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})

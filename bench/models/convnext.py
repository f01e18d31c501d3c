"""A ConvNeXt CLIP as the base, the way FC-CLIP classifies masks out of its training vocabulary.

FC-CLIP (Yu et al., NeurIPS 2023) keeps a frozen open_clip ConvNeXt (``convnext_large_d_320``) and classifies a
mask by pooling the last stage's feature map inside it, then passing the pooled vector through the rest of the
CLIP image tower (the trunk head's LayerNorm and the projection into the joint space), then cosine with the text
embeddings. That is exactly CLIP's own image embedding when the mask is the whole image (global average pooling
is mask pooling with a full mask). Here: ``dense_features`` is the last stage's map (stride 32), and
:meth:`project_pooled` applies the head to pooled vectors; the heads call it after pooling. ``EMBEDDER=clip`` with
this base gives the memory the same last-stage map.
"""

from __future__ import annotations

import torch

from bench.errors import ConfigError
from bench.models import BASES
from bench.models.clip import ClipVisualEmbedder, OpenClipBase


@BASES.register("convnext", "FC-CLIP-style: an open_clip ConvNeXt, masks pooled on its last stage, then the CLIP "
                            "head (e.g. MODEL=convnext_large_d_320)")
class ConvNeXtBase(OpenClipBase):
    def _check_tower(self, name: str) -> None:
        """Accept an open_clip ConvNeXt (a timm trunk with stages and a norm head), refuse anything else."""
        trunk = getattr(self.model.visual, "trunk", None)
        if trunk is None or not hasattr(trunk, "stages") or not hasattr(getattr(trunk, "head", None), "norm"):
            raise ConfigError(f"base.kind=convnext needs an open_clip ConvNeXt model (convnext_base, "
                              f"convnext_large_d_320, ...); MODEL {name} has a {type(self.model.visual).__name__} "
                              "tower: use base.kind=maskclip (or another ViT base) for it")

    def _setup_tower(self) -> None:
        visual = self.model.visual
        if hasattr(visual, "transformer"):  # a ViT reached here without _check_tower being asked
            raise ConfigError(f"base.kind=convnext needs an open_clip ConvNeXt model; MODEL {self.name} is a ViT: "
                              "use base.kind=maskclip, sclip, clearclip or naclip")
        size = visual.image_size
        self.image_size = size if isinstance(size, int) else size[0]
        self.dim = visual.trunk.num_features  # pooled vectors are projected by project_pooled

    @property
    def patch_size(self) -> int:
        return 32  # ConvNeXt's total stride: the last stage's grid is the input / 32

    # -- images -------------------------------------------------------------------------------------------------
    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.visual.trunk.forward_features(images)

    def dense_and_token_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The base's map and the memory embedder's (``EMBEDDER=clip``): both the last stage, one pass."""
        features = self.dense_features(images)
        return features, features

    def project_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """float ``Q×C`` mask-pooled last-stage features → ``Q×D`` in the joint space (head norm, projection)."""
        visual = self.model.visual
        x = visual.trunk.head.norm(pooled[:, :, None, None]).flatten(1)
        return visual.head(x)

    def visual_embedder(self) -> ConvNeXtStageEmbedder:
        return ConvNeXtStageEmbedder(self)


class ConvNeXtStageEmbedder(ClipVisualEmbedder):
    """Memory embedder from a ConvNeXt base's own tower: the last stage's feature map."""

    def __init__(self, base: ConvNeXtBase) -> None:
        super().__init__(base, base.dim, "last-stage")

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.base.dense_features(images)


__all__ = ["ConvNeXtBase", "ConvNeXtStageEmbedder"]

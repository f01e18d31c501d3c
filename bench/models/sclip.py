"""SCLIP as a base: correlative self-attention in the last block of any open_clip ViT.

Wang, Mei, Yuille, "SCLIP: Rethinking Self-Attention for Dense Vision-Language Inference", ECCV 2024
(github.com/wangf3014/SCLIP, ``clip/model.py``: ``VisionTransformer.forward`` and ``custom_attn`` with ``csa=True``).
In the last block only, the attention weights are ``softmax(q·qᵀ·s) + softmax(k·kᵀ·s)`` (``s = d^-½``) in place of
``softmax(q·kᵀ·s)``; the block keeps its residual connection and FFN, as the authors' forward does.

Left out, as for every base here: their sliding windows, PAMR refinement and prompt set. The memory embedder
``EMBEDDER=clip`` keeps the plain last-layer tokens (``tokens(..., "full")``).
"""

from __future__ import annotations

import torch

from bench.models import BASES
from bench.models._attention import batch_first, self_self_attention
from bench.models.clip import OpenClipBase, _grid, weights_identity

CORRELATIVE = "correlative"  # the ``last_block`` mode of this base


def sclip_identity(name: str, pretrained: str = "", seed: int = 0) -> str:
    # The features differ from MaskCLIP's on the same weights, and caches keyed by identity must not mix them.
    return f"{weights_identity(name, pretrained, seed)}+sclip"


@BASES.register("sclip", "SCLIP: last block with softmax(qqᵀ)+softmax(kkᵀ) attention, residual and FFN kept")
class SclipBase(OpenClipBase):
    """:class:`~bench.models.clip.OpenClipBase` with SCLIP's last block for the dense (text-aligned) features."""

    def __init__(self, name: str, pretrained: str = "", seed: int = 0) -> None:
        super().__init__(name, pretrained, seed)
        self.identity = sclip_identity(name, self.pretrained, seed)

    weights_identity = staticmethod(sclip_identity)

    def _last(self, x: torch.Tensor, grid: int, last_block: str) -> torch.Tensor:
        if last_block != CORRELATIVE:
            return super()._last(x, grid, last_block)
        visual = self.model.visual
        last = visual.transformer.resblocks[-1]
        x = batch_first(visual.transformer, x)
        x = x + last.ls_1(self_self_attention(last.attn, last.ln_1(x), ("q", "k")))
        x = x + last.ls_2(last.mlp(last.ln_2(x)))
        return visual.ln_post(x[:, x.shape[1] - grid * grid:])

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.tokens(images, last_block=CORRELATIVE)
        return self._dense(tokens, grid)

    def dense_and_token_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = images.shape[-1] // self.patch_size
        trunk = self._trunk(images)
        return self._dense(self._last(trunk, grid, CORRELATIVE), grid), _grid(self._last(trunk, grid, "full"), grid)

"""ClearCLIP as a base: the last block of any open_clip ViT reduced to q·qᵀ self-attention.

Lan, Chen, Meng, Zhou, Jiang, Zhang, "ClearCLIP: Decomposing CLIP Representations for Dense Vision-Language
Inference", ECCV 2024 (github.com/mc-lan/ClearCLIP, ``open_clip/transformer.py``: ``VisionTransformer.forward``
and ``custom_attn`` with ``model_type='ClearCLIP'``, ``ignore_residual=True``). In the last block only, the output
is ``out_proj(softmax(q·qᵀ·s)·v)`` of the block's ``ln_1`` input (``s = d^-½``): the residual connection and the
FFN are removed.

Left out, as for every base here: their sliding windows, logit scale and prompt set. The memory embedder
``EMBEDDER=clip`` keeps the plain last-layer tokens (``tokens(..., "full")``).
"""

from __future__ import annotations

import torch

from bench.models import BASES
from bench.models._attention import batch_first, self_self_attention
from bench.models.clip import OpenClipBase, _grid, weights_identity

SELF_SELF = "self-self"  # the ``last_block`` mode of this base


def clearclip_identity(name: str, pretrained: str = "", seed: int = 0) -> str:
    # The features differ from MaskCLIP's on the same weights, and caches keyed by identity must not mix them.
    return f"{weights_identity(name, pretrained, seed)}+clearclip"


@BASES.register("clearclip", "ClearCLIP: last block as softmax(qqᵀ) attention only, residual and FFN removed")
class ClearClipBase(OpenClipBase):
    """:class:`~bench.models.clip.OpenClipBase` with ClearCLIP's last block for the dense (text-aligned) features."""

    def __init__(self, name: str, pretrained: str = "", seed: int = 0) -> None:
        super().__init__(name, pretrained, seed)
        self.identity = clearclip_identity(name, self.pretrained, seed)

    weights_identity = staticmethod(clearclip_identity)

    def _last(self, x: torch.Tensor, grid: int, last_block: str) -> torch.Tensor:
        if last_block != SELF_SELF:
            return super()._last(x, grid, last_block)
        visual = self.model.visual
        last = visual.transformer.resblocks[-1]
        x = self_self_attention(last.attn, last.ln_1(batch_first(visual.transformer, x)), ("q",))
        return visual.ln_post(x[:, x.shape[1] - grid * grid:])

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.tokens(images, last_block=SELF_SELF)
        return self._dense(tokens, grid)

    def dense_and_token_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = images.shape[-1] // self.patch_size
        trunk = self._trunk(images)
        return self._dense(self._last(trunk, grid, SELF_SELF), grid), _grid(self._last(trunk, grid, "full"), grid)

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
from bench.models._attention import self_self_attention
from bench.models._rewired import RewiredBase


@BASES.register("clearclip", "ClearCLIP: last block as softmax(qqᵀ) attention only, residual and FFN removed")
class ClearClipBase(RewiredBase):
    """:class:`~bench.models.clip.OpenClipBase` with ClearCLIP's last block for the dense (text-aligned) features."""

    suffix = "clearclip"

    def last_block(self, block: torch.nn.Module, x: torch.Tensor, grid: int) -> torch.Tensor:
        return self_self_attention(block.attn, block.ln_1(x), ("q",))

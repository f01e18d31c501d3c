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
from bench.models._attention import self_self_attention
from bench.models._rewired import RewiredBase


@BASES.register("sclip", "SCLIP: last block with softmax(qqᵀ)+softmax(kkᵀ) attention, residual and FFN kept")
class SclipBase(RewiredBase):
    """:class:`~bench.models.clip.OpenClipBase` with SCLIP's last block for the dense (text-aligned) features."""

    suffix = "sclip"

    def last_block(self, block: torch.nn.Module, x: torch.Tensor, grid: int) -> torch.Tensor:
        x = x + block.ls_1(self_self_attention(block.attn, block.ln_1(x), ("q", "k")))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

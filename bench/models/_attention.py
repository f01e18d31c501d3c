"""Self-self attention for the last block of a dense-CLIP base (SCLIP, ClearCLIP): tokens attend to tokens whose
query (or key) is like their own, instead of the query-key attention CLIP was trained with."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def self_self_attention(attn: torch.nn.MultiheadAttention, y: torch.Tensor, paths: tuple[str, ...]) -> torch.Tensor:
    """float ``B×N×W`` (after ``ln_1``) → ``B×N×W``: ``Σ_p softmax(p·pᵀ·d^-½)`` over ``paths`` (``q``, ``k``), per
    head, applied to the values, then ``out_proj``. SCLIP: ``("q", "k")``; ClearCLIP: ``("q",)``."""
    b, n, width = y.shape
    heads = attn.num_heads
    head_dim = width // heads
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # each B×heads×N×d
    chosen = {"q": q, "k": k}
    weights = sum(torch.softmax(chosen[p] @ chosen[p].transpose(-1, -2) * head_dim ** -0.5, dim=-1) for p in paths)
    out = (weights @ v).transpose(1, 2).reshape(b, n, width)
    return attn.out_proj(out)

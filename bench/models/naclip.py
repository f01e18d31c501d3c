"""NACLIP as a base: the last block's attention replaced by key-key similarity plus a neighbourhood prior.

Hajimiri, Ben Ayed, Dolz, "Pay Attention to Your Neighbours: Training-Free Open-Vocabulary Semantic
Segmentation", WACV 2025 (github.com/sinahmr/NACLIP, ``clip/model.py``: ``custom_attn``, ``gaussian_window``,
``get_attention_addition``). In the last block only:

- attention logits are ``k·kᵀ·scale`` (the query is not used) plus ``ω[p, q] = exp(-‖p - q‖² / 2σ²)`` over the
  patches' grid positions, ``σ = 5`` (the authors' default); the class token still attends and is attended to,
  but takes no prior (its row and column of ``ω`` are zero);
- the "reduced architecture": the block's output is the attention output alone (after ``out_proj``): the residual
  connection and the feed-forward branch are both removed.

Left out, as for every base here: their sliding windows, PAMR refinement and prompt set (the suite's inference
protocol and ``text.templates`` apply instead). The memory embedder ``EMBEDDER=clip`` keeps the plain last-layer
tokens (:class:`~bench.models.clip.ClipVisualEmbedder` calls ``tokens(..., "full")``, which this base leaves as
CLIP's block; the dense features ask for ``"value"``, which this base answers with NACLIP's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.models import BASES
from bench.models._rewired import RewiredBase

GAUSSIAN_STD = 5.0  # NACLIP(gaussian_std=5.) in the authors' naclip.py; no config of theirs changes it


def neighbourhood_prior(grid: int, std: float, prefix: int = 1) -> torch.Tensor:
    """float ``L×L`` (``L = prefix + grid²``) additive attention prior: ``exp(-d² / 2σ²)`` for the squared grid
    distance ``d²`` between two patches (row-major order), zero in the rows and columns of the ``prefix`` tokens."""
    ij = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).reshape(2, -1).float()
    d2 = ((ij[:, :, None] - ij[:, None, :]) ** 2).sum(0)
    return F.pad(torch.exp(-d2 / (2 * std**2)), (prefix, 0, prefix, 0))


def neighbour_attention(attn: torch.nn.MultiheadAttention, x: torch.Tensor, grid: int, std: float) -> torch.Tensor:
    """NACLIP's attention on batch-first tokens ``x`` (``B×L×W``, after ``ln_1``; the last ``grid²`` are patches):
    ``softmax(k kᵀ / √d + ω) v`` per head, then ``out_proj``; float ``B×L×W``."""
    b, n, width = x.shape
    heads = attn.num_heads
    _, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    k, v = (t.reshape(b, n, heads, width // heads).transpose(1, 2) for t in (k, v))
    prior = neighbourhood_prior(grid, std, n - grid * grid).to(x.device, x.dtype)
    weights = torch.softmax(k @ k.transpose(-1, -2) * (width // heads) ** -0.5 + prior, dim=-1)
    return attn.out_proj((weights @ v).transpose(1, 2).reshape(b, n, width))


@BASES.register("naclip", "NACLIP: last block as key-key attention + Gaussian neighbourhood prior, no residual/FFN")
class NaclipBase(RewiredBase):
    """:class:`~bench.models.clip.OpenClipBase` with NACLIP's last block for the dense (text-aligned) features."""

    gaussian_std = GAUSSIAN_STD
    suffix = f"naclip(std={GAUSSIAN_STD:g})"

    def last_block(self, block: torch.nn.Module, x: torch.Tensor, grid: int) -> torch.Tensor:
        # The reduced architecture: the attention branch alone, no residual and no FFN (ls_1 is the branch's own
        # layer scale where a model has one, identity in OpenAI CLIP).
        return block.ls_1(neighbour_attention(block.attn, block.ln_1(x), grid, self.gaussian_std))

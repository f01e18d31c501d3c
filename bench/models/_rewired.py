"""Dense-CLIP bases that rewrite the last block of an open_clip ViT (SCLIP, ClearCLIP, NACLIP).

The dense, text-aligned features come from the subclass's :meth:`RewiredBase.last_block`; the memory embedder's
tokens (``EMBEDDER=clip``, ``tokens(..., "full")``) stay CLIP's own last block whatever the base. The base's
identity names the rewiring, so caches keyed by identity never mix its features with MaskCLIP's.
"""

from __future__ import annotations

import torch

from bench.models.clip import OpenClipBase, weights_identity


def batch_first(transformer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Tokens in the transformer's own layout → ``B×N×W`` (open_clip builds some towers sequence first)."""
    return x if getattr(transformer, "batch_first", True) else x.transpose(0, 1)


class RewiredBase(OpenClipBase):
    suffix = ""  # appended to the weights' identity: "+<suffix>"

    def __init__(self, name: str, pretrained: str = "", seed: int = 0) -> None:
        super().__init__(name, pretrained, seed)
        self.identity = self.weights_identity(name, self.pretrained, seed)

    @classmethod
    def weights_identity(cls, name: str, pretrained: str = "", seed: int = 0) -> str:
        return f"{weights_identity(name, pretrained, seed)}+{cls.suffix}"

    def _last(self, x: torch.Tensor, grid: int, last_block: str) -> torch.Tensor:
        """``full``: CLIP's last block (the memory embedder's tokens); otherwise the rewritten one."""
        if last_block == "full":
            return super()._last(x, grid, last_block)
        visual = self.model.visual
        x = self.last_block(visual.transformer.resblocks[-1], batch_first(visual.transformer, x), grid)
        return visual.ln_post(x[:, x.shape[1] - grid * grid:])

    def last_block(self, block: torch.nn.Module, x: torch.Tensor, grid: int) -> torch.Tensor:
        """The rewritten last block on batch-first trunk tokens ``B×N×W`` (the last ``grid²`` are patches)."""
        raise NotImplementedError

"""A residual linear adapter on mask embeddings, trained with cross-entropy against text embeddings."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F


class Adapter(torch.nn.Module):
    """``y = normalise(x + W x + b)``; W and b start at zero, so the untrained adapter is the base model."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(dim, dim)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float ``N×D`` → float ``N×D`` (unit norm)."""
        return F.normalize(x + self.linear(x), dim=-1)


class AdapterTraining(L.LightningModule):
    """Trains an :class:`Adapter` on (embedding, class index) pairs against fixed text embeddings ``C×D``."""

    def __init__(self, adapter: Adapter, text: torch.Tensor, logit_scale: float, lr: float,
                 weight_decay: float) -> None:
        super().__init__()
        self.adapter = adapter
        self.register_buffer("text", text.clone())
        self.logit_scale, self.lr, self.weight_decay = logit_scale, lr, weight_decay
        self._tick: float | None = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.logit_scale * self.adapter(x) @ self.text.T
        loss = F.cross_entropy(logits, y)
        now = time.perf_counter()
        if self._tick is not None:
            self.log("samples/s", len(x) / max(now - self._tick, 1e-9), prog_bar=True, on_step=True)
        self._tick = now
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.adapter.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

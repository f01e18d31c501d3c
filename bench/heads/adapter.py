"""Fine-tuning baselines at evaluation: the pooled base features pass through the trained adapter first."""

from __future__ import annotations

from typing import Any

import torch

from bench.heads.zeroshot import ZeroShotHead
from bench.models import BaseSegmenter


class AdapterHead(ZeroShotHead):
    def __init__(self, base: BaseSegmenter, adapter: torch.nn.Module) -> None:
        super().__init__(base)
        self.adapter = adapter

    def forward(self, label_map: torch.Tensor, base_feats: Any, memory_feats: Any,
                task: int) -> torch.Tensor:
        return self.text_probabilities(self.adapter(self.pooled(label_map, base_feats)), task)

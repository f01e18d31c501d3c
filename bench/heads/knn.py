"""kNN-CLIP at evaluation: retrieval from the memory fused with the base model's distribution."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.fusion import fuse, retrieval_distribution
from bench.heads.zeroshot import ZeroShotHead
from bench.memory import Memory
from bench.models import BaseSegmenter, DenseBackbone
from bench.pooling import pool_regions
from datamodules.vocabulary import Vocabulary


class KnnHead(ZeroShotHead):
    """``settings`` carries ``k``, ``temperature`` (τ), ``threshold`` (T) and ``lam`` (λ), e.g. a KnnConfig."""

    def __init__(self, base: BaseSegmenter, embedder: DenseBackbone, memory: Memory, settings: Any) -> None:
        super().__init__(base)
        self.embedder, self.memory, self.settings = embedder, memory, settings
        self._luts: list[np.ndarray] = []

    def begin(self, vocabularies: Sequence[Vocabulary]) -> None:
        super().begin(vocabularies)
        self._luts = [self._memory_to_local(v) for v in self.vocabularies]

    def end(self) -> None:
        """A sharded memory (:mod:`bench.memory.sharded`) keeps answering the other processes' searches until every
        process has classified its last image (ranks may hold different numbers of images)."""
        finish = getattr(self.memory, "finish_searches", None)
        if finish is not None:
            finish()

    def with_settings(self, settings: Any) -> KnnHead:
        """The same head (memory, text embeddings, lookup tables shared) with other fusion settings."""
        other = copy.copy(self)
        other.settings = settings
        return other

    def with_memory(self, memory: Memory) -> KnnHead:
        """The same head (text embeddings, settings shared) searching another memory; call after :meth:`begin`."""
        other = copy.copy(self)
        other.memory = memory
        other._luts = [other._memory_to_local(v) for v in other.vocabularies]
        return other

    def _memory_to_local(self, vocabulary: Vocabulary) -> np.ndarray:
        """Lookup table from memory class codes to local class ids of the vocabulary (-1 where absent)."""
        local = {name: i for i, name in enumerate(vocabulary.classes)}
        return np.array([local.get(n, -1) for n in self.memory.names] + [-1], dtype=np.int64)

    def forward(self, label_map: torch.Tensor, base_feats: Any, memory_feats: Any,
                task: int) -> torch.Tensor:
        probs = super().forward(label_map, base_feats, None, task)
        if memory_feats is None:
            raise ValueError("the kNN head needs the memory embedder's features")
        num = probs.shape[0]
        queries = F.normalize(pool_regions(memory_feats, label_map, num), dim=1)
        vocabulary = self.vocabularies[task]
        s = self.settings
        scores, ids = self.memory.search(queries.float().cpu().numpy(), s.k, allowed=vocabulary.classes)
        local = torch.from_numpy(self._luts[task][self.memory.label_codes(ids)])
        p_ret, confidence = retrieval_distribution(torch.from_numpy(scores).to(probs), local.to(probs.device),
                                                   len(vocabulary), s.temperature)
        return fuse(probs, p_ret, confidence, s.threshold, s.lam)

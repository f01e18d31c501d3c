"""The base model alone: cosine of each pooled proposal feature with the text embeddings of the vocabulary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bench.models import BaseSegmenter, DenseBackbone
from bench.pooling import pool_regions
from datamodules.vocabulary import Vocabulary


def project_pooled(base: Any, pooled: torch.Tensor) -> torch.Tensor:
    """``base.project_pooled`` where the base has one (FC-CLIP-style bases), else the pooled features as they are."""
    project = getattr(base, "project_pooled", None)
    return pooled if project is None else project(pooled)


class ZeroShotHead(torch.nn.Module):
    """``softmax(logit_scale · cos(pooled base feature, text embedding))`` over the vocabulary's classes."""

    def __init__(self, base: BaseSegmenter) -> None:
        super().__init__()
        self.base = base
        self.embedder: DenseBackbone | None = None  # a head that retrieves sets its memory embedder
        self.vocabularies: list[Vocabulary] = []
        self.text: list[torch.Tensor] = []

    def begin(self, vocabularies: Sequence[Vocabulary]) -> None:
        """Prepare an evaluation of these vocabularies (``task`` below indexes them)."""
        self.vocabularies = list(vocabularies)
        self.text = [self.base.text_embeddings(list(v.classes)) for v in self.vocabularies]

    def end(self) -> None:
        """This process has classified its last image of the evaluation pass (a head whose searches are collective
        across processes waits for the others here, see :meth:`KnnHead.end`)."""

    def pooled(self, label_map: torch.Tensor, base_feats: Any) -> torch.Tensor:
        """L2-normalised float ``Q×D`` base features of the proposals (``Q`` = largest label), in the joint space
        with text (a base whose dense features are not, e.g. a ConvNeXt, projects the pooled vectors)."""
        num = int(label_map.max()) if label_map.numel() else 0
        return F.normalize(project_pooled(self.base, pool_regions(base_feats, label_map, num)), dim=1)

    def text_probabilities(self, pooled: torch.Tensor, task: int) -> torch.Tensor:
        return torch.softmax(self.base.logit_scale * pooled @ self.text[task].T.to(pooled), dim=1)

    def forward(self, label_map: torch.Tensor, base_feats: Any, memory_feats: Any,
                task: int) -> torch.Tensor:
        """label_map: int64 ``H×W`` (0 = uncovered); base_feats: the base's features (a
        :class:`bench.dense.DenseFeatures`, or a float ``D×h×w`` map spanning the image); memory_feats: the
        memory embedder's, likewise, or None. Returns float ``Q×C``, rows summing to 1."""
        return self.text_probabilities(self.pooled(label_map, base_feats), task)

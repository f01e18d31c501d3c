"""Base open-vocabulary segmenters and memory embedders behind small interfaces, found by name.

A *dense backbone* turns a batch of images into a feature map; everything else (mask pooling, retrieval, fusion)
is shared. A *base segmenter* is a dense backbone whose features live in a joint space with text, so that a pooled
mask feature can be classified against text embeddings of a vocabulary.
"""

from __future__ import annotations

from typing import Protocol

import torch

from bench.errors import ConfigError


class DenseBackbone(Protocol):
    """Images in, a dense feature map out. ``identity`` names the architecture *and* its weights."""

    identity: str
    dim: int

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``3×H×W`` → float ``3×S×S``, resized and normalised as the backbone expects."""
        ...

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """float ``B×3×S×S`` → float ``B×D×h×w`` (not normalised)."""
        ...


class BaseSegmenter(DenseBackbone, Protocol):
    """A dense backbone aligned with text: classify pooled features against a vocabulary."""

    logit_scale: float

    def text_embeddings(self, class_names: list[str]) -> torch.Tensor:
        """L2-normalised float ``C×D`` embeddings of the class names (prompt-ensembled)."""
        ...


def build_base(name: str, pretrained: str = "", seed: int = 0) -> BaseSegmenter:
    from bench.models.clip import OpenClipBase

    return OpenClipBase(name, pretrained, seed)


def build_embedder(kind: str, base: BaseSegmenter, name: str = "", pretrained: str = "",
                   image_size: int | None = None, seed: int = 0) -> DenseBackbone:
    """The memory embedder: ``clip`` (the base model's visual tower) or ``dinov2`` (a timm DINOv2 ViT)."""
    if kind == "clip":
        from bench.models.clip import ClipVisualEmbedder

        return ClipVisualEmbedder(base)
    if kind == "dinov2":
        from bench.models.dinov2 import Dinov2Embedder

        return Dinov2Embedder(name or "vit_small_patch14_dinov2", pretrained, image_size, seed)
    raise ConfigError(f"unknown embedder.kind {kind!r}; expected one of: clip, dinov2")

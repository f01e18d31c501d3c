"""Base open-vocabulary segmenters and memory embedders behind small interfaces, found by name.

Bases (``base.kind``) and memory embedders (``embedder.kind``) are registry entries: a new one is a module in
this package with ``@BASES.register("name")`` on a class built as ``Cls(name, pretrained, seed)`` (and a static
``weights_identity`` with the same arguments), or ``@EMBEDDERS.register("name")`` on a factory
``(base, name=, pretrained=, image_size=, seed=) -> backbone``.

A *dense backbone* turns a batch of images into a feature map; everything else (mask pooling, retrieval, fusion)
is shared. A *base segmenter* is a dense backbone whose features live in a joint space with text, so that a pooled
mask feature can be classified against text embeddings of a vocabulary.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from bench.errors import ConfigError
from datamodules.registry import Registry


class DenseBackbone(Protocol):
    """Images in, a dense feature map out. ``identity`` names the architecture *and* its weights.

    Optional: ``normalize`` (float ``3×H×W`` in [0, 1] → normalised; ``slide`` inference needs it),
    ``patch_size``, and ``input_prep`` (a :class:`bench.inputs.InputPrep` through which ``preprocess`` and
    ``normalize`` are defined; with it the loader's workers make the inputs, see :mod:`bench.inputs`)."""

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


BASES: Registry[Any] = Registry("base", "base.kind", ["bench.models"], ConfigError)
EMBEDDERS: Registry[Any] = Registry("memory embedder", "embedder.kind", ["bench.models"], ConfigError)


def build_base(name: str, pretrained: str = "", seed: int = 0, kind: str = "maskclip", templates: str = "short",
               synonyms: bool = False) -> BaseSegmenter:
    """The registered base ``kind`` on model ``name`` with weights ``pretrained`` (``seed`` for random ones).

    ``templates`` / ``synonyms`` (``text.*``) say how its :meth:`~BaseSegmenter.text_embeddings` prompt class
    names; they are set on the base, so every user of its text embeddings (heads, baselines, sweeps) gets the
    same. A base without ``set_prompts`` embeds names its own way and takes only the defaults.
    """
    base = BASES.get(kind)(name, pretrained, seed)
    if (templates, synonyms) != ("short", False):
        if not hasattr(base, "set_prompts"):
            raise ConfigError(f"base.kind {kind!r} does not take text.templates / text.synonyms (got "
                              f"templates={templates}, synonyms={synonyms}); leave them at short / false")
        base.set_prompts(templates, synonyms)
    return base


def base_weights_identity(kind: str, name: str, pretrained: str = "", seed: int = 0) -> str:
    """What a base's record names as its weights, without building it (to refuse a run folder made with others)."""
    return BASES.get(kind).weights_identity(name, pretrained, seed)


def build_embedder(kind: str, base: BaseSegmenter, name: str = "", pretrained: str = "",
                   image_size: int | None = None, seed: int = 0) -> DenseBackbone:
    """The registered memory embedder ``kind`` (``clip``: the base model's visual tower; ``dinov2``: timm)."""
    return EMBEDDERS.get(kind)(base, name=name, pretrained=pretrained, image_size=image_size, seed=seed)

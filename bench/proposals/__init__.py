"""Mask proposal generators, one module each, found by name (``proposals.kind``).

A proposal set for one image is a label map: int64 ``H×W`` at the image's original size, 0 = not covered,
``k`` = the k-th proposal (1-based). Non-overlapping proposals cover what the methods here need (ground-truth
segments, superpixels); soft overlapping query masks can come with a second representation later.

A proposer is a callable ``sample -> label map`` built from the run's ``proposals`` config. It declares whether
its regions are *instances* (one region per object, so panoptic inference keeps them apart) or fragments that
panoptic inference joins per class, and where it runs: ``"loader"`` (CPU, may run in DataLoader workers) or
``"device"`` (a model, batched on the run's device). Adding one is a new module here with
``@PROPOSERS.register("name")`` on a class ``Cls(cfg) -> proposer``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from bench.errors import ConfigError
from bench.pooling import pool_features
from datamodules.registry import Registry

__all__ = ["PROPOSERS", "Proposer", "build_proposer", "pool_features"]


class Proposer(Protocol):
    instances: bool  # regions are whole objects (ground truth, instance masks); else fragments joined per class
    runs_on: str  # "loader" (CPU, per sample) or "device" (a model on the run's device)

    def __call__(self, sample: dict[str, Any]) -> torch.Tensor:
        """int64 ``H×W`` label map of the sample's image, 0 = not covered."""
        ...


PROPOSERS: Registry[Any] = Registry("proposer", "proposals.kind", ["bench.proposals"], ConfigError)


def build_proposer(kind: str, n_segments: int = 64, compactness: float = 10.0, **options: Any) -> Proposer:
    """The registered proposer ``kind`` with its settings (those it does not use are ignored)."""
    return PROPOSERS.get(kind)(n_segments=n_segments, compactness=compactness, **options)

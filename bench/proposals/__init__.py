"""Mask proposal generators, one module each, found by name (``proposals.kind``).

A proposal set for one image is a label map: int64 ``H×W`` at the image's original size, 0 = not covered,
``k`` = the k-th proposal (1-based). Non-overlapping proposals cover what the methods here need (ground-truth
segments, superpixels); soft overlapping query masks can come with a second representation later.

A proposer is a callable ``sample -> label map`` built from the run's ``proposals`` config. It declares whether
its regions are *instances* (one region per object, so panoptic inference keeps them apart) or fragments that
panoptic inference joins per class, and where it runs: ``"loader"`` (CPU, may run in DataLoader workers) or
``"device"`` (a model, batched on the run's device). A ``"loader"`` proposer runs in the DataLoader workers of
the evaluation (:func:`loader_transform`, given to the DataModule as its ``eval_transform``), so the main process
only reads ``sample["proposals"]``; it must therefore be picklable (a plain class: workers may be spawned).
Adding one is a new module here with ``@PROPOSERS.register("name")`` on a class ``Cls(cfg) -> proposer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from bench.errors import ConfigError
from bench.pooling import pool_features
from datamodules.registry import Registry

__all__ = ["PROPOSERS", "Proposer", "WithProposals", "build_proposer", "loader_transform", "pool_features"]


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


class WithProposals:
    """A per-sample transform for DataLoader workers: the sample with ``proposals`` (int64 ``H×W``) added.
    A top-level class, not a closure, so that spawned workers can unpickle it."""

    def __init__(self, proposer: Proposer) -> None:
        self.proposer = proposer

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {**sample, "proposals": self.proposer(sample)}


def loader_transform(proposer: Proposer) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """The eval samples' transform that computes a ``"loader"`` proposer's proposals in the DataLoader workers;
    None for a ``"device"`` proposer (the LightningModule calls it on the batch)."""
    return WithProposals(proposer) if proposer.runs_on == "loader" else None

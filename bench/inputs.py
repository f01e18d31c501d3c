"""Model inputs: a uint8 image resized and normalised as a backbone takes it, and the loader transform that does
this in the DataLoader's workers, so that the main process only runs the forward passes.

A backbone that states its preprocessing as an :class:`InputPrep` (``backbone.input_prep``: square input side,
per-channel mean and std, patch size; a small picklable value) defines its ``preprocess`` / ``normalize`` through
it, so inputs made in a worker are the ones the backbone would make itself (bit for bit: the same functions on the
same values). :func:`bench.dense.dense_features` takes a sample's prepared inputs when their key matches and makes
them itself otherwise (a backbone without ``input_prep``, or a sample read without the transform).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bench.pooling import region_cells


def resize_normalize(image: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``3×H×W`` → float ``3×size×size``: bilinear (antialiased) resize, scale to [0,1], normalise."""
    x = image.float().unsqueeze(0) / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x[0], mean, std)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """float ``3×H×W`` in [0, 1] → ``(x - mean) / std`` per channel, on ``x``'s device."""
    return ((x - mean.to(x.device).view(3, 1, 1)) / std.to(x.device).view(3, 1, 1)).contiguous()


@dataclass(frozen=True)
class InputPrep:
    """How a backbone turns a uint8 image into its input: ``size`` (square input side of ``whole``), ``mean`` and
    ``std`` (per channel, of images scaled to [0, 1]), ``patch_size`` (windows are padded to a multiple of it)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int = 1

    @classmethod
    def of(cls, size: int, mean: Any, std: Any, patch_size: int = 1) -> InputPrep:
        """From tensors or sequences (float32 values survive the round trip through Python floats exactly)."""
        return cls(int(size), _floats(mean), _floats(std), int(patch_size))

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``3×H×W`` → float ``3×size×size`` (the ``whole`` input)."""
        return resize_normalize(image, self.size, torch.tensor(self.mean), torch.tensor(self.std))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float ``3×H×W`` in [0, 1] → normalised."""
        return normalize(x, torch.tensor(self.mean), torch.tensor(self.std))

    @property
    def grid(self) -> tuple[int, int]:
        """The feature grid of the ``whole`` input (a ViT's patch grid)."""
        return self.size // self.patch_size, self.size // self.patch_size


def _floats(values: Any) -> Any:
    return tuple(float(x) for x in (values.tolist() if isinstance(values, torch.Tensor) else values))


def input_key(backbone: Any, resized: tuple[int, int] | None) -> tuple[InputPrep, Any] | None:
    """Where a sample's prepared input for ``backbone`` is kept: its prep and the resized size of ``slide`` (None
    for ``whole``); None for a backbone that states no prep (its inputs are always made in the main process)."""
    prep = getattr(backbone, "input_prep", None)
    return None if prep is None else (prep, resized)


def model_input(backbone: Any, image: torch.Tensor, resized: tuple[int, int] | None) -> torch.Tensor:
    """float ``3×h×w``: ``whole`` (``resized`` None): the backbone's ``preprocess``; ``slide``: the image resized
    to ``resized`` (bilinear without antialiasing, as the harness's cv2 resize) and normalised, before windows are
    cut from it."""
    if resized is None:
        return backbone.preprocess(image)
    x = image.float().unsqueeze(0) / 255.0
    if tuple(x.shape[-2:]) != resized:
        x = F.interpolate(x, size=resized, mode="bilinear", align_corners=False)
    return backbone.normalize(x[0])


class PreparedInputs:
    """Loader transform: adds ``sample["inputs"]`` = ``{input_key: model input}`` for each prep, for the ``whole``
    protocol. With ``cells`` (the adapt pass of a memory writer, which reads nothing else of the maps), it also
    counts the pixels of each ground-truth segment in each cell of each prep's grid
    (``sample["segment_cells"][grid]``: :func:`bench.pooling.region_cells`, what
    :meth:`bench.dense.DenseFeatures.segments` pools with) and drops the full-size label maps (``segments``,
    ``semantic``), which the main process would otherwise receive from the worker only to count them. Picklable
    (a plain class of plain values), so spawned workers can run it."""

    def __init__(self, preps: list[InputPrep], cells: bool = False) -> None:
        self.preps, self.cells = preps, cells

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = {**sample, "inputs": {(prep, None): model_input(prep, sample["image"], None) for prep in self.preps}}
        if self.cells:
            regions = len(sample["segment_classes"])
            grids = dict.fromkeys(prep.grid for prep in self.preps)  # counted once per grid
            out["segment_cells"] = {grid: region_cells(sample["segments"], regions, *grid) for grid in grids}
            del out["segments"]
            out.pop("semantic", None)
        return out


def loader_inputs(backbones: list[Any], protocol: Any, cells: bool = False) -> PreparedInputs | None:
    """The transform that prepares the inputs of ``backbones`` in the loader's workers (and with ``cells`` the
    segments' cell counts: :class:`PreparedInputs`); None when none of them states its prep, and under ``slide``:
    torch's bilinear resize without antialiasing (the harness's) differs in the last bit between thread counts
    (1.8e-7 measured, 1 thread in a worker vs 2 here) where the antialiased one of ``whole`` does not, and inputs
    from a worker must be the ones made here."""
    if protocol.mode != "whole":
        return None
    preps = list(dict.fromkeys(p for b in backbones if (p := getattr(b, "input_prep", None)) is not None))
    return PreparedInputs(preps, cells) if preps else None

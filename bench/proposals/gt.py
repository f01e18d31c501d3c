"""The oracle: each ground-truth segment (thing instance or stuff region) is a proposal."""

from __future__ import annotations

from typing import Any

import torch

from bench.proposals import PROPOSERS


@PROPOSERS.register("gt")
class GroundTruth:
    """ground-truth segments (the oracle: isolates classification from mask quality)"""

    instances, runs_on = True, "loader"

    def __init__(self, **_: Any) -> None:
        pass

    def __call__(self, sample: dict[str, Any]) -> torch.Tensor:
        return sample["segments"].long()

"""The base open-vocabulary model alone: the lower bound, nothing adapts."""

from __future__ import annotations

import torch

from bench.heads import ZeroShotHead
from bench.methods import METHODS, Method, RunContext


@METHODS.register("zeroshot")
class ZeroShot(Method):
    name = "zeroshot"
    description = "the base open-vocabulary model alone (lower bound, nothing adapts)"

    def setup(self, ctx: RunContext, steps_done: int) -> None:
        self._head = ZeroShotHead(ctx.base)

    @property
    def head(self) -> torch.nn.Module:
        return self._head

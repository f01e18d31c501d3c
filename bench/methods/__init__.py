"""Methods: how a step adapts, the head that evaluates, and the state kept. One registry entry each.

A method sets up its state at the start of a run (restoring it after the last finished step when resuming),
adapts once per task, gives the :mod:`head <bench.heads>` that evaluation runs, and reports the size of what it
keeps (memory entries or trainable parameters). Adding one is a module in this package (or in
:mod:`bench.baselines`) with ``@METHODS.register("name")`` on a :class:`Method` subclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.errors import ConfigError
from datamodules.registry import Registry


@dataclass
class RunContext:
    """What a method needs from the run: config, sequence, base model, data, output folder, a trainer factory."""

    cfg: Any
    spec: Any
    base: Any
    dm: Any
    out: Path
    trainer: Any  # callable(**kwargs) -> a configured lightning Trainer


class Method:
    name = ""
    description = ""
    distributed = True  # runs with devices > 1 and writes the same record as with one process
    # The run's SEED changes its result (training order, initialisation); `compare seeds=` runs such a method once
    # per seed and a seedless one once (knn and zeroshot give the same record bit for bit under any SEED).
    uses_seed = False

    def setup(self, ctx: RunContext, steps_done: int) -> None:
        """Build the method's state, restored from ``steps_done`` finished steps (0 = fresh)."""

    @property
    def head(self) -> torch.nn.Module:
        """The classifier head evaluation runs (:mod:`bench.heads`); valid after :meth:`setup`."""
        raise NotImplementedError

    def adapt(self, ctx: RunContext, t: int) -> dict[str, Any]:
        """Adapt to task ``t`` and save what a resumed run needs; returns statistics for the record."""
        return {}

    def state_size(self, ctx: RunContext) -> dict[str, int]:
        return {}

    def memory_classes(self, ctx: RunContext) -> list[str]:
        """The classes the method holds examples of after its last step (a memory's entries); none by default."""
        return []

    def index_report(self, ctx: RunContext) -> dict[str, Any]:
        """What the method's memory index is and did during the last step (none by default)."""
        return {}

    def state_path(self, out: Path, step: int) -> Path | None:
        """The file or folder that :meth:`setup` reads to resume after ``step`` finished steps (None: no state).
        A run whose last step's state is gone recomputes that step (:mod:`bench.resume`)."""
        return None


METHODS: Registry[type[Method]] = Registry("method", "METHOD", ["bench.methods", "bench.baselines"], ConfigError)


def methods() -> dict[str, Method]:
    """A fresh instance of every registered method, by name."""
    return {name: entry.obj() for name, entry in METHODS.entries().items()}


def get_method(name: str) -> Method:
    return METHODS.get(name)()

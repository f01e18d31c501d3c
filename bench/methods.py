"""Methods: how a step adapts. Each is a registry entry with its own behaviour, never a branch on its name.

A method sets up its state at the start of a run (restoring it after the last finished step when resuming),
adapts once per task, and reports the size of what it keeps (memory entries or trainable parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.distributed import is_rank_zero
from bench.errors import ConfigError


@dataclass
class RunContext:
    """What a method needs from the run: config, sequence, the LightningModule, data, output folder."""

    cfg: Any
    spec: Any
    module: Any
    dm: Any
    out: Path
    trainer: Any  # callable(**kwargs) -> a configured lightning Trainer


class Method:
    name = ""
    description = ""
    distributed = True  # runs with devices > 1 and writes the same record as with one process

    def setup(self, ctx: RunContext, steps_done: int) -> None:
        """Build the method's state, restored from ``steps_done`` finished steps (0 = fresh)."""

    def adapt(self, ctx: RunContext, t: int) -> dict[str, Any]:
        """Adapt to task ``t`` and save what a resumed run needs; returns statistics for the record."""
        return {}

    def state_size(self, ctx: RunContext) -> dict[str, int]:
        return {}


class ZeroShot(Method):
    name = "zeroshot"
    description = "the base open-vocabulary model alone (lower bound, nothing adapts)"


class KnnMemory(Method):
    name = "knn"
    description = "kNN-CLIP: ground-truth masks of each task embedded into a memory, retrieval fused with the base"

    def setup(self, ctx: RunContext, steps_done: int) -> None:
        from bench.memory import IndexSpec, Memory
        from bench.models import build_embedder

        cfg, module = ctx.cfg, ctx.module
        embedder = build_embedder(cfg.embedder.kind, module.base, cfg.embedder.name,
                                  image_size=cfg.embedder.image_size or None, seed=cfg.model.seed)
        spec = IndexSpec.from_config(cfg.knn)
        memory = (Memory.load(ctx.out / "memory" / f"step-{steps_done}", embedder.identity, embedder.dim, spec)
                  if steps_done else Memory(embedder.dim, embedder.identity, spec))
        module.embedder, module.memory = embedder, memory

    def adapt(self, ctx: RunContext, t: int) -> dict[str, Any]:
        memory = ctx.module.memory
        before = len(memory)
        ctx.module.begin_adapt(ctx.spec.tasks[t].vocabulary)
        ctx.trainer().predict(ctx.module, datamodule=ctx.dm, return_predictions=False)
        if is_rank_zero():  # every rank holds the same memory (bench.module.on_predict_epoch_end)
            memory.save(ctx.out / "memory" / f"step-{t + 1}")
        return {"adapt_images": len(ctx.dm.adapt_dataset(t)), "memory_added": len(memory) - before}

    def state_size(self, ctx: RunContext) -> dict[str, int]:
        memory = ctx.module.memory
        return {"memory_entries": len(memory), "memory_bytes": memory.nbytes}


def _build_methods() -> dict[str, Method]:
    from bench.baselines.methods import AdapterFinetune

    methods: list[Method] = [
        KnnMemory(), ZeroShot(),
        AdapterFinetune("finetune", "sequential fine-tuning of a mask-embedding adapter (forgets)"),
        AdapterFinetune("replay", "fine-tuning with a small exemplar buffer of earlier tasks", replay=True),
        AdapterFinetune("joint", "fine-tuning on all tasks seen so far at once (upper bound of fine-tuning)",
                        joint=True),
    ]
    return {m.name: m for m in methods}


def methods() -> dict[str, Method]:
    return _build_methods()


def get_method(name: str) -> Method:
    known = methods()
    if name not in known:
        raise ConfigError(f"unknown METHOD {name!r}; known methods: {', '.join(known)}")
    return known[name]

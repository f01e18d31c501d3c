"""kNN-CLIP: each task's ground-truth segments embedded into a memory in one no-gradient pass; at evaluation,
retrieval from the memory fused with the base model (:class:`bench.heads.KnnHead`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from bench.dense import WHOLE
from bench.distributed import gather_in_shard_order, is_rank_zero, world_size
from bench.heads import KnnHead
from bench.memory import Memory
from bench.methods import METHODS, Method, RunContext
from bench.models import DenseBackbone
from bench.module import dense_batch
from datamodules.vocabulary import Vocabulary


class MemoryWriter(L.LightningModule):
    """The adapt pass (``trainer.predict``, inference mode): every non-crowd ground-truth segment of the task's
    adapt split, mask-pooled from the embedder's features, goes into the memory with its class name."""

    def __init__(self, embedder: DenseBackbone, memory: Memory, vocabulary: Vocabulary, protocol: Any = WHOLE,
                 input_size: int | None = None) -> None:
        """``protocol``: the task's inference protocol (the features evaluation will pool); ``input_size``: the
        base model's input size, which sets slide windows by default."""
        super().__init__()
        self.embedder, self.memory, self.vocabulary = embedder, memory, vocabulary
        self.protocol, self.input_size = protocol, input_size
        self._pending: list[tuple[np.ndarray, list[str]]] = []  # DDP: this rank's share

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> int:
        features = dense_batch(self.embedder, batch, self.protocol, self.input_size)
        samples = []  # per sample: (unit embeddings of its segments, their class names)
        for sample, feats in zip(batch, features):
            classes, crowd = sample["segment_classes"], sample["segment_iscrowd"]
            pooled = feats.pool(sample["segments"], len(classes))
            keep = ~crowd & (torch.bincount(sample["segments"].flatten(), minlength=len(classes) + 1)[1:] > 0)
            samples.append((F.normalize(pooled[keep], dim=1).float().cpu().numpy(),
                            [self.vocabulary.classes[c] for c in classes[keep].tolist()]))
        if world_size() > 1:  # added once every rank's share is known, see on_predict_epoch_end
            self._pending += samples
        else:
            self._add(samples)
        return sum(len(names) for _, names in samples)

    def _add(self, samples: list[tuple[np.ndarray, list[str]]]) -> None:
        names = [n for _, sample_names in samples for n in sample_names]
        if names:
            self.memory.add(np.concatenate([e for e, _ in samples]), names)

    def on_predict_epoch_end(self) -> None:
        """Under DDP: every rank adds every rank's segments, in the order and in the batches one process would
        (sample order restored from the shard layout), so all ranks search the same memory as a 1-process run."""
        if world_size() > 1:
            merged, self._pending = gather_in_shard_order(self._pending), []
            size = self.trainer.datamodule.batch_size
            for start in range(0, len(merged), size):
                self._add(merged[start:start + size])


@METHODS.register("knn")
class KnnMemory(Method):
    name = "knn"
    description = "kNN-CLIP: ground-truth masks of each task embedded into a memory, retrieval fused with the base"

    def setup(self, ctx: RunContext, steps_done: int) -> None:
        from bench.memory import IndexSpec
        from bench.models import build_embedder

        cfg = ctx.cfg
        embedder = build_embedder(cfg.embedder.kind, ctx.base, cfg.embedder.name, cfg.embedder.pretrained,
                                  image_size=cfg.embedder.image_size or None, seed=cfg.model.seed)
        spec = IndexSpec.from_config(cfg.knn)
        memory = (Memory.load(self.state_path(ctx.out, steps_done), embedder.identity, embedder.dim, spec)
                  if steps_done else Memory(embedder.dim, embedder.identity, spec))
        self._head = KnnHead(ctx.base, embedder, memory, cfg.knn)

    @property
    def head(self) -> KnnHead:
        return self._head

    def adapt(self, ctx: RunContext, t: int) -> dict[str, Any]:
        memory = self._head.memory
        before = len(memory)
        from bench.config import task_inference

        task = ctx.spec.tasks[t]
        writer = MemoryWriter(self._head.embedder, memory, task.vocabulary, task_inference(ctx.cfg, task),
                              ctx.base.image_size)
        ctx.trainer().predict(writer, datamodule=ctx.dm, return_predictions=False)
        if is_rank_zero():  # every rank holds the same memory (MemoryWriter.on_predict_epoch_end)
            memory.save(self.state_path(ctx.out, t + 1))
        return {"adapt_images": len(ctx.dm.adapt_dataset(t)), "memory_added": len(memory) - before}

    def state_path(self, out: Path, step: int) -> Path:
        return out / "memory" / f"step-{step}"

    def memory_classes(self, ctx: RunContext) -> list[str]:
        return list(self._head.memory.names)

    def state_size(self, ctx: RunContext) -> dict[str, int]:
        memory = self._head.memory
        return {"memory_entries": len(memory), "memory_bytes": memory.nbytes}

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
from bench.errors import ConfigError, MemoryMismatchError
from bench.heads import KnnHead
from bench.inputs import PreparedInputs, loader_inputs
from bench.memory import Memory
from bench.memory.budget import Reservoir, keep_entries
from bench.memory.sharded import ShardedMemory, is_sharded
from bench.methods import METHODS, Method, RunContext
from bench.models import DenseBackbone
from bench.module import dense_batch
from datamodules.vocabulary import Vocabulary


class MemoryWriter(L.LightningModule):
    """The adapt pass (``trainer.predict``, inference mode): every non-crowd ground-truth segment of the task's
    adapt split, mask-pooled from the embedder's features, goes into the memory with its class name (with a
    budget, those its reservoir keeps: :mod:`bench.memory.budget`)."""

    def __init__(self, embedder: DenseBackbone, memory: Memory | ShardedMemory, vocabulary: Vocabulary,
                 protocol: Any = WHOLE, input_size: int | None = None, reservoir: Reservoir | None = None,
                 step: int = 0) -> None:
        """``protocol``: the task's inference protocol (the features evaluation will pool); ``input_size``: the
        base model's input size, which sets slide windows by default; ``reservoir``: the memory budget, applied
        to step ``step``'s segments once the pass is done."""
        super().__init__()
        self.embedder, self.memory, self.vocabulary = embedder, memory, vocabulary
        self.protocol, self.input_size = protocol, input_size
        self.reservoir, self.step = reservoir, step
        self.added = 0  # entries that entered the memory
        self._pending: list[tuple[np.ndarray, list[str]]] = []  # DDP or a budget: this rank's share

    def loader_transform(self, device: torch.device | str = "cpu") -> PreparedInputs | None:
        """The adapt samples' transform that makes the embedder's inputs in the loader's workers (identical to
        those made here: :mod:`bench.inputs`), so the main process only runs the forward, pooling and adds. None
        for a pass on another ``device``: there the resize runs on the batch as moved to the device, as in
        evaluation, and a CPU resize in a worker would round differently. The workers also count the segments'
        pixels per cell of the embedder's grid, so that the full-size label maps stay there."""
        if torch.device(device).type != "cpu":
            return None
        return loader_inputs([self.embedder], self.protocol, cells=True)

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> int:
        features = dense_batch(self.embedder, batch, self.protocol, self.input_size)
        samples = []  # per sample: (unit embeddings of its segments, their class names)
        for sample, feats in zip(batch, features):
            pooled, classes = feats.segments(sample)
            samples.append((F.normalize(pooled, dim=1).float().cpu().numpy(),
                            [self.vocabulary.classes[c] for c in classes.tolist()]))
        if world_size() > 1 or self.reservoir is not None:  # added once the whole split is known (epoch end)
            self._pending += samples
        else:
            self._add(samples)
        return sum(len(names) for _, names in samples)

    def _add(self, samples: list[tuple[np.ndarray, list[str]]]) -> None:
        names = [n for _, sample_names in samples for n in sample_names]
        if names:
            self.memory.add(np.concatenate([e for e, _ in samples]), names)
            self.added += len(names)

    def on_predict_epoch_end(self) -> None:
        """Under DDP: every rank adds every rank's segments, in the order and in the batches one process would
        (sample order restored from the shard layout), so all ranks search the same memory as a 1-process run (a
        sharded memory indexes its part of each batch). With a budget, the reservoir first decides which old
        entries leave and which new segments enter, over the segments in that same order."""
        if world_size() == 1 and self.reservoir is None:
            return
        merged, self._pending = gather_in_shard_order(self._pending), []
        if self.reservoir is not None:
            merged = self._budget(merged)
        size = self.trainer.datamodule.batch_size
        for start in range(0, len(merged), size):
            self._add(merged[start:start + size])

    def _budget(self, samples: list[tuple[np.ndarray, list[str]]]) -> list[tuple[np.ndarray, list[str]]]:
        """Drop the old entries the reservoir lets go; the samples cut to the segments it keeps."""
        names = [n for _, sample_names in samples for n in sample_names]
        memory = self.memory
        keep_old, keep_new = self.reservoir.plan(self.step, memory.names, memory.labels, names)
        if isinstance(memory, ShardedMemory):
            memory.keep(keep_old)
        else:
            keep_entries(memory, keep_old)
        out, start = [], 0
        for embeddings, sample_names in samples:
            keep = keep_new[start:start + len(sample_names)]
            start += len(sample_names)
            out.append((embeddings[keep], [n for n, k in zip(sample_names, keep) if k]))
        return out


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
        saved = self.state_path(ctx.out, steps_done)
        self._sharded = sharded(cfg)
        if steps_done and is_sharded(saved) != self._sharded:
            raise MemoryMismatchError(f"{saved}: the memory was saved {'in shards' if is_sharded(saved) else 'whole'}"
                                      f", but this run has knn.shard={cfg.knn.shard} with {_processes(cfg)} "
                                      "process(es): resume with the knn.shard and process count it was saved with")
        kind = ShardedMemory if self._sharded else Memory
        lists = ctx.out / "memory" if spec.on_disk else None  # knn.on_disk: the working lists next to the run
        memory = (kind.load(saved, embedder.identity, embedder.dim, spec, lists_dir=lists) if steps_done
                  else kind(embedder.dim, embedder.identity, spec, lists_dir=lists))
        self._reservoir = None
        if cfg.knn.max_per_class or cfg.knn.max_entries:
            if spec.kind == "hnsw":
                raise ConfigError("knn.max_per_class / knn.max_entries remove entries from the memory as the budget "
                                  "requires, which an HNSW graph cannot do: use knn.index=flat, flat-fp16, ivf-flat, "
                                  "ivf-pq or auto, or set both to 0")
            self._reservoir = (Reservoir.load(saved, cfg.seed, cfg.knn.max_per_class, cfg.knn.max_entries, len(memory))
                               if steps_done else Reservoir(cfg.seed, cfg.knn.max_per_class, cfg.knn.max_entries))
        self._head = KnnHead(ctx.base, embedder, memory, cfg.knn)

    @property
    def head(self) -> KnnHead:
        return self._head

    def adapt(self, ctx: RunContext, t: int) -> dict[str, Any]:
        from bench.config import task_inference

        memory = self._head.memory
        task = ctx.spec.tasks[t]
        writer = MemoryWriter(self._head.embedder, memory, task.vocabulary, task_inference(ctx.cfg, task),
                              ctx.base.image_size, self._reservoir, t)
        trainer = ctx.trainer()
        ctx.dm.adapt_transform = writer.loader_transform(trainer.strategy.root_device)
        try:
            trainer.predict(writer, datamodule=ctx.dm, return_predictions=False)
        finally:
            ctx.dm.adapt_transform = None
        path = self.state_path(ctx.out, t + 1)
        # sharded: every rank writes its shard; whole: every rank holds the same memory
        # (MemoryWriter.on_predict_epoch_end), rank 0 writes it
        if self._sharded or is_rank_zero():
            memory.save(path)
        if self._reservoir is not None and is_rank_zero():
            self._reservoir.save(path)
        return {"adapt_images": len(ctx.dm.adapt_dataset(t)), "memory_added": writer.added}

    def state_path(self, out: Path, step: int) -> Path:
        return out / "memory" / f"step-{step}"

    def memory_classes(self, ctx: RunContext) -> list[str]:
        memory = self._head.memory
        held = set(np.unique(memory.labels).tolist())  # a budget may have removed every entry of a class
        return [name for code, name in enumerate(memory.names) if code in held]

    def index_report(self, ctx: RunContext) -> dict[str, Any]:
        return self._head.memory.index_report()

    def state_size(self, ctx: RunContext) -> dict[str, int]:
        memory = self._head.memory  # sharded: totals over the processes (collectives, run on every rank)
        out = {"memory_entries": len(memory), "memory_bytes": memory.nbytes}
        if self._reservoir is not None:
            out["memory_dropped"] = self._reservoir.dropped
        return out


def _processes(cfg: Any) -> int:
    return cfg.devices * cfg.num_nodes


def sharded(cfg: Any) -> bool:
    """Whether the run's memory is split across its processes: ``knn.shard``, or when unset, more than one."""
    return _processes(cfg) > 1 if cfg.knn.shard is None else bool(cfg.knn.shard)

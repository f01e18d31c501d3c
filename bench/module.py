"""The LightningModule: *adapt* fills the memory in one no-gradient pass; *evaluate* scores each vocabulary."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from bench.config import KnnConfig
from bench.distributed import gather_in_shard_order, world_size
from bench.fusion import fuse, retrieval_distribution
from bench.inference import panoptic_from_proposals, semantic_from_proposals
from bench.memory import Memory
from bench.metrics import MeanIoU, PanopticQuality
from bench.models import BaseSegmenter, DenseBackbone
from bench.proposals import Proposer, ground_truth, pool_features
from datamodules.contract import IGNORE_INDEX
from datamodules.vocabulary import Vocabulary


def dense_batch(backbone: DenseBackbone, batch: list[dict[str, Any]]) -> torch.Tensor:
    """float ``B×D×h×w`` features of a list of samples, each resized by the backbone's own transform."""
    images = torch.stack([backbone.preprocess(s["image"]) for s in batch])
    return backbone.dense_features(images)


class ContinualSegmenter(L.LightningModule):
    def __init__(self, base: BaseSegmenter, proposer: Proposer, embedder: DenseBackbone | None = None,
                 memory: Memory | None = None, knn: KnnConfig | None = None) -> None:
        super().__init__()
        self.base, self.embedder, self.memory = base, embedder, memory
        self.proposer, self.knn = proposer, knn or KnnConfig()
        self.adapter: torch.nn.Module | None = None  # fine-tuning baselines: maps pooled base embeddings
        self.adapt_vocabulary: Vocabulary | None = None
        self.eval_vocabularies: list[Vocabulary] = []
        self.text: list[torch.Tensor] = []
        self.metrics = torch.nn.ModuleList()
        self.pq_metrics = torch.nn.ModuleList()
        self.results: list[dict[str, torch.Tensor]] = []
        self.pq_results: list[dict[str, Any] | None] = []
        self.proposals_are_instances = proposer is ground_truth
        self._pending: list[tuple[np.ndarray, list[str]]] = []  # DDP adapt: this rank's share

    # -- adapt: one pass, no gradients, ground-truth segments into the memory -------------------------------------
    def begin_adapt(self, vocabulary: Vocabulary) -> None:
        if self.memory is None or self.embedder is None:
            raise RuntimeError("adapt needs a memory and an embedder")
        self.adapt_vocabulary = vocabulary

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> int:
        assert self.adapt_vocabulary is not None and self.memory is not None
        features = dense_batch(self.embedder, batch)
        samples = []  # per sample: (unit embeddings of its segments, their class names)
        for sample, feats in zip(batch, features):
            classes, crowd = sample["segment_classes"], sample["segment_iscrowd"]
            pooled = pool_features(feats, sample["segments"], len(classes))
            keep = ~crowd & (torch.bincount(sample["segments"].flatten(), minlength=len(classes) + 1)[1:] > 0)
            samples.append((F.normalize(pooled[keep], dim=1).float().cpu().numpy(),
                            [self.adapt_vocabulary.classes[c] for c in classes[keep].tolist()]))
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

    # -- evaluate: every vocabulary seen so far, each with its own metric -----------------------------------------
    def begin_eval(self, vocabularies: list[Vocabulary], panoptic: list[bool] | None = None) -> None:
        """Score each vocabulary with mIoU, and with PQ where ``panoptic[j]`` (real instance annotations)."""
        self.eval_vocabularies = list(vocabularies)
        self.text = [self.base.text_embeddings(list(v.classes)) for v in vocabularies]
        self.metrics = torch.nn.ModuleList([MeanIoU(len(v), ignore_index=IGNORE_INDEX) for v in vocabularies])
        flags = panoptic or [False] * len(vocabularies)
        self.pq_metrics = torch.nn.ModuleList([PanopticQuality(len(v), v.is_thing) if f else torch.nn.Identity()
                                               for v, f in zip(vocabularies, flags)])
        self._luts = [self._memory_to_local(v) for v in vocabularies]

    def _memory_to_local(self, vocabulary: Vocabulary) -> np.ndarray | None:
        """Lookup table from memory class codes to local class ids of the vocabulary (-1 where absent)."""
        if self.memory is None:
            return None
        local = {name: i for i, name in enumerate(vocabulary.classes)}
        return np.array([local.get(n, -1) for n in self.memory.names] + [-1], dtype=np.int64)

    def class_probabilities(self, label_map: torch.Tensor, base_feats: torch.Tensor,
                            memory_feats: torch.Tensor | None, task: int) -> torch.Tensor:
        """float ``Q×C`` class distribution of each proposal of one image, for vocabulary ``task``."""
        num = int(label_map.max()) if label_map.numel() else 0
        pooled = F.normalize(pool_features(base_feats, label_map, num), dim=1)
        if self.adapter is not None:
            pooled = self.adapter(pooled)
        probs = torch.softmax(self.base.logit_scale * pooled @ self.text[task].T.to(pooled), dim=1)
        if memory_feats is None or self.memory is None:
            return probs
        queries = F.normalize(pool_features(memory_feats, label_map, num), dim=1)
        vocabulary = self.eval_vocabularies[task]
        scores, ids = self.memory.search(queries.float().cpu().numpy(), self.knn.k, allowed=vocabulary.classes)
        local = torch.from_numpy(self._luts[task][self.memory.label_codes(ids)])
        p_ret, confidence = retrieval_distribution(torch.from_numpy(scores).to(probs), local.to(probs.device),
                                                   len(vocabulary), self.knn.temperature)
        return fuse(probs, p_ret, confidence, self.knn.threshold, self.knn.lam)

    def eval_features(self, batch: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Base features, and memory-embedder features when there is a memory. An embedder that is the base's own
        visual tower (embedder=clip) shares all blocks but the last with it, so both come from one pass."""
        if self.memory is None:
            return dense_batch(self.base, batch), None
        if getattr(self.embedder, "base", None) is self.base and hasattr(self.base, "dense_and_token_features"):
            images = torch.stack([self.base.preprocess(s["image"]) for s in batch])
            return self.base.dense_and_token_features(images)
        return dense_batch(self.base, batch), dense_batch(self.embedder, batch)

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int, dataloader_idx: int = 0) -> None:
        base_feats, memory_feats = self.eval_features(batch)
        for i, sample in enumerate(batch):
            label_map = self.proposer(sample).to(base_feats.device)
            probs = self.class_probabilities(label_map, base_feats[i],
                                             None if memory_feats is None else memory_feats[i], dataloader_idx)
            self.metrics[dataloader_idx].update(semantic_from_proposals(label_map, probs), sample["semantic"])
            pq = self.pq_metrics[dataloader_idx]
            if isinstance(pq, PanopticQuality):
                is_thing = torch.tensor(self.eval_vocabularies[dataloader_idx].is_thing)
                # Ground-truth proposals are instances already; superpixels of one object are joined.
                segments, classes = panoptic_from_proposals(label_map, probs, is_thing,
                                                            merge_things=not self.proposals_are_instances)
                pq.update(segments, classes, sample["segments"], sample["segment_classes"],
                          sample["segment_iscrowd"])

    def on_test_epoch_end(self) -> None:
        self.results = [m.compute() for m in self.metrics]
        self.pq_results = [m.compute() if isinstance(m, PanopticQuality) else None for m in self.pq_metrics]

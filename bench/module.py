"""Evaluation as a LightningModule: the base, a proposer and a method's head score every vocabulary seen so far.

``ContinualSegmenter(base, proposer, head)`` has no optional parts and no branch on the method: the head decides
how proposals are classified (see :mod:`bench.heads`). :func:`evaluate_tasks` runs a test pass and returns the
scores to its caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch

from bench.inference import panoptic_from_proposals, semantic_from_proposals
from bench.metrics import MeanIoU, PanopticQuality
from bench.models import BaseSegmenter, DenseBackbone
from bench.proposals import Proposer
from datamodules.contract import IGNORE_INDEX
from datamodules.vocabulary import Vocabulary


def dense_batch(backbone: DenseBackbone, batch: list[dict[str, Any]]) -> torch.Tensor:
    """float ``B×D×h×w`` features of a list of samples, each resized by the backbone's own transform."""
    images = torch.stack([backbone.preprocess(s["image"]) for s in batch])
    return backbone.dense_features(images)


def eval_features(base: BaseSegmenter, embedder: DenseBackbone | None, batch: list[dict[str, Any]]
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Base features, and the memory embedder's when there is one. An embedder that is the base's own visual
    tower (embedder=clip) shares all blocks but the last with it, so both come from one pass."""
    if embedder is None:
        return dense_batch(base, batch), None
    if getattr(embedder, "base", None) is base and hasattr(base, "dense_and_token_features"):
        images = torch.stack([base.preprocess(s["image"]) for s in batch])
        return base.dense_and_token_features(images)
    return dense_batch(base, batch), dense_batch(embedder, batch)


class ContinualSegmenter(L.LightningModule):
    def __init__(self, base: BaseSegmenter, proposer: Proposer, head: torch.nn.Module) -> None:
        super().__init__()
        self.base, self.proposer, self.head = base, proposer, head
        self.vocabularies: list[Vocabulary] = []
        self.metrics = torch.nn.ModuleList()
        self.pq_metrics = torch.nn.ModuleList()
        self.scores: list[dict[str, Any]] = []

    def begin_eval(self, vocabularies: Sequence[Vocabulary], panoptic: Sequence[bool] | None = None) -> None:
        """Score each vocabulary with mIoU, and with PQ where ``panoptic[j]`` (real instance annotations)."""
        self.vocabularies = list(vocabularies)
        self.head.begin(self.vocabularies)
        self.metrics = torch.nn.ModuleList([MeanIoU(len(v), ignore_index=IGNORE_INDEX) for v in vocabularies])
        flags = panoptic or [False] * len(vocabularies)
        self.pq_metrics = torch.nn.ModuleList([PanopticQuality(len(v), v.is_thing) if f else torch.nn.Identity()
                                               for v, f in zip(vocabularies, flags)])

    def eval_features(self, batch: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return eval_features(self.base, self.head.embedder, batch)

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int, dataloader_idx: int = 0) -> None:
        base_feats, memory_feats = self.eval_features(batch)
        for i, sample in enumerate(batch):
            label_map = self.proposer(sample).to(base_feats.device)
            probs = self.head(label_map, base_feats[i], None if memory_feats is None else memory_feats[i],
                              dataloader_idx)
            self.metrics[dataloader_idx].update(semantic_from_proposals(label_map, probs), sample["semantic"])
            pq = self.pq_metrics[dataloader_idx]
            if isinstance(pq, PanopticQuality):
                is_thing = torch.tensor(self.vocabularies[dataloader_idx].is_thing)
                # Instance proposals (ground truth, mask models) stay apart; fragments of one object are joined.
                segments, classes = panoptic_from_proposals(label_map, probs, is_thing,
                                                            merge_things=not self.proposer.instances)
                pq.update(segments, classes, sample["segments"], sample["segment_classes"],
                          sample["segment_iscrowd"])

    def on_test_epoch_end(self) -> None:
        self.scores = [{**m.compute(), "pq": q.compute() if isinstance(q, PanopticQuality) else None}
                       for m, q in zip(self.metrics, self.pq_metrics)]


def evaluate_tasks(trainer: Callable[[], Any], module: ContinualSegmenter, datamodule: Any,
                   vocabularies: Sequence[Vocabulary], panoptic: Sequence[bool]) -> list[dict[str, Any]]:
    """One test pass over the datamodule's eval loaders (one per vocabulary). Returns per vocabulary ``miou``
    (tensor), ``per_class_iou`` (tensor ``[C]``) and ``pq`` (PQ/SQ/RQ dict, or None where not panoptic)."""
    module.begin_eval(vocabularies, panoptic)
    trainer().test(module, datamodule=datamodule, verbose=False)
    scores, module.scores = module.scores, []
    return scores

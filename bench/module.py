"""Evaluation as a LightningModule: the base, a proposer and a method's head score every vocabulary seen so far.

``ContinualSegmenter(base, proposer, head)`` has no optional parts and no branch on the method: the head decides
how proposals are classified (see :mod:`bench.heads`). :func:`evaluate_tasks` runs a test pass and returns the
scores to its caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch

from bench.bootstrap import image_counts
from bench.dense import WHOLE, DenseFeatures, dense_features
from bench.distributed import gather_in_shard_order
from bench.inference import background_class, background_fallback, panoptic_from_proposals, semantic_from_proposals
from bench.metrics import MeanIoU, PanopticQuality
from bench.models import BaseSegmenter, DenseBackbone
from bench.proposals import Proposer
from datamodules.contract import IGNORE_INDEX
from datamodules.vocabulary import Vocabulary


def dense_batch(backbone: DenseBackbone, batch: list[dict[str, Any]], protocol: Any = WHOLE,
                input_size: int | None = None) -> list[DenseFeatures]:
    """Dense features of each sample's image under the inference protocol (``input_size``: the base model's input,
    which sets slide windows by default)."""
    return dense_features([backbone], [s["image"] for s in batch], protocol, input_size,
                          inputs=[s.get("inputs") for s in batch])[0]


def eval_features(base: BaseSegmenter, embedder: DenseBackbone | None, batch: list[dict[str, Any]],
                  protocol: Any = WHOLE) -> tuple[list[DenseFeatures], list[DenseFeatures] | None]:
    """Base features, and the memory embedder's when there is one, per sample. An embedder that is the base's own
    visual tower (embedder=clip) shares all blocks but the last with it, so both come from one pass."""
    images = [s["image"] for s in batch]
    size = getattr(base, "image_size", None)
    if embedder is None:
        return dense_features([base], images, protocol, size)[0], None
    if getattr(embedder, "base", None) is base and hasattr(base, "dense_and_token_features"):
        both = dense_features([base, embedder], images, protocol, size, joint=base.dense_and_token_features)
    else:
        both = dense_features([base, embedder], images, protocol, size)
    return both[0], both[1]


class ContinualSegmenter(L.LightningModule):
    def __init__(self, base: BaseSegmenter, proposer: Proposer, head: torch.nn.Module,
                 background_threshold: float = 0.0) -> None:
        super().__init__()
        self.base, self.proposer, self.head = base, proposer, head
        self.background_threshold = background_threshold  # text.background_threshold (0 = off)
        self.backgrounds: list[int | None] = []
        self.vocabularies: list[Vocabulary] = []
        self.metrics = torch.nn.ModuleList()
        self.pq_metrics = torch.nn.ModuleList()
        self.scores: list[dict[str, Any]] = []
        self.protocols: list[Any] = []
        self.counts: list[list[np.ndarray]] = []  # per vocabulary, per image (this rank's, in order)

    def begin_eval(self, vocabularies: Sequence[Vocabulary], panoptic: Sequence[bool] | None = None,
                   protocols: Sequence[Any] | None = None) -> None:
        """Score each vocabulary with mIoU, and with PQ where ``panoptic[j]`` (real instance annotations);
        ``protocols[j]``: task j's inference protocol (default: ``whole``)."""
        self.vocabularies = list(vocabularies)
        self.protocols = list(protocols or [WHOLE] * len(vocabularies))
        self.head.begin(self.vocabularies)
        threshold = self.background_threshold
        self.backgrounds = [background_class(v.classes, threshold, f"vocabulary {v.name!r}") if threshold else None
                            for v in self.vocabularies]
        self.metrics = torch.nn.ModuleList([MeanIoU(len(v), ignore_index=IGNORE_INDEX) for v in vocabularies])
        self.counts = [[] for _ in vocabularies]
        flags = panoptic or [False] * len(vocabularies)
        self.pq_metrics = torch.nn.ModuleList([PanopticQuality(len(v), v.is_thing) if f else torch.nn.Identity()
                                               for v, f in zip(vocabularies, flags)])

    def eval_features(self, batch: list[dict[str, Any]], task: int = 0
                      ) -> tuple[list[DenseFeatures], list[DenseFeatures] | None]:
        protocol = self.protocols[task] if self.protocols else WHOLE
        return eval_features(self.base, self.head.embedder, batch, protocol)

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int, dataloader_idx: int = 0) -> None:
        base_feats, memory_feats = self.eval_features(batch, dataloader_idx)
        for i, sample in enumerate(batch):
            # proposals made in a DataLoader worker arrive with the sample; a model proposer runs here
            label_map = sample["proposals"] if "proposals" in sample else self.proposer(sample)
            label_map = label_map.to(base_feats[i].device)
            probs = self.head(label_map, base_feats[i], None if memory_feats is None else memory_feats[i],
                              dataloader_idx)
            probs = background_fallback(probs, self.backgrounds[dataloader_idx], self.background_threshold)
            semantic = semantic_from_proposals(label_map, probs)
            self.metrics[dataloader_idx].update(semantic, sample["semantic"])
            # per-image class counts, for bootstrap intervals (bench.bootstrap) without a second pass
            self.counts[dataloader_idx].append(image_counts(semantic, sample["semantic"],
                                                            len(self.vocabularies[dataloader_idx]), IGNORE_INDEX))
            pq = self.pq_metrics[dataloader_idx]
            if isinstance(pq, PanopticQuality):
                is_thing = torch.tensor(self.vocabularies[dataloader_idx].is_thing)
                # Instance proposals (ground truth, mask models) stay apart; fragments of one object are joined.
                segments, classes = panoptic_from_proposals(label_map, probs, is_thing,
                                                            merge_things=not self.proposer.instances)
                pq.update(segments, classes, sample["segments"], sample["segment_classes"],
                          sample["segment_iscrowd"])

    def on_test_epoch_end(self) -> None:
        # A head may have an ``end()`` (optional: a head is begin + forward): called before any other collective,
        # as a sharded memory's searches are rounds across processes that every rank must join until all are done.
        end = getattr(self.head, "end", None)
        if end is not None:
            end()
        counts = [gather_in_shard_order(c) for c in self.counts]  # every image, in dataset order
        self.scores = [{**m.compute(), "pq": q.compute() if isinstance(q, PanopticQuality) else None, "counts": c}
                       for m, q, c in zip(self.metrics, self.pq_metrics, counts)]


def evaluate_tasks(trainer: Callable[[], Any], module: ContinualSegmenter, datamodule: Any,
                   vocabularies: Sequence[Vocabulary], panoptic: Sequence[bool],
                   protocols: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """One test pass over the datamodule's eval loaders (one per vocabulary; ``protocols``: each one's inference
    protocol, default ``whole``). Returns per vocabulary ``miou`` (tensor), ``per_class_iou`` (tensor ``[C]``),
    ``pq`` (PQ/SQ/RQ dict, or None where not panoptic) and ``counts`` (each image's class counts, in dataset
    order, :func:`bench.bootstrap.image_counts`)."""
    module.begin_eval(vocabularies, panoptic, protocols)
    trainer().test(module, datamodule=datamodule, verbose=False)
    scores, module.scores = module.scores, []
    return scores

"""Fusion sweep: score many kNN fusion settings (T, λ, τ) from one finished knn run, exactly as the run would.

A knn run's final row ``R[T][j]`` is every task evaluated with the final memory: what the evaluation of a task
depends on is the memory at that time, not the step. Every fusion setting shares that memory, the
image features, the proposals and the neighbours; only ``bench.fusion`` differs. So one ordinary run (the
*anchor*) fills and saves the memory, and :func:`evaluate_grid` re-scores its final evaluation under each setting
with the suite's own code path (the run's :class:`bench.heads.KnnHead`, ``semantic_from_proposals``, the
confusion matrix of ``MeanIoU``), keeping one confusion matrix per image so that differences between settings can
be given a paired bootstrap interval. The anchor's own setting must reproduce the anchor's recorded final row;
:func:`evaluate_grid` raises otherwise, so the sweep can never silently drift from what ``bench run`` computes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.metrics.semantic import confusion_matrix, iou_from_confusion


@dataclass(frozen=True)
class FusionPoint:
    threshold: float  # T
    lam: float  # λ
    temperature: float  # τ of the retrieval votes

    def label(self) -> str:
        return f"T={self.threshold:g} λ={self.lam:g} τ={self.temperature:g}"


def grid(thresholds: Sequence[float], lams: Sequence[float], temperatures: Sequence[float]) -> list[FusionPoint]:
    """Every combination, except that λ = 0 (the base model alone, whatever T and τ) appears once."""
    points = []
    for t in thresholds:
        for lam in lams:
            for tau in temperatures:
                if lam == 0 and (t, tau) != (thresholds[0], temperatures[0]):
                    continue
                points.append(FusionPoint(float(t), float(lam), float(tau)))
    return points


def miou_percent(confmat: np.ndarray) -> float | None:
    """mIoU in percent of one ``C×(C+1)`` confusion matrix, as ``MeanIoU.compute`` and the record give it."""
    iou = iou_from_confusion(torch.from_numpy(confmat))
    value = float(torch.nanmean(iou)) * 100.0
    return None if math.isnan(value) else round(value, 4)


@dataclass
class GridResult:
    """Per point, per task: one confusion matrix per evaluated image (int64 ``N_j×C_j×(C_j+1)``)."""

    points: list[FusionPoint]
    tasks: list[str]
    per_image: list[list[np.ndarray]]  # [point][task]

    def final_row(self, i: int) -> list[float | None]:
        return [miou_percent(cm.sum(0)) for cm in self.per_image[i]]

    def final_average(self, i: int) -> float:
        row = [v for v in self.final_row(i) if v is not None]
        return sum(row) / len(row)

    def bootstrap_difference(self, a: int, b: int, samples: int = 1000, seed: int = 0) -> dict[str, float]:
        """Paired bootstrap over images (resampled within each task, the same draw for both points) of
        ``final_average(a) - final_average(b)``: mean, 2.5 % and 97.5 % quantiles, and the share of draws where
        ``a`` is not better."""
        rng = np.random.default_rng(seed)
        diffs = np.zeros(samples)
        for j in range(len(self.tasks)):
            n = len(self.per_image[a][j])
            counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(samples)])
            for sign, i in ((1.0, a), (-1.0, b)):
                flat = self.per_image[i][j].reshape(n, -1).astype(np.float64)
                cms = (counts @ flat).reshape(samples, *self.per_image[i][j].shape[1:])
                tp = np.diagonal(cms[:, :, : cms.shape[1]], axis1=1, axis2=2)
                union = cms.sum(2) + cms[:, :, : cms.shape[1]].sum(1) - tp
                with np.errstate(invalid="ignore", divide="ignore"):
                    iou = np.where(union > 0, tp / union, np.nan)
                diffs += sign * np.nanmean(iou, axis=1) * 100.0 / len(self.tasks)
        return {"mean": float(diffs.mean()), "low": float(np.quantile(diffs, 0.025)),
                "high": float(np.quantile(diffs, 0.975)), "p_not_better": float((diffs <= 0).mean())}


def score_final(run_folder: str | Path, cfg: Any, spec: Any, make_heads: Callable[[Any], Sequence[Any]],
                what: str) -> list[list[np.ndarray]]:
    """The final evaluation of the finished knn run in ``run_folder`` (config ``cfg``, sequence ``spec``: every
    task with the final memory), scored by each head ``make_heads`` derives from the run's own
    :class:`bench.heads.KnnHead` (other fusion settings, another memory). Features, proposals and targets are
    computed once per image and shared by the heads. Returns per head, per task, one int64 confusion matrix per
    image (``N_j×C_j×(C_j+1)``); ``what`` names the heads in the progress lines."""
    from bench.config import base_from_config, proposer_from_config, task_inference
    from bench.inference import background_class, background_fallback, semantic_from_proposals
    from bench.methods import RunContext, get_method
    from bench.module import eval_features
    from datamodules import SequenceDataModule
    from datamodules.contract import IGNORE_INDEX

    torch.manual_seed(cfg.seed)
    base = base_from_config(cfg)
    proposer = proposer_from_config(cfg)
    dm = SequenceDataModule(spec, cfg.data_root, cfg.batch_size, 0, cfg.adapt_limit, cfg.eval_limit)
    last = len(spec.tasks)
    method = get_method("knn")
    method.setup(RunContext(cfg, spec, base, dm, Path(run_folder), trainer=None), last)  # the final memory
    head = method.head.eval()
    head.begin([t.vocabulary for t in spec.tasks])
    dm.set_step(last - 1)
    heads = list(make_heads(head))
    per_image: list[list[list[np.ndarray]]] = [[[] for _ in spec.tasks] for _ in heads]
    start = time.perf_counter()
    with torch.inference_mode():
        for j, loader in enumerate(dm.test_dataloader()):
            print(f"  scoring {spec.tasks[j].name!r} under {len(heads)} {what} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            num_classes = len(spec.tasks[j].vocabulary)
            threshold = cfg.text.background_threshold  # the run's fallback, as test_step applies it
            background = background_class(spec.tasks[j].vocabulary.classes, threshold, f"task {spec.tasks[j].name!r}")
            # Features, proposals and targets once per image, held in memory; only the head varies.
            images = []
            for batch in loader:
                protocol = task_inference(cfg, spec.tasks[j])
                base_feats, memory_feats = eval_features(base, head.embedder, batch, protocol)  # as test_step does
                images += [(proposer(sample).to(base_feats[i].device), base_feats[i], memory_feats[i],
                            sample["semantic"]) for i, sample in enumerate(batch)]
            for p, variant in enumerate(heads):
                for label_map, base_f, memory_f, target in images:
                    probs = background_fallback(variant(label_map, base_f, memory_f, j), background, threshold)
                    pred = semantic_from_proposals(label_map, probs)
                    cm = confusion_matrix(pred, target, num_classes, IGNORE_INDEX)
                    per_image[p][j].append(cm.numpy().astype(np.int64))
    return [[np.stack(cms) for cms in by_task] for by_task in per_image]


def evaluate_grid(run_folder: str | Path, points: Sequence[FusionPoint], cfg: Any, spec: Any,
                  anchor_row: Sequence[float | None] | None = None) -> GridResult:
    """Re-score the final evaluation of the finished knn run in ``run_folder`` (config ``cfg``, sequence
    ``spec``) under each fusion point. With ``anchor_row`` (the run's recorded final mIoU row), the point equal
    to the run's own setting must reproduce it, else ``RuntimeError``."""

    def heads(head: Any) -> list[Any]:
        return [head.with_settings(dataclasses.replace(cfg.knn, threshold=p.threshold, lam=p.lam,
                                                       temperature=p.temperature)) for p in points]

    per_image = score_final(run_folder, cfg, spec, heads, "settings")
    result = GridResult(list(points), [t.name for t in spec.tasks], per_image)
    if anchor_row is not None:
        own = FusionPoint(cfg.knn.threshold, cfg.knn.lam, cfg.knn.temperature)
        if own not in points:
            raise ValueError(f"the anchor run's own setting {own.label()} must be one of the points")
        row = result.final_row(points.index(own))
        if any((a is None) != (b is None) or (a is not None and abs(a - b) > 1e-3) for a, b in zip(row, anchor_row)):
            raise RuntimeError(f"re-scoring the anchor run at its own setting gives {row}, but its record says "
                               f"{list(anchor_row)}: the sweep no longer computes what bench run computes")
    return result

"""Retention: does a memory leave the base model's open vocabulary as it was on the classes it holds nothing of?

kNN-CLIP's claim is that retrieval adds knowledge without harming what the base model already knows. Measured
here on one step (the last by default) of two runs of one sequence, a memory method (``knn``) and the base
alone (``zeroshot``): for every evaluated class whose name is not among the memory's classes at that step
(``record.memory_classes``), IoU with memory minus IoU without (``record.per_class_iou``), averaged per task and
over all such classes. The 95 % interval is a paired bootstrap over each task's evaluation images (the same
draws for both runs, :func:`bench.bootstrap.task_draws`), class IoU from the resampled summed counts
(:func:`bench.bootstrap.class_iou`). Pure: the records and counts go in, a dict comes out (compare and report
both call it).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from bench.bootstrap import REPLICATES, class_iou, dense, interval, resampled, task_draws


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _nanmean(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # a replicate that drew no pixel of any such class is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=-1)


def retention(memory_run: Mapping[str, Any], base_run: Mapping[str, Any],
              memory_counts: Mapping[str, list[np.ndarray]] | None = None,
              base_counts: Mapping[str, list[np.ndarray]] | None = None,
              step: int = -1, replicates: int = REPLICATES) -> dict[str, Any]:
    """IoU difference (memory run minus base run, points) on the classes the memory holds no entries of.

    ``step`` indexes the records' per-step lists (-1: the last finished step); the counts are that step's
    (``bench.protocols.load_counts``; without them, no intervals). Returns ``{"step": t (1-based), "held":
    [names], "tasks": {task: {"classes": [names], "diff", "interval"}}, "overall": {"classes": n, "diff",
    "interval"}}``; a task none of whose evaluated classes is unheld is left out, and ``overall.classes`` is 0
    when every evaluated class is held. A memory record without memory classes for the step (before record
    version 3) raises ValueError."""
    per_class_m, per_class_b = memory_run["per_class_iou"][step], base_run["per_class_iou"][step]
    t = step if step >= 0 else len(memory_run["per_class_iou"]) + step
    if len(memory_run["memory_classes"]) <= t:  # records before version 3 did not say what the memory held
        raise ValueError(f"the {memory_run['method']} record has no memory classes for step {t + 1}")
    held = set(memory_run["memory_classes"][t])
    tasks: dict[str, Any] = {}
    all_diffs: list[float] = []
    all_reps: list[np.ndarray] = []
    paired = memory_counts is not None and base_counts is not None and all(
        len(memory_counts[k]) == len(base_counts.get(k, ())) for k in memory_counts)
    weights = task_draws({k: len(v) for k, v in memory_counts.items()}, replicates) if paired else {}
    for j, task in enumerate(memory_run["tasks"]):
        if task not in per_class_m or task not in per_class_b:
            continue
        names = list(per_class_m[task])
        unheld = [c for c, name in enumerate(names) if name not in held]
        if not unheld:
            continue
        diffs = [per_class_m[task][names[c]] - per_class_b[task][names[c]] for c in unheld
                 if per_class_m[task][names[c]] is not None and per_class_b[task][names[c]] is not None]
        entry: dict[str, Any] = {"classes": [names[c] for c in unheld], "diff": _mean(diffs), "interval": None}
        key = str(j)
        if paired and key in memory_counts:
            reps = [class_iou(resampled(dense(counts[key], len(names)), weights[key]))[:, unheld]
                    for counts in (memory_counts, base_counts)]
            delta = reps[0] - reps[1]  # B × unheld classes
            entry["interval"] = interval(_nanmean(delta))
            all_reps.append(delta)
        all_diffs += diffs
        tasks[task] = entry
    overall = {"classes": sum(len(e["classes"]) for e in tasks.values()), "diff": _mean(all_diffs),
               "interval": interval(_nanmean(np.concatenate(all_reps, axis=1))) if all_reps else None}
    return {"step": t + 1, "held": sorted(held), "tasks": tasks, "overall": overall}


def last_unheld_step(memory_run: Mapping[str, Any], base_run: Mapping[str, Any]) -> int | None:
    """The last step (1-based) at which some class evaluated in both runs is not in the memory; None when the
    memory holds every evaluated class at every step (as on a sequence scored without ``eval_future``)."""
    steps = min(len(memory_run["per_class_iou"]), len(base_run["per_class_iou"]))
    return next((t for t in range(steps, 0, -1)
                 if retention(memory_run, base_run, step=t - 1)["overall"]["classes"]), None)

"""What a step evaluates and what the record keeps of it, per continual protocol.

- Every sequence: after step ``t`` each task ``j <= t`` is scored with its own vocabulary (``R[t][j]``). With
  ``eval_future=true`` every task is scored at every step (the upper triangle, ``j > t``: a task before it is
  adapted to) and once before the first step with the base alone (``record.initial``), giving forward transfer.
- ``class-incremental`` sequences (MiB / PLOP / CoMFormer; :mod:`datamodules.protocols`): after step ``t`` also one
  evaluation of the dataset's eval split with every class seen so far, reported on the old classes (step 0), the
  new ones (steps 1..t) and all (``record.cumulative``).
- Each evaluation keeps every image's class counts (``counts/step-<t>.npz`` in the run folder), from which the
  95 % bootstrap intervals of the summaries are computed (:mod:`bench.bootstrap`, ``record.intervals``).
- A reader's class groups (LVIS rare / common / frequent) are kept once per task (``record.class_groups``), for
  the report's per-group mean IoU (:mod:`bench.breakdowns`).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bench.continual as continual
from bench.bootstrap import dense, interval, miou, resampled, summary_replicates, task_draws
from bench.config import task_inference
from bench.distributed import is_rank_zero
from bench.io import read_state_bytes, write_state_bytes
from bench.record import RunRecord, Summary
from datamodules.protocols import cumulative_task, old_new, split_old_new

CUMULATIVE = "cumulative"  # the key of a class-incremental step's evaluation in a counts file


def _percent(x: Any) -> float | None:
    value = float(x) * 100.0
    return None if math.isnan(value) else round(value, 4)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def _summarize(matrix: list[list[float | None]], t: int) -> dict[str, Any]:
    """Continual summary of the first t+1 rows. A task whose eval split holds none of its classes has no score
    (``null``); it counts as NaN in the math and the affected summaries are written as ``null``."""
    rows = [[math.nan if v is None and j <= i else v for j, v in enumerate(row)]
            for i, row in enumerate(matrix[: t + 1])]
    summary = continual.summarize(rows)

    def clean(v: Any) -> Any:
        if isinstance(v, list):
            return [clean(x) for x in v]
        return None if isinstance(v, float) and math.isnan(v) else v

    return {k: clean(v) for k, v in summary.items()}


PQ_METRICS = {"pq": ("All", "pq"), "sq": ("All", "sq"), "rq": ("All", "rq"), "pq_things": ("Things", "pq"),
              "pq_stuff": ("Stuff", "pq")}


def _record_pq(record: RunRecord | dict[str, Any], results: list[dict[str, Any] | None], t: int) -> None:
    """PQ rows for tasks with panoptic annotations (``null`` cells for the others).

    The continual summary (forgetting, BWT) needs every task scored, so it is given only when all tasks are
    panoptic; otherwise the PQ summary holds the final average over the panoptic tasks alone.
    """
    if not any(r is not None for r in results) and not any(m in record["matrix"] for m in PQ_METRICS):
        return
    T = len(record["tasks"])
    for metric, (group, key) in PQ_METRICS.items():
        matrix = record["matrix"].setdefault(metric, [[None] * T for _ in range(T)])
        for j, result in enumerate(results):
            matrix[t][j] = None if result is None else _percent(torch.tensor(result[group][key]))
        record["summary"][metric] = _pq_summary(matrix, t)


def _pq_summary(matrix: list[list[float | None]], t: int) -> Summary:
    scored = [v for v in matrix[t][: t + 1] if v is not None]
    if all(v is not None for v in matrix[t][: t + 1]):
        return Summary(**_summarize(matrix, t))
    return Summary(final_average=sum(scored) / len(scored) if scored else None, forgetting=[None] * (t + 1))


def counts_path(out: Path, step: int) -> Path:
    return out / "counts" / f"step-{step}.npz"


def save_counts(out: Path, step: int, counts: dict[str, list[np.ndarray]]) -> None:
    """Each evaluated task's per-image class counts after ``step`` finished steps (rows concatenated, offsets)."""
    arrays = {}
    for key, per_image in counts.items():
        arrays[f"{key}.rows"] = np.concatenate(per_image) if per_image else np.zeros((0, 4), np.int64)
        arrays[f"{key}.offsets"] = np.cumsum([0, *(len(r) for r in per_image)])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_state_bytes(counts_path(out, step), buf.getvalue())


def load_counts(out: Path, step: int) -> dict[str, list[np.ndarray]] | None:
    """The counts :func:`save_counts` wrote, or None when the file is missing or damaged."""
    try:
        data = np.load(io.BytesIO(read_state_bytes(counts_path(out, step))))
    except Exception:  # missing, or from an interrupted write: no intervals rather than a failed run
        return None
    keys = {name.rsplit(".", 1)[0] for name in data.files}
    return {k: [data[f"{k}.rows"][a:b] for a, b in zip(data[f"{k}.offsets"][:-1], data[f"{k}.offsets"][1:])]
            for k in keys}


def evaluate_step(ctx: Any, module: Any, t: int, record: RunRecord) -> dict[str, Any]:
    """Every evaluation of step ``t`` into the record (matrix rows, per-class IoU, PQ, cumulative scores,
    intervals); returns timing figures for the record."""
    from bench.module import evaluate_tasks

    spec, dm, cfg = ctx.spec, ctx.dm, ctx.cfg
    evaluated = list(range(len(spec.tasks))) if cfg.eval_future else list(range(t + 1))
    tasks = [spec.tasks[j] for j in evaluated]
    dm.set_step(t, tasks)
    scores = evaluate_tasks(ctx.trainer, module, dm, [x.vocabulary for x in tasks],
                            [dm.eval_dataset(x).panoptic for x in tasks], [task_inference(cfg, x) for x in tasks])
    timing = {"eval_images": sum(len(dm.eval_dataset(x)) for x in tasks)}
    row, per_class = record.matrix["miou"][t], {}
    for j, result in zip(evaluated, scores):
        row[j] = _percent(result["miou"])
        names = spec.tasks[j].vocabulary.classes
        per_class[spec.tasks[j].name] = {n: _percent(v) for n, v in zip(names, result["per_class_iou"])}
    record.per_class_iou.append(per_class)
    for task in tasks:
        _record_class_groups(record, task, dm.eval_dataset(task).reader)
    pq = [None] * len(spec.tasks)
    for j, result in zip(evaluated, scores):
        pq[j] = result["pq"]
    _record_pq(record, pq, t)
    counts = {str(j): result["counts"] for j, result in zip(evaluated, scores)}
    if spec.protocol == "class-incremental":
        counts[CUMULATIVE] = _cumulative(ctx, module, t, record)
        timing["eval_images"] += len(counts[CUMULATIVE])
    if is_rank_zero():
        save_counts(ctx.out, t + 1, counts)
    dm.set_step(t)
    return timing


def _record_class_groups(record: RunRecord, task: Any, reader: Any) -> None:
    """The reader's class groups (LVIS rare / common / frequent), cut to the task's classes (in its vocabulary's
    order), once per task."""
    groups = getattr(reader, "class_groups", None)
    if not groups or task.name in record.class_groups:
        return
    record.class_groups[task.name] = {g: [c for c in task.vocabulary.classes if c in set(classes)]
                                      for g, classes in groups.items()}


def _cumulative(ctx: Any, module: Any, t: int, record: RunRecord) -> list[np.ndarray]:
    """The class-incremental evaluation after step ``t``: old / new / all mIoU (and PQ) into the record."""
    from bench.module import evaluate_tasks

    spec, dm = ctx.spec, ctx.dm
    task = cumulative_task(spec, t)
    dm.set_step(t, [task])
    panoptic = dm.eval_dataset(task).panoptic
    result = evaluate_tasks(ctx.trainer, module, dm, [task.vocabulary], [panoptic],
                            [task_inference(ctx.cfg, spec.tasks[0])])[0]
    old, new = old_new(spec, t)
    ious = [_percent(v) for v in result["per_class_iou"]]
    groups = {"old": old, "new": new, "all": old + new}
    record.cumulative.setdefault("miou", []).append(
        {g: _mean([ious[c] for c in ids]) if ids else None for g, ids in groups.items()})
    if result["pq"] is not None:
        per_class, present = result["pq"]["per_class"], result["pq"].get("present")
        values = [_percent(torch.tensor(per_class[c]["pq"])) if present is None or present[c] else None
                  for c in range(len(task.vocabulary))]
        record.cumulative.setdefault("pq", []).append(
            {g: _mean([values[c] for c in ids]) if ids else None for g, ids in groups.items()})
    return result["counts"]


def run_counts(out: Path, steps_done: int) -> list[dict[str, list[np.ndarray]]] | None:
    """Every finished step's counts (:func:`load_counts`), or None when one is missing (a run begun before they
    were kept)."""
    steps = [load_counts(out, s) for s in range(1, steps_done + 1)]
    known = [s for s in steps if s is not None]
    return known if steps and len(known) == len(steps) else None


def eval_sizes(steps: list[dict[str, list[np.ndarray]]]) -> dict[str, int]:
    """Number of evaluation images per counts-file key (the first step that evaluated it)."""
    sizes: dict[str, int] = {}
    for s in steps:
        for key, per_image in s.items():
            sizes.setdefault(key, len(per_image))
    return sizes


def run_replicates(steps: list[dict[str, list[np.ndarray]]], vocabulary_sizes: list[int],
                   weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``B`` replicates of the final average and average incremental mIoU (percent) of one run's counts."""
    T = len(vocabulary_sizes)
    counts = [[dense(s[str(j)], vocabulary_sizes[j]) if str(j) in s else None for j in range(T)] for s in steps]
    return summary_replicates(counts, [weights.get(str(j)) for j in range(T)])


def intervals(out: Path, record: RunRecord, vocabulary_sizes: list[int], replicates: int = 1000
              ) -> dict[str, dict[str, list[float] | None]]:
    """95 % bootstrap intervals of the mIoU summaries after the record's last step, from the counts files of
    every step so far; ``{}`` when a step's counts are missing (a run begun before they were kept)."""
    steps = run_counts(out, record.steps_done)
    if steps is None:
        return {}
    weights = task_draws(eval_sizes(steps), replicates)
    reps = run_replicates(steps, vocabulary_sizes, weights)
    out_: dict[str, dict[str, list[float] | None]] = {"miou": {k: interval(v) for k, v in reps.items()}}
    last = steps[-1]
    if CUMULATIVE in last:
        old, new = split_old_new(record.vocabulary_sizes[: record.steps_done])  # each task: its step's classes
        totals = resampled(dense(last[CUMULATIVE], len(old) + len(new)), weights[CUMULATIVE])
        out_["cumulative_miou"] = {g: interval(miou(totals[:, ids])) if ids else None
                                   for g, ids in {"old": old, "new": new, "all": old + new}.items()}
    return out_


def paired_intervals(out_a: Path, record_a: Any, out_b: Path, record_b: Any, replicates: int = 1000
                     ) -> dict[str, Any]:
    """Difference A - B of the mIoU summaries of two runs of one sequence, each with its 95 % paired bootstrap
    interval: both runs' evaluation images resampled by the same draws (:func:`bench.bootstrap.task_draws`).

    Returns ``{"final_average": {"diff", "interval"}, "average_incremental": {...}, "images": n}``, or
    ``{"unpaired": why}`` when the two were not evaluated on the same number of images per task and step, or a
    run's counts are missing."""
    if list(record_a["tasks"]) != list(record_b["tasks"]) or record_a["steps_done"] != record_b["steps_done"]:
        return {"unpaired": "different tasks or steps"}
    steps_a, steps_b = run_counts(out_a, record_a["steps_done"]), run_counts(out_b, record_b["steps_done"])
    if steps_a is None or steps_b is None:
        return {"unpaired": "no per-image counts (a run begun before they were kept)"}
    for t, (a, b) in enumerate(zip(steps_a, steps_b), 1):
        sizes_a = {k: len(v) for k, v in a.items() if k != CUMULATIVE}
        sizes_b = {k: len(v) for k, v in b.items() if k != CUMULATIVE}
        if sizes_a != sizes_b:
            return {"unpaired": f"step {t}: evaluation images per task differ ({sizes_a} vs {sizes_b})"}
    weights = task_draws(eval_sizes(steps_a), replicates)
    vocabulary_sizes = list(record_a["vocabulary_sizes"])
    reps_a = run_replicates(steps_a, vocabulary_sizes, weights)
    reps_b = run_replicates(steps_b, vocabulary_sizes, weights)
    result: dict[str, Any] = {"images": sum(eval_sizes(steps_a).get(str(j), 0) for j in range(len(vocabulary_sizes)))}
    for key in reps_a:
        a, b = record_a["summary"]["miou"][key], record_b["summary"]["miou"][key]
        result[key] = {"diff": None if a is None or b is None else round(a - b, 4),
                       "interval": interval(reps_a[key] - reps_b[key])}
    return result


def evaluate_initial(ctx: Any, proposer: Any, record: RunRecord) -> None:
    """``eval_future``: every task scored before the first step by the base alone (``record.initial``, the
    reference of forward transfer)."""
    from bench.heads import ZeroShotHead
    from bench.module import ContinualSegmenter, evaluate_tasks

    spec, dm, cfg = ctx.spec, ctx.dm, ctx.cfg
    module = ContinualSegmenter(ctx.base, proposer, ZeroShotHead(ctx.base))
    dm.set_step(0, list(spec.tasks))
    scores = evaluate_tasks(ctx.trainer, module, dm, [x.vocabulary for x in spec.tasks],
                            [dm.eval_dataset(x).panoptic for x in spec.tasks],
                            [task_inference(cfg, x) for x in spec.tasks])
    dm.set_step(0)
    record.initial = {"miou": [_percent(r["miou"]) for r in scores]}

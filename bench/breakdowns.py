"""Breakdowns of one run's scores that the report shows beside its result matrix, all read from the record:

- class-incremental sequences: old / new / all after every step (``record.cumulative``), as MiB (Cermelli et al.,
  CVPR 2020), PLOP (Douillard et al., CVPR 2021) and CoMFormer (Cermelli et al., CVPR 2023) tabulate them;
- the last step's mean IoU per class group of a task (``record.class_groups``: LVIS rare / common / frequent);
- the last step's mean IoU of each task's classes with and without entries in the method's memory
  (``record.memory_classes``), for methods that keep one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.results import CUMULATIVE_GROUPS
from bench.tables import fmt, md_table, metric_title


def mean_iou(ious: Mapping[str, float | None], classes: Sequence[str]) -> tuple[float | None, int]:
    """Mean IoU (%) over ``classes`` that have a score in ``ious`` (a class absent from the eval split has none),
    and how many had one."""
    scored = [v for c in classes if (v := ious.get(c)) is not None]
    return (sum(scored) / len(scored) if scored else None), len(scored)


def class_breakdown(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows ``task, group, classes, scored, mean_iou`` after the record's last finished step: each task's class
    groups, then (when the method's memory holds any class) its classes with and without memory entries."""
    done = int(record.get("steps_done") or 0)
    per_class = record.get("per_class_iou") or []
    if not done or len(per_class) < done:
        return []
    last, groups = per_class[done - 1], record.get("class_groups") or {}
    memory = record.get("memory_classes") or []
    in_memory = set(memory[done - 1]) if len(memory) >= done else set()
    rows = []
    for task, ious in last.items():
        split = dict((groups.get(task) or {}).items())
        if in_memory:
            split["with memory entries"] = [c for c in ious if c in in_memory]
            split["without memory entries"] = [c for c in ious if c not in in_memory]
        for group, classes in split.items():
            mean, scored = mean_iou(ious, classes)
            rows.append({"task": task, "group": group, "classes": len(classes), "scored": scored, "mean_iou": mean})
    return rows


def cumulative_md(record: Mapping[str, Any]) -> list[str]:
    """Markdown of the class-incremental scores (rows = steps; old, new, all per metric); ``[]`` without them."""
    cumulative = record.get("cumulative") or {}
    metrics = [m for m in ("miou", "pq") if cumulative.get(m)]
    if not metrics:
        return []
    tasks, steps = record["tasks"], max(len(cumulative[m]) for m in metrics)
    header = ["after step", *(f"{metric_title(m)} {g}" for m in metrics for g in CUMULATIVE_GROUPS)]
    body = []
    for t in range(steps):
        cells = [(cumulative[m][t] if t < len(cumulative[m]) else {}).get(g) for m in metrics
                 for g in CUMULATIVE_GROUPS]
        body.append([f"{t + 1} {tasks[t]}", *("–" if v is None else fmt(v) for v in cells)])
    lines = ["Class-incremental, every class seen so far (old = classes of step 1, new = of steps 2..t):", "",
             *md_table(header, body), ""]
    for m in metrics:
        bounds = (record.get("intervals") or {}).get(f"cumulative_{m}")
        if bounds:
            text = " · ".join(f"{g} {fmt(b[0])}–{fmt(b[1])}" for g in CUMULATIVE_GROUPS if (b := bounds.get(g)))
            lines += [f"95 % bootstrap interval after step {steps} ({metric_title(m)}): {text}", ""]
    return lines


def class_breakdown_md(record: Mapping[str, Any]) -> list[str]:
    """Markdown of :func:`class_breakdown`; ``[]`` when the record has neither class groups nor memory classes."""
    rows = class_breakdown(record)
    if not rows:
        return []
    body = [[r["task"], r["group"], f"{r['scored']} / {r['classes']}", "–" if r["mean_iou"] is None else
             fmt(r["mean_iou"])] for r in rows]
    return [f"Mean IoU by class group after step {record['steps_done']} (classes scored = those in the eval "
            "split):", "", *md_table(["task", "classes", "scored / in group", "mean IoU"], body), ""]


def breakdowns_md(record: Mapping[str, Any]) -> list[str]:
    """Every breakdown of one run, as markdown lines (none for a record without what they need)."""
    return [*cumulative_md(record), *class_breakdown_md(record)]

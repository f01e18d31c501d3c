"""What a run record carries besides scores (versions, commit), and its printed table. The record itself is
:class:`bench.record.RunRecord`."""

from __future__ import annotations

import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "lightning", "torchmetrics", "open_clip_torch", "timm", "faiss-cpu",
            "faiss-gpu-cu12", "numpy", "scikit-image", "datasets", "wandb", "knnclip-bench")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit(repo: Path | None = None) -> str | None:
    """HEAD of the suite's repository, with ``-dirty`` when tracked files differ from it."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def _fmt(value: float | None, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float) and math.isnan(value):
        return "nan".rjust(width)
    text = f"{value:.1f}"
    return (text[1:] if text == "-0.0" else text).rjust(width)


def _cell(value: float | None, width: int, ahead: bool) -> str:
    """A matrix cell; ``ahead`` (a task scored before it was adapted to) in parentheses."""
    if not ahead or value is None:
        return _fmt(value, width)
    return f"({_fmt(value, 0)})".rjust(width)


def format_matrix(record: dict[str, Any], metric: str = "miou") -> str:
    """The result matrix R[t][j] as a text table, with the summary underneath. With ``eval_future`` the cells of
    tasks not yet adapted to (``j > t``) are in parentheses, and a row 0 holds the scores of the base alone
    (``record.initial``); a record without them prints as before."""
    tasks, rows = record["tasks"], record["matrix"][metric]
    initial = (record.get("initial") or {}).get(metric)
    ahead = initial is not None or any(v is not None for t, row in enumerate(rows) for v in row[t + 1:])
    width = max(7, *(len(t) for t in tasks))
    label_w = max(len(f"{len(tasks)} {t}") for t in tasks) + 2
    if initial is not None:
        label_w = max(label_w, len("0 base alone") + 2)
    model = record["model"]
    lines = [f"{record['sequence']} · {record['method']} · {model['name']} ({model['weights']}) · "
             f"{metric} (%), row = after step t, column = task j"
             + ("; (x) = task j not yet adapted to" if ahead else ""),
             "after step".ljust(label_w) + "".join(t.rjust(width + 2) for t in tasks)]
    if initial is not None:
        lines.append("0 base alone".ljust(label_w) + "".join(_cell(v, width + 2, True) for v in initial))
    for t, row in enumerate(rows):
        lines.append(f"{t + 1} {tasks[t]}".ljust(label_w)
                     + "".join(_cell(v, width + 2, j > t) for j, v in enumerate(row)))
    s = record.get("summary", {}).get(metric)
    if s:
        forgetting = ", ".join(f"{t} {_fmt(f, 0).strip()}" for t, f in zip(tasks, s["forgetting"])
                               if f is not None)
        fwt = s.get("forward_transfer")
        lines.append(f"final average {_fmt(s['final_average'], 0).strip()} · average incremental "
                     f"{_fmt(s['average_incremental'], 0).strip()} · BWT {_fmt(s['bwt'], 0).strip()}"
                     + (f" · FWT {_fmt(fwt, 0).strip()}" if fwt is not None else "")
                     + (f" · forgetting: {forgetting}" if forgetting else ""))
    return "\n".join(lines)


CUMULATIVE_GROUPS = ("old", "new", "all")


def format_cumulative(record: dict[str, Any]) -> str:
    """A class-incremental run's scores with every class seen so far, as MiB / PLOP / CoMFormer tabulate them:
    a row per step, columns old (the classes of step 1), new (those of the later steps) and all, for mIoU and
    (panoptic data) PQ, with the 95 % interval of the last step where the record has one. ``""`` for a record
    without them (another protocol, or a record written before they were kept)."""
    cumulative = record.get("cumulative") or {}
    metrics = [m for m in ("miou", "pq") if cumulative.get(m)]
    if not metrics:
        return ""
    tasks, width, gap = record["tasks"], 8, 3
    steps = max(len(cumulative[m]) for m in metrics)
    label_w = max(len("after step"), *(len(f"{t + 1} {tasks[t]}") for t in range(steps))) + 2
    titles = {"miou": "mIoU", "pq": "PQ"}
    model = record["model"]
    lines = [f"{record['sequence']} · {record['method']} · {model['name']} ({model['weights']}) · class-incremental "
             "(%), every class seen so far; old = classes of step 1, new = of steps 2..t",
             " " * label_w + "".join(" " * gap + titles[m].center(3 * width, "-") for m in metrics),
             "after step".ljust(label_w) + "".join(" " * gap + "".join(g.rjust(width) for g in CUMULATIVE_GROUPS)
                                                   for _ in metrics)]
    for t in range(steps):
        cells = []
        for m in metrics:
            row = cumulative[m][t] if t < len(cumulative[m]) else {}
            cells.append(" " * gap + "".join(_fmt(row.get(g), width) for g in CUMULATIVE_GROUPS))
        lines.append(f"{t + 1} {tasks[t]}".ljust(label_w) + "".join(cells))
    for m in metrics:
        bounds = (record.get("intervals") or {}).get(f"cumulative_{m}")
        if bounds:
            text = " · ".join(f"{g} {_fmt(b[0], 0).strip()}–{_fmt(b[1], 0).strip()}" for g in CUMULATIVE_GROUPS
                              if (b := bounds.get(g)))
            lines.append(f"95 % interval after step {steps} ({titles[m]}): {text}")
    return "\n".join(lines)

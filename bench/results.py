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


def format_matrix(record: dict[str, Any], metric: str = "miou") -> str:
    """The result matrix R[t][j] as a text table, with the summary underneath."""
    tasks, rows = record["tasks"], record["matrix"][metric]
    width = max(7, *(len(t) for t in tasks))
    label_w = max(len(f"{len(tasks)} {t}") for t in tasks) + 2
    model = record["model"]
    lines = [f"{record['sequence']} · {record['method']} · {model['name']} ({model['weights']}) · "
             f"{metric} (%), row = after step t, column = task j",
             "after step".ljust(label_w) + "".join(t.rjust(width + 2) for t in tasks)]
    for t, row in enumerate(rows):
        lines.append(f"{t + 1} {tasks[t]}".ljust(label_w) + "".join(_fmt(v, width + 2) for v in row))
    s = record.get("summary", {}).get(metric)
    if s:
        forgetting = ", ".join(f"{t} {_fmt(f, 0).strip()}" for t, f in zip(tasks, s["forgetting"])
                               if f is not None)
        lines.append(f"final average {_fmt(s['final_average'], 0).strip()} · average incremental "
                     f"{_fmt(s['average_incremental'], 0).strip()} · BWT {_fmt(s['bwt'], 0).strip()}"
                     + (f" · forgetting: {forgetting}" if forgetting else ""))
    return "\n".join(lines)

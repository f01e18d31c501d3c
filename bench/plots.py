"""Plots of run records: the heatmap of ``R[t][j]`` (drawn per run, and again by the cross-run report),
score-after-each-step curves, memory size vs score, and latency / recall of the memory at scale.

Drawn with matplotlib's Agg backend (no display needed) and written atomically. This module is on the per-run
path (``bench.run`` draws the heatmaps), so it must not import the cross-run report.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.io import atomic_write_bytes
from bench.runs import Run, number, row_means
from bench.tables import metric_title

PERF_SETTING = {"nprobe": 8, "ef_search": 64}  # swept kinds are drawn at the default index's setting


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def heatmap(record: Mapping[str, Any], metric: str, path: str | Path, title: str | None = None) -> Path:
    """PNG of ``R[t][j]`` for one metric: rows = after step t, columns = task j, each cell annotated with its
    score; cells without a score (``None``, NaN) are left blank. Colours span 0–100 for percent scores."""
    import numpy as np

    plt = _pyplot()
    tasks = list(record["tasks"])
    rows = record["matrix"][metric]
    n = len(tasks)
    values = np.full((n, n), np.nan)
    for t, row in enumerate(rows[:n]):
        for j, v in enumerate(row[:n]):
            if v is not None:
                values[t, j] = float(v)
    finite = values[np.isfinite(values)]
    lo, hi = 0.0, 100.0
    if finite.size and (finite.min() < 0 or finite.max() > 100):
        lo, hi = float(finite.min()), float(finite.max()) or 1.0
    size = max(3.5, 0.8 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=lo, vmax=hi)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=f"{metric_title(metric)} (%)")
    ax.set_xticks(range(n), tasks, rotation=45, ha="right")
    ax.set_yticks(range(n), [f"{t + 1} {name}" for t, name in enumerate(tasks)])
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after step t")
    if n <= 30:
        fontsize = max(5, 11 - n // 3)
        for (t, j), v in np.ndenumerate(values):
            if math.isfinite(v):
                shade = (v - lo) / (hi - lo) if hi > lo else 0.5
                ax.text(j, t, f"{v:.1f}", ha="center", va="center", fontsize=fontsize,
                        color="black" if shade > 0.6 else "white")
    ax.set_title(title or f"{record['sequence']} · {record['method']} · {metric_title(metric)}", fontsize=10)
    return _save(fig, Path(path))


def step_curves(runs: Sequence[Run], metric: str, path: Path) -> Path:
    """Mean score over the tasks seen so far after each step, one line per run (runs of one sequence)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    n_steps = 1
    for run in runs:
        means = row_means(run.record["matrix"][metric])
        if not means:
            continue
        n_steps = max(n_steps, len(means))
        ax.plot(range(1, len(means) + 1), means, marker="o", label=run.label)
    tasks = runs[0].record["tasks"]
    ticks = range(1, max(n_steps, len(tasks)) + 1)
    ax.set_xticks(list(ticks), [f"{t}\n{tasks[t - 1]}" if t <= len(tasks) else str(t) for t in ticks])
    ax.set_xlabel("step (task adapted to)")
    ax.set_ylabel(f"{metric_title(metric)} (%), mean over seen tasks")
    ax.set_title(f"{runs[0].sequence}: {metric_title(metric)} after each step", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def memory_scatter(runs: Sequence[Run], metric: str, path: Path) -> Path:
    """Final memory size (entries) against the final average score, one point per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = [float(r.memory_size()) for r in runs]  # type: ignore[arg-type]
    ys = [number(r.summary(metric).get("final_average")) for r in runs]
    for run, x, y in zip(runs, xs, ys):
        if y is None:
            continue
        ax.scatter([x], [y])
        ax.annotate(f"{run.sequence} · {run.label}", (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if min(xs) > 0 and max(xs) / min(xs) > 100:
        ax.set_xscale("log")
    ax.set_xlabel("memory size after the last step (entries)")
    ax.set_ylabel(f"final average {metric_title(metric)} (%)")
    ax.set_title(f"memory size vs final {metric_title(metric)}", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def perf_point(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """The point of a swept index kind (``row["sweep"]``) at ``PERF_SETTING``; the last point if none is."""
    for point in row["sweep"]:
        if all(point.get(k, v) == v for k, v in PERF_SETTING.items()):
            return point
    return row["sweep"][-1]


def latency_recall_plot(result: Mapping[str, Any], path: str | Path) -> Path:
    """Search latency and recall@16 against memory size, one panel column per dimension, one line per kind."""
    plt = _pyplot()
    rows = [r for r in result["memory"]["rows"] if "kind" in r]
    dims = sorted({r["dim"] for r in rows})
    colour = {kind: f"C{i}" for i, kind in enumerate(dict.fromkeys(r["kind"] for r in rows))}
    fig, axes = plt.subplots(2, len(dims), figsize=(5.5 * len(dims), 7), squeeze=False)
    for col, dim in enumerate(dims):
        for kind in dict.fromkeys(r["kind"] for r in rows if r["dim"] == dim):
            series = sorted((r["n"], perf_point(r)) for r in rows if r["dim"] == dim and r["kind"] == kind)
            sizes = [n for n, _ in series]
            axes[0][col].plot(sizes, [p["ms_per_image"] for _, p in series], "o-", color=colour[kind], label=kind)
            axes[1][col].plot(sizes, [p["recall_at_16"] for _, p in series], "o-", color=colour[kind], label=kind)
        axes[0][col].set(title=f"d = {dim}", xscale="log", yscale="log", ylabel="ms per image (64 queries)")
        axes[1][col].set(xscale="log", ylim=(0, 1.02), xlabel="memory entries", ylabel="recall@16 vs exact")
        for ax in axes[:, col]:
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Restricted k=16 search per image, " + ", ".join(f"{k} {v}" for k, v in PERF_SETTING.items()))
    fig.tight_layout()
    return _save(fig, Path(path))


def trend_plot(data: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Final average against commit, one panel per metric (``bench.history.trend_data`` each), one line per
    method, its tolerance band (around its latest reference value) shaded, regressions as red crosses."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], data):
        marked = False
        for i, (method, entry) in enumerate(panel["methods"].items()):
            colour = f"C{i}"
            pts = entry["points"]
            ax.plot([p["x"] for p in pts], [p["value"] for p in pts], "o-", color=colour, label=method, ms=4)
            if entry["band"]:
                ax.axhspan(*entry["band"], color=colour, alpha=0.15, lw=0)
            bad = [p for p in pts if p["regression"]]
            if bad:
                ax.plot([p["x"] for p in bad], [p["value"] for p in bad], "x", color="red", ms=10, mew=2,
                        label=None if marked else "regression")
                marked = True
        commits = panel["commits"]
        ax.set_xticks(range(len(commits)), commits, rotation=45, ha="right", fontsize=7)
        ax.set_xlim(-0.5, max(len(commits) - 0.5, 0.5))
        ax.set_xlabel("commit (oldest left)")
        ax.set_ylabel(f"final average {metric_title(panel['metric'])} (%)")
        ax.set_title(f"{panel['sequence']}: final {metric_title(panel['metric'])} across commits "
                     "(band: tolerance)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, Path(path))

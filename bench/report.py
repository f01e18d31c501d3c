"""Reports across runs: markdown and CSV tables, heatmaps of R, score-after-each-step curves, memory vs score.

Every number comes from the ``record.json`` files handed in; nothing is typed in. Plots are drawn with
matplotlib's Agg backend (no display needed) and, like the tables, written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.io import atomic_write_bytes, atomic_write_text
from bench.results import load_record
from datamodules.contract import DataError

SUMMARY_KEYS = ("final_average", "average_incremental", "mean_forgetting", "bwt")
SUMMARY_TITLES = {"final_average": "final avg", "average_incremental": "avg incremental",
                  "mean_forgetting": "mean forgetting", "bwt": "BWT"}
METRIC_TITLES = {"miou": "mIoU", "pq": "PQ", "pq_things": "PQ things", "pq_stuff": "PQ stuff", "sq": "SQ",
                 "rq": "RQ"}


def metric_title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric)


@dataclass
class Run:
    """One record and where it came from; ``slug`` names its files in the report folder."""

    path: Path
    record: dict[str, Any]
    slug: str = ""

    @property
    def run_id(self) -> str:
        return self.path.parent.name

    @property
    def sequence(self) -> str:
        return str(self.record["sequence"])

    @property
    def method(self) -> str:
        return str(self.record["method"])

    @property
    def model(self) -> str:
        m = self.record.get("model") or {}
        note = m.get("pretrained") or m.get("weights")
        return f"{m.get('name', '?')} ({note})" if note else str(m.get("name", "?"))

    @property
    def label(self) -> str:
        return f"{self.method} · {self.run_id}"

    def metrics(self) -> list[str]:
        return list(self.record.get("matrix", {}))

    def summary(self, metric: str) -> dict[str, Any]:
        return (self.record.get("summary") or {}).get(metric) or {}

    def memory_size(self) -> int | None:
        return memory_entries(self.record)

    def total_time(self, key: str) -> float | None:
        steps = (self.record.get("timings") or {}).get("steps") or []
        values = [s[key] for s in steps if s.get(key) is not None]
        return round(math.fsum(values), 3) if values else None

    def steps(self) -> str:
        return f"{self.record.get('steps_done', '?')}/{len(self.record.get('tasks', []))}"


def memory_entries(record: Mapping[str, Any], step: int | None = None) -> int | None:
    """Memory entries after ``step`` (1-based; default the last step done), from ``state_size[t]
    ["memory_entries"]`` or, in older records, ``memory_size[t]``; None for a run without a memory."""
    for key, pick in (("state_size", lambda v: v.get("memory_entries") if isinstance(v, Mapping) else None),
                      ("memory_size", lambda v: v)):
        sizes = record.get(key) or []
        t = len(sizes) - 1 if step is None else step - 1
        if 0 <= t < len(sizes) and pick(sizes[t]) is not None:
            return int(pick(sizes[t]))
    return None


def find_records(paths: Iterable[str | Path]) -> list[Path]:
    """``record.json`` files under each path (searched recursively), or the path itself if it is a file."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("record.json")))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder (expected a run folder or a record.json)")
    unique: dict[Path, Path] = {}
    for f in found:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    runs = []
    for path in find_records(paths):
        record = load_record(path)
        for key in ("sequence", "method", "tasks", "matrix"):
            if key not in record:
                raise ValueError(f"{path}: run record has no {key!r} field")
        runs.append(Run(path, record))
    runs.sort(key=lambda r: (r.sequence, r.method, r.run_id, str(r.path)))
    taken: set[str] = set()
    for run in runs:
        slug, n = _safe(f"{run.sequence}-{run.method}-{run.run_id}"), 2
        while slug in taken:  # the same run id found in two folders
            slug, n = _safe(f"{run.sequence}-{run.method}-{run.run_id}-{n}"), n + 1
        taken.add(slug)
        run.slug = slug
    return runs


def _number(value: Any) -> float | None:
    """A float, or None for a missing score; NaN stays NaN."""
    return None if value is None else float(value)


def row_means(matrix: Sequence[Sequence[float | None]]) -> list[float]:
    """Mean over the tasks seen after each filled step (row ``t``: tasks ``0..t``); stops at the first unfilled
    row. A NaN score makes its step's mean NaN."""
    out = []
    for t, row in enumerate(matrix):
        seen = [_number(v) for v in row[: t + 1]]
        if not seen or any(v is None for v in seen):
            break
        out.append(math.fsum(seen) / len(seen))  # type: ignore[arg-type]
    return out


# ---------------------------------------------------------------- plots


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
    ys = [_number(r.summary(metric).get("final_average")) for r in runs]
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


# ---------------------------------------------------------------- sequence notes


def sequence_notes(run: Run) -> tuple[str, dict[str, str]]:
    """The description and the per-task ``about`` notes of the run's sequence YAML (what each task tests), when
    that file can still be found and names the same sequence; empty otherwise. Notes are prose only: every
    number of the report still comes from the records."""
    import yaml

    from datamodules.sequence import TASKS_DIR

    seq = str((run.record.get("config") or {}).get("sequence") or run.sequence)
    path = Path(seq) if seq.endswith((".yaml", ".yml")) else TASKS_DIR / f"{seq}.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return "", {}
    if not isinstance(doc, dict) or str(doc.get("name", path.stem)) != run.sequence:
        return "", {}
    about = {str(t["name"]): " ".join(str(t["about"]).split()) for t in doc.get("tasks") or []
             if isinstance(t, dict) and t.get("name") and t.get("about")}
    return " ".join(str(doc.get("description") or "").split()), about


# ---------------------------------------------------------------- tables


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        text = f"{value:.{digits}f}"
        return text[1:] if text == f"-{0:.{digits}f}" else text
    return str(value)


def summary_rows(runs: Sequence[Run], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One flat row per run: identity, then ``<metric>_<summary>`` for every metric, then memory and times.
    Values are the record's own numbers, unrounded; absent ones are ``None``."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"sequence": run.sequence, "method": run.method, "model": run.model,
                               "run_id": run.run_id, "steps": run.steps(),
                               "complete": bool(run.record.get("complete"))}
        for metric in metrics:
            s = run.summary(metric)
            for key in SUMMARY_KEYS:
                row[f"{metric}_{key}"] = s.get(key)
        row["memory_size"] = run.memory_size()
        state = (run.record.get("state_size") or [{}])[-1]
        for key, value in sorted(state.items() if isinstance(state, Mapping) else ()):
            if key != "memory_entries":
                row[f"state_{key}"] = value
        row["adapt_s"] = run.total_time("adapt_s")
        row["eval_s"] = run.total_time("eval_s")
        row["record"] = str(run.path)
        rows.append(row)
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        # Runs keep different state (memory entries, trainable parameters): the columns are the union.
        fieldnames = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buf, fieldnames=fieldnames, restval="", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else (repr(v) if isinstance(v, float) else v)
                             for k, v in row.items()})
    return buf.getvalue()


def _md_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return lines


def _matrix_md(run: Run, metric: str) -> list[str]:
    tasks = run.record["tasks"]
    body = []
    for t, row in enumerate(run.record["matrix"][metric]):
        body.append([f"{t + 1} {tasks[t]}", *(_fmt(_number(v)) if v is not None else "–" for v in row)])
    return _md_table(["after step", *tasks], body)


def final_row(run: Run, metric: str) -> list[float | None]:
    """The last row of R the run has finished (its final scores per task); ``None`` where a task has none."""
    matrix = run.record["matrix"].get(metric) or []
    done = int(run.record.get("steps_done") or 0)
    row = matrix[done - 1] if 0 < done <= len(matrix) else [None] * len(run.record["tasks"])
    return [_number(v) for v in row]


def _final_rows_md(seq_runs: Sequence[Run], metric: str) -> list[str]:
    """Per run, the final score on each task, and its difference to the zero-shot run of the same model."""
    runs = [r for r in seq_runs if metric in r.metrics()]
    zeroshot = {}
    for run in runs:
        if run.method == "zeroshot" and run.record.get("complete"):
            zeroshot.setdefault(run.model, run)
    body = []
    for run in runs:
        ref = zeroshot.get(run.model) if run.method != "zeroshot" else None
        base = final_row(ref, metric) if ref else [None] * len(run.record["tasks"])
        cells = []
        for value, b in zip(final_row(run, metric), base):
            text = "–" if value is None else _fmt(value)
            if value is not None and b is not None and not (math.isnan(value) or math.isnan(b)):
                text += f" ({_fmt(value - b) if value - b < 0 else '+' + _fmt(value - b)})"
            cells.append(text)
        body.append([run.method, run.run_id, *cells])
    refs = ", ".join(f"`{r.run_id}`" for r in zeroshot.values())
    note = f"; in brackets the difference to zero-shot (run {refs} of the same model)" if refs else ""
    return [f"Final {metric_title(metric)} per task (last row of R{note}):", "",
            *_md_table(["method", "run", *seq_runs[0].record["tasks"]], body)]


def _markdown(runs: Sequence[Run], metrics_by_seq: Mapping[str, list[str]], files: Mapping[str, Any],
              out_dir: Path, perf: tuple[Path, Mapping[str, Any]] | None = None) -> str:
    def rel(p: Path | str) -> str:
        return Path(os.path.relpath(Path(p).resolve(), out_dir.resolve())).as_posix()

    lines = ["# Results", "",
             f"Generated by `python -m bench report` from {len(runs)} run record(s); every number below is read "
             "from those files. Scores in %, averages over the tasks seen; forgetting > 0 and BWT < 0 mean "
             "forgotten.", ""]
    for seq, metrics in metrics_by_seq.items():
        seq_runs = [r for r in runs if r.sequence == seq]
        lines += [f"## {seq}", ""]
        description, about = sequence_notes(seq_runs[0])
        if description:
            lines += [description, ""]
        lines += ["tasks: " + " → ".join(seq_runs[0].record["tasks"]), ""]
        if about:
            tasks = seq_runs[0].record["tasks"]
            lines += [*_md_table(["task", "what it tests"], [[t, about.get(t, "")] for t in tasks]), ""]
        for metric in metrics:
            header = ["method", "model", "run", "steps", *(SUMMARY_TITLES[k] for k in SUMMARY_KEYS),
                      "memory", "adapt (s)", "R"]
            body = []
            for run in seq_runs:
                if metric not in run.metrics():
                    continue
                s = run.summary(metric)
                png = files["heatmaps"].get((run.slug, metric))
                body.append([run.method, run.model, run.run_id, run.steps(),
                             *(_fmt(_number(s.get(k))) for k in SUMMARY_KEYS),
                             _fmt(run.memory_size()), _fmt(run.total_time("adapt_s")),
                             f"[heatmap]({rel(png)})" if png else ""])
            lines += [f"### {metric_title(metric)}", "", *_md_table(header, body), "",
                      *_final_rows_md(seq_runs, metric), ""]
            curve = files["curves"].get((seq, metric))
            if curve:
                lines += [f"![{seq}: {metric_title(metric)} after each step]({rel(curve)})", ""]
        for run in seq_runs:
            lines += [f"### {run.method} · {run.run_id}", "",
                      f"model {run.model}, record `{rel(run.path)}`", ""]
            for metric in run.metrics():
                lines += [f"{metric_title(metric)}, row = after step t, column = task j:", "",
                          *_matrix_md(run, metric), ""]
                png = files["heatmaps"].get((run.slug, metric))
                if png:
                    lines += [f"![{run.slug} {metric}]({rel(png)})", ""]
    if files["scatter"]:
        lines += ["## Memory size vs final mIoU", "", f"![memory size vs final mIoU]({rel(files['scatter'])})", ""]
    if perf is not None:
        plot = files.get("perf_plot")
        lines += perf_markdown(perf[1], rel(perf[0]), rel(plot) if plot else None)
    return "\n".join(lines)


# ---------------------------------------------------------------- memory at scale (benchmarks/perf.py)

# Headline keys of results/perf/latest.json with the bound issue 9 sets on each (None: no bound).
PERF_HEADLINE = [
    ("retrieval_fraction_1m", "retrieval + fusion / whole predict time per image, 1M entries", "<=", 0.05),
    ("recall_at_16_1m", "recall@16 of the default index vs exact search, 1M entries", ">=", 0.95),
    ("bytes_per_entry", "bytes per entry, default compressed kind", "<=", 128),
    ("miou_loss_compressed", "final mIoU, flat fp32 minus compressed (points)", "<=", 0.5),
    ("adapt_overhead_fraction", "adapt: data + pooling + memory add / backbone forward", "<=", 0.10),
    ("pq_speedup_vs_torchmetrics", "PQ metric speed-up over torchmetrics", None, None),
]
PERF_SETTING = {"nprobe": 8, "ef_search": 64}  # swept kinds are drawn at the default index's setting


def _perf_point(row: Mapping[str, Any]) -> Mapping[str, Any]:
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
            series = sorted((r["n"], _perf_point(r)) for r in rows if r["dim"] == dim and r["kind"] == kind)
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


def perf_markdown(result: Mapping[str, Any], source: str, plot: str | None) -> list[str]:
    """The headline figures against their bounds, and latency/recall of every kind at each size."""
    lines = ["## Memory at scale", "",
             f"From `{source}` (`make perf`, {'quick' if result.get('quick') else 'full'} run); "
             f"default index {result.get('default_index')}, compressed {result.get('compressed_index')}.", ""]
    body = []
    for key, title, op, bound in PERF_HEADLINE:
        value = result.get(key)
        if op is None or value is None:
            verdict = "–" if value is None else ""
        else:
            verdict = "met" if (value <= bound if op == "<=" else value >= bound) else "NOT met"
        digits = 4 if value is not None and abs(value) < 1 else 1
        body.append([f"`{key}`", title, _fmt(value, digits), "" if op is None else f"{op} {bound}", verdict])
    lines += [*_md_table(["key", "what", "value", "bound", ""], body), ""]
    table = []
    for row in result["memory"]["rows"]:
        if "kind" not in row:
            continue
        point = _perf_point(row)
        table.append([str(row["dim"]), f"{row['n']:,}", row["kind"], _fmt(point["ms_per_image"], 2),
                      _fmt(point["recall_at_16"], 4), _fmt(row["bytes_per_entry"], 1), _fmt(row["build_s"], 1)])
    lines += [*_md_table(["d", "entries", "kind", "ms / image", "recall@16", "bytes / entry", "build (s)"],
                         table), ""]
    if plot:
        lines += [f"![latency and recall against memory size]({plot})", ""]
    return lines


# ---------------------------------------------------------------- entry point


def build_report(run_dirs: Sequence[str | Path], out_dir: str | Path, perf: str | Path | None = None
                 ) -> dict[str, Any]:
    """Read every ``record.json`` under ``run_dirs`` and write into ``out_dir``: ``summary.md``,
    ``summary.csv``, ``<seq>-<method>-<run-id>-<metric>.png`` (heatmap of R per run and metric),
    ``<seq>-<metric>-steps.png`` (curves per sequence) and ``memory-vs-miou.png`` (when more than one run
    has a memory). With ``perf`` (a JSON of benchmarks/perf.py), a memory-at-scale section and
    ``perf-latency-recall.png``. Returns what was written: paths and the summary rows."""
    out_dir = Path(out_dir)
    runs = load_runs(run_dirs)
    if not runs:
        raise FileNotFoundError(f"no record.json under {', '.join(map(str, run_dirs)) or '(no paths given)'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_by_seq: dict[str, list[str]] = {}
    for run in runs:
        known = metrics_by_seq.setdefault(run.sequence, [])
        known += [m for m in run.metrics() if m not in known]
    all_metrics = list(dict.fromkeys(m for ms in metrics_by_seq.values() for m in ms))

    heatmaps: dict[tuple[str, str], Path] = {}
    for run in runs:
        for metric in run.metrics():
            title = f"{run.sequence} · {run.method} · {run.run_id}\n{metric_title(metric)} (%)"
            heatmaps[run.slug, metric] = heatmap(run.record, metric, out_dir / f"{run.slug}-{metric}.png", title)
    curves: dict[tuple[str, str], Path] = {}
    for seq, metrics in metrics_by_seq.items():
        for metric in metrics:
            seq_runs = [r for r in runs if r.sequence == seq and metric in r.metrics()]
            curves[seq, metric] = step_curves(seq_runs, metric, out_dir / f"{_safe(seq)}-{metric}-steps.png")
    with_memory = [r for r in runs if r.memory_size() is not None and "miou" in r.metrics()]
    scatter = memory_scatter(with_memory, "miou", out_dir / "memory-vs-miou.png") if len(with_memory) > 1 else None

    files: dict[str, Any] = {"heatmaps": heatmaps, "curves": curves, "scatter": scatter}
    perf_result = None
    if perf is not None:
        perf = Path(perf)
        try:
            perf_result = (perf, json.loads(perf.read_text()))
        except (OSError, ValueError) as exc:
            raise DataError(f"{perf}: cannot read the perf results ({exc}); run `make perf` to write them") from None
        files["perf_plot"] = latency_recall_plot(perf_result[1], out_dir / "perf-latency-recall.png")
    rows = summary_rows(runs, all_metrics)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    atomic_write_text(csv_path, _csv_text(rows))
    atomic_write_text(md_path, _markdown(runs, metrics_by_seq, files, out_dir, perf_result) + "\n")
    return {
        "out_dir": str(out_dir), "records": [str(r.path) for r in runs], "metrics": all_metrics,
        "summary_md": str(md_path), "summary_csv": str(csv_path),
        "heatmaps": {f"{slug}/{metric}": str(p) for (slug, metric), p in heatmaps.items()},
        "curves": {f"{seq}/{metric}": str(p) for (seq, metric), p in curves.items()},
        "scatter": str(scatter) if scatter else None, "rows": rows,
    }

"""The cross-run report: markdown and CSV tables, with the plots of ``bench.plots``, from many run records.

Every number comes from the ``record.json`` files handed in; nothing is typed in. Tables, like the plots, are
written atomically. ``heatmap`` and ``latency_recall_plot`` are drawn by ``bench.plots`` and importable from here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.breakdowns import breakdowns_md
from bench.io import atomic_write_text
from bench.perf_report import perf_markdown
from bench.plots import heatmap, latency_recall_plot, memory_scatter, step_curves
from bench.runs import Run, load_runs, number, safe_name
from bench.tables import fmt, md_table, metric_title
from datamodules.contract import DataError

SUMMARY_KEYS = ("final_average", "average_incremental", "mean_forgetting", "bwt")
SUMMARY_TITLES = {"final_average": "final avg", "average_incremental": "avg incremental",
                  "mean_forgetting": "mean forgetting", "bwt": "BWT"}


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


def _matrix_md(run: Run, metric: str) -> list[str]:
    tasks = run.record["tasks"]
    body = []
    for t, row in enumerate(run.record["matrix"][metric]):
        body.append([f"{t + 1} {tasks[t]}", *(fmt(number(v)) if v is not None else "–" for v in row)])
    return md_table(["after step", *tasks], body)


def final_row(run: Run, metric: str) -> list[float | None]:
    """The last row of R the run has finished (its final scores per task); ``None`` where a task has none."""
    matrix = run.record["matrix"].get(metric) or []
    done = int(run.record.get("steps_done") or 0)
    row = matrix[done - 1] if 0 < done <= len(matrix) else [None] * len(run.record["tasks"])
    return [number(v) for v in row]


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
            text = "–" if value is None else fmt(value)
            if value is not None and b is not None and not (math.isnan(value) or math.isnan(b)):
                text += f" ({fmt(value - b) if value - b < 0 else '+' + fmt(value - b)})"
            cells.append(text)
        body.append([run.method, run.run_id, *cells])
    refs = ", ".join(f"`{r.run_id}`" for r in zeroshot.values())
    note = f"; in brackets the difference to zero-shot (run {refs} of the same model)" if refs else ""
    return [f"Final {metric_title(metric)} per task (last row of R{note}):", "",
            *md_table(["method", "run", *seq_runs[0].record["tasks"]], body)]


def _retention_md(seq_runs: Sequence[Run]) -> list[str]:
    """Retention (:mod:`bench.retention`) of each knn run against the zeroshot run of its model, where the
    memory lacked some evaluated class at a step (runs with ``eval_future``); nothing otherwise."""
    from bench.protocols import load_counts
    from bench.retention import last_unheld_step, retention

    lines = []
    for knn in (r for r in seq_runs if r.method == "knn" and r.record.get("memory_classes")):
        base = next((r for r in seq_runs if r.method == "zeroshot" and r.model == knn.model
                     and r.record.get("sequence_hash") == knn.record.get("sequence_hash")), None)
        step = last_unheld_step(knn.record, base.record) if base is not None else None
        if base is None or step is None:
            continue
        counts = [load_counts(run.path.parent, step) for run in (knn, base)]
        r = retention(knn.record, base.record, *counts, step=step - 1)
        rows = [(task, ", ".join(e["classes"]), e) for task, e in r["tasks"].items()]
        rows.append(("all", str(r["overall"]["classes"]), r["overall"]))
        body = [[task, classes, fmt(e["diff"]), _interval(e["interval"])] for task, classes, e in rows]
        lines += [f"Retention of knn · {knn.run_id} against zeroshot · {base.run_id} after step {step}: per-class "
                  "IoU difference on the classes the memory holds no entries of (95 % paired bootstrap interval):",
                  "", *md_table(["task", "classes", "IoU knn − zeroshot", "95 % interval"], body), ""]
    return lines


def _interval(bounds: list[float] | None) -> str:
    return f"[{bounds[0]:+.1f}, {bounds[1]:+.1f}]" if bounds else ""


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
            lines += [*md_table(["task", "what it tests"], [[t, about.get(t, "")] for t in tasks]), ""]
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
                             *(fmt(number(s.get(k))) for k in SUMMARY_KEYS),
                             fmt(run.memory_size()), fmt(run.total_time("adapt_s")),
                             f"[heatmap]({rel(png)})" if png else ""])
            lines += [f"### {metric_title(metric)}", "", *md_table(header, body), "",
                      *_final_rows_md(seq_runs, metric), ""]
            curve = files["curves"].get((seq, metric))
            if curve:
                lines += [f"![{seq}: {metric_title(metric)} after each step]({rel(curve)})", ""]
        lines += _retention_md(seq_runs)
        for run in seq_runs:
            lines += [f"### {run.method} · {run.run_id}", "",
                      f"model {run.model}, record `{rel(run.path)}`", ""]
            for metric in run.metrics():
                lines += [f"{metric_title(metric)}, row = after step t, column = task j:", "",
                          *_matrix_md(run, metric), ""]
                png = files["heatmaps"].get((run.slug, metric))
                if png:
                    lines += [f"![{run.slug} {metric}]({rel(png)})", ""]
            lines += breakdowns_md(run.record)
    if files["scatter"]:
        lines += ["## Memory size vs final mIoU", "", f"![memory size vs final mIoU]({rel(files['scatter'])})", ""]
    if perf is not None:
        plot = files.get("perf_plot")
        lines += perf_markdown(perf[1], rel(perf[0]), rel(plot) if plot else None)
    return "\n".join(lines)


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
            curves[seq, metric] = step_curves(seq_runs, metric, out_dir / f"{safe_name(seq)}-{metric}-steps.png")
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


def write_dashboard(summary_md: Path, dashboard: Path) -> None:
    """The report's markdown, with links made relative to the dashboard page (results/README.md)."""
    prefix = Path(os.path.relpath(summary_md.parent.resolve(), dashboard.parent.resolve()))
    text = re.sub(r"\]\(([^)/]+\.png)\)", lambda m: f"]({(prefix / m.group(1)).as_posix()})", summary_md.read_text())
    atomic_write_text(dashboard, text)

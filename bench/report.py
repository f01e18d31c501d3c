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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.breakdowns import breakdowns_md
from bench.history import HEADLINE_METRICS
from bench.io import atomic_write_text
from bench.perf_report import perf_markdown
from bench.plots import heatmap, latency_recall_plot, memory_scatter, step_curves
from bench.runs import Run, load_runs, number, safe_name
from bench.tables import fmt, md_table, metric_title, relink
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


def _final_rows_md(run: Run, seq_runs: Sequence[Run], metric: str) -> list[str]:
    """The run's final score on each task, and its difference to the zero-shot run of the same model (the
    latest complete one of the sequence)."""
    ref = None
    if run.method != "zeroshot":
        zeroshot = [r for r in seq_runs if r.method == "zeroshot" and r.model == run.model and
                    r.record.get("complete") and metric in r.metrics()]
        ref = latest_per_group(zeroshot)[0][0] if zeroshot else None
    base = final_row(ref, metric) if ref else [None] * len(run.record["tasks"])
    cells = []
    for value, b in zip(final_row(run, metric), base):
        text = "–" if value is None else fmt(value)
        if value is not None and b is not None and not (math.isnan(value) or math.isnan(b)):
            text += f" ({fmt(value - b) if value - b < 0 else '+' + fmt(value - b)})"
        cells.append(text)
    note = f"; in brackets the difference to zero-shot (run `{ref.run_id}` of the same model)" if ref else ""
    return [f"Final {metric_title(metric)} per task (last row of R{note}):", "",
            *md_table(["method", "run", *run.record["tasks"]], [[run.method, run.run_id, *cells]])]


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


def latest_per_group(seq_runs: Sequence[Run]) -> tuple[list[Run], list[Run]]:
    """The dashboard's rows: per method × model × base × proposer the complete run whose record was written last
    (an unfinished one only when none is complete; the same run under ``ci``, ``reference`` and its hash id is one
    row); and the others, for a link each."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in seq_runs:
        rec = run.record
        groups.setdefault((run.method, run.model, str(rec.get("base") or ""), str(rec.get("proposer") or "")),
                          []).append(run)
    from bench.compare import COMPARE_ORDER

    shown, others = [], []
    for members in groups.values():
        members = sorted(members, key=lambda r: (bool(r.record.get("complete")), r.path.stat().st_mtime, r.run_id))
        shown.append(members[-1])
        others += members[:-1]
    order = {m: i for i, m in enumerate(COMPARE_ORDER)}
    shown.sort(key=lambda r: (order.get(r.method, len(order)), r.method, r.model))
    return shown, others


def _headline_md(seq_runs: Sequence[Run]) -> list[str]:
    """One row per group (latest run): summary of mIoU, final PQ where recorded, memory, adapt time and the
    final mIoU per task; the run links to its page."""
    shown, others = latest_per_group(seq_runs)
    tasks = seq_runs[0].record["tasks"]
    has_pq = any("pq" in r.metrics() for r in shown)
    header = ["method", "model", "base", "proposer", "run", *(f"mIoU {SUMMARY_TITLES[k]}" for k in SUMMARY_KEYS),
              *(["PQ final avg"] if has_pq else []), "memory", "adapt (s)", *tasks]
    body = []
    for run in shown:
        s = run.summary("miou")
        pq = [fmt(number(run.summary("pq").get("final_average")))] if has_pq else []
        final = [fmt(v) if v is not None else "–" for v in final_row(run, "miou")] if "miou" in run.metrics() \
            else [""] * len(tasks)
        body.append([run.method, run.model, str(run.record.get("base") or ""), str(run.record.get("proposer") or ""),
                     f"[{run.run_id}]({run.slug}.md)", *(fmt(number(s.get(k))) for k in SUMMARY_KEYS), *pq,
                     fmt(run.memory_size()), fmt(run.total_time("adapt_s")), *final])
    lines = [*md_table(header, body), "",
             f"Scores in %; the last {len(tasks)} columns are the final mIoU per task (last row of R). "
             "A row is the latest run of its method, model, base and proposer; its page has R, heatmaps and "
             "breakdowns.", ""]
    if others:
        links = ", ".join(f"[{r.method} · {r.run_id}]({r.slug}.md)" for r in others)
        lines += [f"Other runs (earlier, or the same configuration under another name): {links}", ""]
    return lines


def _history_md(seq: str, lines: Sequence[Mapping[str, Any]], png: Path | None, rel: Any) -> list[str]:
    seq_lines = [x for x in lines if x["sequence"] == seq]
    if not seq_lines or png is None:
        return []
    bad = [f"{x['method']} at {x['commit'][:10]} ({x['source']})" for x in seq_lines if x["status"] == "regression"]
    refs = [x for x in seq_lines if x["source"] == "reference"]
    out = [f"Across commits ({len(refs)} reference versions, {len(seq_lines) - len(refs)} CI lines, from the "
           "history file): " + ("regressions: " + "; ".join(bad) if bad else "no regression."), "",
           f"![{seq}: final scores across commits]({rel(png)})", ""]
    return out


def _dashboard_md(runs: Sequence[Run], metrics_by_seq: Mapping[str, list[str]], files: Mapping[str, Any],
                  out_dir: Path, history: Sequence[Mapping[str, Any]],
                  perf: tuple[Path, Mapping[str, Any]] | None = None) -> str:
    def rel(p: Path | str) -> str:
        return Path(os.path.relpath(Path(p).resolve(), out_dir.resolve())).as_posix()

    lines = ["# Results", "",
             f"Generated by `python -m bench report` from {len(runs)} run record(s) and the history across commits "
             "(`results/history.jsonl`, `python -m bench history`); every number is read from those files. "
             "Forgetting > 0 and BWT < 0 mean forgotten.", ""]
    for seq in metrics_by_seq:
        seq_runs = [r for r in runs if r.sequence == seq]
        lines += [f"## {seq}", ""]
        description, about = sequence_notes(seq_runs[0])
        if description:
            lines += [description, ""]
        tasks = seq_runs[0].record["tasks"]
        lines += ["tasks: " + " → ".join(tasks), ""]
        if about:
            lines += [*md_table(["task", "what it tests"], [[t, about.get(t, "")] for t in tasks]), ""]
        lines += _headline_md(seq_runs)
        lines += _history_md(seq, history, files["trends"].get(seq), rel)
        curves = [f"![{seq}: {metric_title(m)} after each step]({rel(p)})" for m in HEADLINE_METRICS
                  if (p := files["curves"].get((seq, m)))]
        if curves:
            lines += [" ".join(curves), ""]
        lines += _retention_md(seq_runs)
    if files["memory_plots"]:
        lines += ["## Accuracy against memory size", ""]
        for png in files["memory_plots"]:
            page = png.with_suffix(".md")
            lines += [f"![{png.stem}]({rel(png)})" + (f" ([table]({rel(page)}))" if page.is_file() else ""), ""]
    if files["scatter"]:
        lines += ["## Memory size vs final mIoU", "", f"![memory size vs final mIoU]({rel(files['scatter'])})", ""]
    if perf is not None:
        plot = files.get("perf_plot")
        lines += perf_markdown(perf[1], rel(perf[0]), rel(plot) if plot else None)
    return "\n".join(lines)


def _run_page_md(run: Run, seq_runs: Sequence[Run], files: Mapping[str, Any], out_dir: Path) -> str:
    """One run's page: identity, then per metric R (table and heatmap) and the final scores against zero-shot,
    then the breakdowns (class-incremental, class groups)."""
    rec = run.record
    lines = [f"# {run.sequence} · {run.method} · {run.run_id}", "",
             f"model {run.model}, base {rec.get('base')}, proposer {rec.get('proposer')}, config hash "
             f"`{rec.get('config_hash')}`, commit `{rec.get('git_commit')}`, {run.steps()} steps; record "
             f"`{Path(os.path.relpath(run.path.resolve(), out_dir.resolve())).as_posix()}`", "",
             "[back to the dashboard](summary.md)", ""]
    for metric in run.metrics():
        lines += [f"## {metric_title(metric)}", "", "Row = after step t, column = task j:", "",
                  *_matrix_md(run, metric), ""]
        png = files["heatmaps"].get((run.slug, metric))
        if png:
            lines += [f"![{run.slug} {metric}]({png.name})", ""]
        lines += [*_final_rows_md(run, seq_runs, metric), ""]
    lines += breakdowns_md(rec)
    return "\n".join(lines)


# ---------------------------------------------------------------- entry point


def _memory_plots(memory_dir: str | Path | None) -> list[Path]:
    """Every ``<sequence>-<method>.png`` of the accuracy-vs-memory-size benchmark; none when the folder is absent."""
    return sorted(Path(memory_dir).glob("*.png")) if memory_dir is not None else []


def build_report(run_dirs: Sequence[str | Path], out_dir: str | Path, perf: str | Path | None = None,
                 history: Sequence[str | Path] = (), memory_dir: str | Path | None = None) -> dict[str, Any]:
    """Read every ``record.json`` under ``run_dirs`` and write into ``out_dir``: ``summary.md`` (the dashboard:
    one table per sequence, trends, plots), ``summary.csv`` (every run), ``<slug>.md`` (one page per run) with
    ``<slug>-<metric>.png`` (heatmap of R per run and metric), ``<seq>-miou-steps.png`` (curves per sequence),
    ``<seq>-history.png`` (final scores across commits, from the ``history`` files, :mod:`bench.history`) and
    ``memory-vs-miou.png`` (when more than one run has a memory). ``memory_dir``: the accuracy-vs-memory-size
    plots to show (``results/memory``). With ``perf`` (a JSON of benchmarks/perf.py), a memory-at-scale section
    and ``perf-latency-recall.png``. Files a previous report left in ``out_dir`` and this one did not write are
    removed. Returns what was written: paths and the summary rows."""
    from bench.history import read_history, trend_data
    from bench.plots import trend_plot

    out_dir = Path(out_dir)
    runs = load_runs(run_dirs)
    if not runs:
        raise FileNotFoundError(f"no record.json under {', '.join(map(str, run_dirs)) or '(no paths given)'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = {run.slug: out_dir / f"{run.slug}.md" for run in runs}
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
        for metric in (m for m in HEADLINE_METRICS if m in metrics):  # the dashboard's rows only
            seq_runs = [r for r in latest_per_group([r for r in runs if r.sequence == seq]
                                                    )[0] if metric in r.metrics()]
            curves[seq, metric] = step_curves(seq_runs, metric, out_dir / f"{safe_name(seq)}-{metric}-steps.png")
    lines = [line for path in history for line in read_history(path)]
    trends: dict[str, Path] = {}
    for seq in metrics_by_seq:
        panels = [d for m in HEADLINE_METRICS if (d := trend_data(lines, seq, m))["methods"]]
        if panels:
            trends[seq] = trend_plot(panels, out_dir / f"{safe_name(seq)}-history.png")
    with_memory = [r for r in runs if r.memory_size() is not None and "miou" in r.metrics()]
    scatter = memory_scatter(with_memory, "miou", out_dir / "memory-vs-miou.png") if len(with_memory) > 1 else None

    files: dict[str, Any] = {"heatmaps": heatmaps, "curves": curves, "scatter": scatter, "trends": trends,
                             "memory_plots": _memory_plots(memory_dir)}
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
    for run in runs:
        seq_runs = [r for r in runs if r.sequence == run.sequence]
        atomic_write_text(pages[run.slug], _run_page_md(run, seq_runs, files, out_dir) + "\n")
    atomic_write_text(md_path, _dashboard_md(runs, metrics_by_seq, files, out_dir, lines, perf_result) + "\n")
    written = {csv_path, md_path, *pages.values(), *heatmaps.values(), *curves.values(), *trends.values(),
               *([scatter] if scatter else []), *([files["perf_plot"]] if perf_result else [])}
    _remove_stale(out_dir, written)
    return {
        "out_dir": str(out_dir), "records": [str(r.path) for r in runs], "metrics": all_metrics,
        "summary_md": str(md_path), "summary_csv": str(csv_path), "pages": {slug: str(p) for slug, p in pages.items()},
        "heatmaps": {f"{slug}/{metric}": str(p) for (slug, metric), p in heatmaps.items()},
        "curves": {f"{seq}/{metric}": str(p) for (seq, metric), p in curves.items()},
        "trends": {seq: str(p) for seq, p in trends.items()},
        "scatter": str(scatter) if scatter else None, "rows": rows,
    }


MANIFEST = ".report-files"  # what the last report wrote into its folder


def _remove_stale(out_dir: Path, written: set[Path]) -> None:
    """Remove the files the previous report wrote (its manifest) and this one did not (pages and plots of runs no
    longer reported), so the folder holds only what the dashboard links; then write this report's manifest."""
    manifest = out_dir / MANIFEST
    names = {p.name for p in written}
    previous = manifest.read_text().split("\n") if manifest.is_file() else []
    for name in previous:
        if name and name not in names and "/" not in name and (out_dir / name).is_file():
            (out_dir / name).unlink()
    atomic_write_text(manifest, "".join(f"{n}\n" for n in sorted(names)))


def write_dashboard(summary_md: Path, dashboard: Path) -> None:
    """The report's markdown, with links (images and pages) made relative to the dashboard page
    (results/README.md)."""
    atomic_write_text(dashboard, relink(summary_md.read_text(), summary_md.parent, dashboard.parent))

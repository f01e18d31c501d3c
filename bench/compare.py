"""``python -m bench compare``: every method on one sequence (finished runs reused), one side-by-side table.

Below the table: paired differences (the reference method, ``knn`` when present and else the first, minus each
other method, with 95 % paired bootstrap intervals over the evaluation images, :func:`bench.protocols.
paired_intervals`) and retention (knn minus zeroshot on the classes the memory holds nothing of,
:mod:`bench.retention`). ``seeds=1,2,3`` runs each method whose result depends on SEED (``Method.uses_seed``)
once per seed and reports the mean ± sample standard deviation over them; the others run once.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import ConfigError
from bench.io import atomic_write_text

COMPARE_ORDER = ("zeroshot", "knn", "finetune", "replay", "joint")
COLUMNS = ("method", "seeds", "final average", "final average 95% CI", "average incremental",
           "average incremental 95% CI", "mean forgetting", "BWT", "adapt time (s)", "kept state")
DIFF_COLUMNS = ("difference", "final average", "final average 95% CI", "average incremental",
                "average incremental 95% CI", "paired images")
RETENTION_COLUMNS = ("task", "classes the memory holds nothing of", "IoU knn - zeroshot", "95% CI")


@dataclass
class Compared:
    """One finished run of the comparison: its method, the SEED it ran with when the method uses one, its record
    and its run folder (where its per-image counts are)."""

    method: str
    seed: int | None
    record: Any
    out: Path


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return text.replace("-0.0", "0.0").replace("+0.0", "0.0")


def _ci(bounds: list[float] | None, signed: bool = False) -> str:
    return f"[{_num(bounds[0], signed)}, {_num(bounds[1], signed)}]" if bounds else ""


def _state(record: Any) -> str:
    last = record["state_size"][-1] if record.get("state_size") else {}
    parts = []
    if "memory_entries" in last:
        parts.append(f"{last['memory_entries']} memory entries ({last['memory_bytes'] / 1024:.0f} KiB)")
    if "trainable_params" in last:
        parts.append(f"{last['trainable_params']} trainable parameters")
    if "replay_buffer" in last:
        parts.append(f"{last['replay_buffer']} replay exemplars")
    return ", ".join(parts) or "nothing"


def _spread(values: list[float | None]) -> str:
    """Mean ± sample standard deviation of one figure over seeds (blank when a run has none)."""
    if any(v is None for v in values):
        return ""
    known = [float(v) for v in values if v is not None]
    return f"{_num(statistics.mean(known))} ± {statistics.stdev(known):.1f}"


def comparison_rows(runs: list[Compared], metric: str = "miou") -> list[dict[str, str]]:
    """One row per method; a method run with several seeds gets mean ± sample std and no interval."""
    rows = []
    for method in dict.fromkeys(r.method for r in runs):
        group = [r for r in runs if r.method == method]
        records = [r.record for r in group]
        summaries = [rec["summary"][metric] for rec in records]
        adapt = [sum(step["adapt_s"] for step in rec["timings"]["steps"]) for rec in records]
        seeds = ",".join(str(r.seed) for r in group if r.seed is not None)
        if len(group) == 1:
            s, ci = summaries[0], (records[0].get("intervals") or {}).get(metric) or {}
            row = {"final average": _num(s["final_average"]), "final average 95% CI": _ci(ci.get("final_average")),
                   "average incremental": _num(s["average_incremental"]),
                   "average incremental 95% CI": _ci(ci.get("average_incremental")),
                   "mean forgetting": _num(s["mean_forgetting"]), "BWT": _num(s["bwt"])}
        else:
            row = {key: _spread([s[field] for s in summaries]) for key, field in (
                ("final average", "final_average"), ("average incremental", "average_incremental"),
                ("mean forgetting", "mean_forgetting"), ("BWT", "bwt"))}
            row |= {"final average 95% CI": "", "average incremental 95% CI": ""}
        rows.append({"method": method, "seeds": seeds, **row, "adapt time (s)": f"{statistics.mean(adapt):.1f}",
                     "kept state": _state(records[0])})
    return rows


def _label(run: Compared) -> str:
    return run.method if run.seed is None else f"{run.method} (seed {run.seed})"


def difference_rows(runs: list[Compared]) -> list[dict[str, str]]:
    """The reference method (knn when present, else the first; its first seed) minus every other run."""
    from bench.protocols import paired_intervals

    methods = [r.method for r in runs]
    ref = runs[methods.index("knn") if "knn" in methods else 0]
    rows = []
    for other in runs:
        if other.method == ref.method:
            continue
        d = paired_intervals(ref.out, ref.record, other.out, other.record)
        row = {"difference": f"{_label(ref)} - {_label(other)}"}
        if "unpaired" in d:
            rows.append({**row, "paired images": f"not paired: {d['unpaired']}"})
            continue
        for key, title in (("final_average", "final average"), ("average_incremental", "average incremental")):
            row |= {title: _num(d[key]["diff"], signed=True), f"{title} 95% CI": _ci(d[key]["interval"], True)}
        rows.append({**row, "paired images": str(d["images"])})
    return rows


def retention_rows(runs: list[Compared]) -> tuple[list[dict[str, str]], str]:
    """Retention of the first knn run against the zeroshot run at the last step where the memory lacks some
    evaluated class, and a line saying what it is."""
    from bench.protocols import load_counts
    from bench.retention import last_unheld_step, retention

    knn = next((r for r in runs if r.method == "knn"), None)
    base = next((r for r in runs if r.method == "zeroshot"), None)
    if knn is None or base is None:
        return [], "retention: needs a knn and a zeroshot run"
    try:
        step = last_unheld_step(knn.record, base.record)
        if step is None:
            return [], ("retention: at every step the knn memory holds entries of every evaluated class (nothing "
                        "to measure; eval_future=true evaluates tasks before they are adapted to)")
        r = retention(knn.record, base.record, load_counts(knn.out, step), load_counts(base.out, step), step - 1)
    except ValueError as e:
        return [], f"retention: {e}"
    rows = [{"task": task, "classes the memory holds nothing of": ", ".join(e["classes"]),
             "IoU knn - zeroshot": _num(e["diff"], True), "95% CI": _ci(e["interval"], True)}
            for task, e in r["tasks"].items()]
    rows.append({"task": "all", "classes the memory holds nothing of": str(r["overall"]["classes"]),
                 "IoU knn - zeroshot": _num(r["overall"]["diff"], True), "95% CI": _ci(r["overall"]["interval"], True)})
    return rows, (f"Retention after step {r['step']}: per-class IoU of knn minus zeroshot (points) on the classes "
                  "the knn memory holds no entries of; 95 % paired bootstrap intervals over the evaluation images.")


def _md_table(columns: tuple[str, ...], rows: list[dict[str, str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows)]


def _csv(columns: tuple[str, ...], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows([{c: row.get(c, "") for c in columns} for row in rows])
    return buf.getvalue()


def write_comparison(runs: list[Compared], out_dir: Path, metric: str = "miou") -> str:
    """Write ``<sequence>.md`` (every table) and ``<sequence>.csv``, ``<sequence>-differences.csv``,
    ``<sequence>-retention.csv`` under out_dir; returns the markdown."""
    rows, diffs = comparison_rows(runs, metric), difference_rows(runs)
    retained, retention_note = retention_rows(runs)
    first = runs[0].record
    title = (f"{first['sequence']} · {first['model']['name']} ({first['model']['weights']}) · {metric} (%), "
             f"{len(first['tasks'])} tasks: {', '.join(first['tasks'])}")
    lines = [f"### {title}", "", *_md_table(COLUMNS, rows), "",
             "95% CI: percentile bootstrap interval over the evaluation images (1000 replicates)."]
    if any(len([r for r in runs if r.method == m]) > 1 for m in {r.method for r in runs}):
        lines.append("A method run with several seeds: mean ± sample standard deviation over its seeds.")
    if diffs:
        lines += ["", "Paired differences (points): both runs' evaluation images resampled by the same draws.", "",
                  *_md_table(DIFF_COLUMNS, diffs)]
    lines += ["", retention_note]
    if retained:
        lines += ["", *_md_table(RETENTION_COLUMNS, retained)]
    markdown = "\n".join(lines) + "\n"
    stem = first["sequence"]
    atomic_write_text(out_dir / f"{stem}.md", markdown)
    atomic_write_text(out_dir / f"{stem}.csv", _csv(COLUMNS, rows))
    atomic_write_text(out_dir / f"{stem}-differences.csv", _csv(DIFF_COLUMNS, diffs))
    atomic_write_text(out_dir / f"{stem}-retention.csv", _csv(RETENTION_COLUMNS, retained))
    return markdown


def split_seeds(args: list[str]) -> tuple[list[int] | None, list[str]]:
    """``seeds=1,2,3`` (compare's own argument, not a run config key) and the remaining overrides."""
    seeds, rest = None, []
    for arg in args:
        if arg.split("=", 1)[0] != "seeds":
            rest.append(arg)
            continue
        try:
            seeds = [int(s) for s in arg.split("=", 1)[1].split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"command line: seeds= takes comma-separated integers, got {arg!r}") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(f"command line: seeds= takes distinct comma-separated integers, got {arg!r}")
    return seeds, rest


def compare(args: list[str], methods: tuple[str, ...] = COMPARE_ORDER, out_dir: Path | None = None) -> str:
    """Run (or reuse) each method with the same overrides (a SEED-dependent one once per ``seeds=``), then
    write and return the comparison."""
    from bench.methods import get_method
    from bench.run import build_config, run, run_dir

    seeds, args = split_seeds(args)
    common = [a for a in args if a.split("=", 1)[0] not in ("METHOD", "method")]
    runs = []
    for method in methods:
        seeded = get_method(method).uses_seed
        for seed in (seeds if seeded and seeds else [None]):
            overrides = [*common, f"METHOD={method}"]
            if seed is not None:
                overrides = [a for a in overrides if a.split("=", 1)[0] not in ("SEED", "seed")] + [f"seed={seed}"]
            cfg, spec = build_config(overrides)
            runs.append(Compared(method, cfg.seed if seeded else None, run(cfg, spec), run_dir(cfg, spec)))
    target = out_dir or Path(runs[0].record["config"]["output_dir"]).parent / "compare"
    markdown = write_comparison(runs, target)
    print(markdown)
    print(f"comparison: {target / (runs[0].record['sequence'] + '.md')}")
    return markdown

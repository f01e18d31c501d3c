"""``python -m bench compare``: every method on one sequence (finished runs reused), one side-by-side table."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from bench.io import atomic_write_text

COMPARE_ORDER = ("zeroshot", "knn", "finetune", "replay", "joint")
COLUMNS = ("method", "final average", "average incremental", "mean forgetting", "BWT", "adapt time (s)",
           "kept state")


def _num(value: float | None) -> str:
    if value is None:
        return ""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def _state(record: dict[str, Any]) -> str:
    last = record["state_size"][-1] if record.get("state_size") else {}
    parts = []
    if "memory_entries" in last:
        parts.append(f"{last['memory_entries']} memory entries ({last['memory_bytes'] / 1024:.0f} KiB)")
    if "trainable_params" in last:
        parts.append(f"{last['trainable_params']} trainable parameters")
    if "replay_buffer" in last:
        parts.append(f"{last['replay_buffer']} replay exemplars")
    return ", ".join(parts) or "nothing"


def comparison_rows(records: list[dict[str, Any]], metric: str = "miou") -> list[dict[str, str]]:
    rows = []
    for record in records:
        s = record["summary"][metric]
        rows.append({
            "method": record["method"], "final average": _num(s["final_average"]),
            "average incremental": _num(s["average_incremental"]), "mean forgetting": _num(s["mean_forgetting"]),
            "BWT": _num(s["bwt"]),
            "adapt time (s)": f"{sum(step['adapt_s'] for step in record['timings']['steps']):.1f}",
            "kept state": _state(record),
        })
    return rows


def write_comparison(records: list[dict[str, Any]], out_dir: Path, metric: str = "miou") -> str:
    """Write ``<sequence>.md`` and ``<sequence>.csv`` under out_dir; returns the markdown table."""
    rows = comparison_rows(records, metric)
    first = records[0]
    title = (f"{first['sequence']} · {first['model']['name']} ({first['model']['weights']}) · {metric} (%), "
             f"{len(first['tasks'])} tasks: {', '.join(first['tasks'])}")
    lines = [f"### {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in rows]
    markdown = "\n".join(lines) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / f"{first['sequence']}.md", markdown)
    atomic_write_text(out_dir / f"{first['sequence']}.csv", buf.getvalue())
    return markdown


def compare(args: list[str], methods: tuple[str, ...] = COMPARE_ORDER, out_dir: Path | None = None) -> str:
    """Run (or reuse) each method with the same overrides, then write and return the comparison table."""
    from bench.run import build_config, run

    records = []
    for method in methods:
        cfg, spec = build_config([a for a in args if not a.startswith(("METHOD=", "method="))] + [f"METHOD={method}"])
        records.append(run(cfg, spec))
    target = out_dir or Path(records[0]["config"]["output_dir"]).parent / "compare"
    markdown = write_comparison(records, target)
    print(markdown)
    print(f"comparison: {target / (records[0]['sequence'] + '.md')}")
    return markdown

"""The report's "Memory at scale" section, from a JSON of benchmarks/perf.py (``results/perf/latest.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.plots import perf_point
from bench.tables import fmt, md_table

# Headline keys of results/perf/latest.json with the bound issue 9 sets on each (None: no bound).
PERF_HEADLINE = [
    ("retrieval_fraction_1m", "retrieval + fusion / whole predict time per image, 1M entries", "<=", 0.05),
    ("recall_at_16_1m", "recall@16 of the default index vs exact search, 1M entries", ">=", 0.95),
    ("bytes_per_entry", "bytes per entry, default compressed kind", "<=", 128),
    ("miou_loss_compressed", "final mIoU, flat fp32 minus compressed (points)", "<=", 0.5),
    ("adapt_overhead_fraction", "adapt with the default loader workers: data wait + preprocess + pooling + "
     "memory add / backbone forward (measured with no worker competing)", "<=", 0.10),
    ("adapt_overhead_fraction_in_process", "the same with everything in the process (num_workers=0)", None, None),
    ("pq_speedup_vs_torchmetrics", "PQ metric speed-up over torchmetrics", None, None),
]


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
        body.append([f"`{key}`", title, fmt(value, digits), "" if op is None else f"{op} {bound}", verdict])
    lines += [*md_table(["key", "what", "value", "bound", ""], body), ""]
    lines += auto_rows(result["memory"].get("auto") or [])
    table = []
    for row in result["memory"]["rows"]:
        if "kind" not in row:
            continue
        point = perf_point(row)
        table.append([str(row["dim"]), f"{row['n']:,}", row["kind"], fmt(point["ms_per_image"], 2),
                      fmt(point["recall_at_16"], 4), fmt(row["bytes_per_entry"], 1), fmt(row["build_s"], 1)])
    lines += [*md_table(["d", "entries", "kind", "ms / image", "recall@16", "bytes / entry", "build (s)"],
                        table), ""]
    if plot:
        lines += [f"![latency and recall against memory size]({plot})", ""]
    return lines


def auto_rows(rows: list[Mapping[str, Any]]) -> list[str]:
    """The default index (auto) grown through the sizes: recall@16 (restricted, against exact search) and latency
    at each size, with what the index did there (phase, lists, the tuned probes or an exact subset)."""
    if not rows:
        return []
    table = []
    for row in rows:
        index = row["index"]
        tuned = index.get("tuned") or []
        how = ("exact" if index["phase"] == "flat" else
               "exact subset" if index.get("exact_subsets") else
               ", ".join(f"nprobe {t['nprobe']}" for t in tuned) or "-")
        table.append([str(row["dim"]), f"{row['n']:,}", index["phase"], str(index.get("nlist") or "-"), how,
                      fmt(row["recall_at_16"], 4), fmt(row["ms_per_image"], 2)])
    return ["The default index (`auto`, bench/memory/policy.py) as one memory grows, searched restricted to a "
            "150-of-1000-class vocabulary:", "",
            *md_table(["d", "entries", "phase", "lists", "search", "recall@16", "ms / image"], table), ""]


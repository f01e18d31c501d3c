"""Latency and recall against memory size, per index kind, from a JSON written by benchmarks/perf.py.

Run: ``.venv/bin/python benchmarks/perf_plot.py [results/perf/latest.json] [--out PNG]``; the PNG goes next to
the JSON by default (``results/perf/latest-latency-recall.png``), and perf.py draws it after writing its JSON.
Swept kinds are drawn at one setting each: ``nprobe`` 8 for IVF (the default index's), ``ef_search`` 64 for HNSW.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[1]
SETTING = {"nprobe": 8, "ef_search": 64}


def _point(row: dict[str, Any]) -> dict[str, Any]:
    for point in row["sweep"]:
        if all(point.get(k, v) == v for k, v in SETTING.items()):
            return point
    return row["sweep"][-1]


def png_path(result_json: Path) -> Path:
    return result_json.with_name(f"{result_json.stem}-latency-recall.png")


def plot(result: dict[str, Any], out: Path) -> None:
    from bench.io import atomic_write_bytes

    rows = [r for r in result["memory"]["rows"] if "kind" in r]
    dims = sorted({r["dim"] for r in rows})
    colour = {kind: f"C{i}" for i, kind in enumerate(dict.fromkeys(r["kind"] for r in rows))}
    fig, axes = plt.subplots(2, len(dims), figsize=(5.5 * len(dims), 7), squeeze=False)
    for col, dim in enumerate(dims):
        for kind in dict.fromkeys(r["kind"] for r in rows if r["dim"] == dim):
            series = sorted((r["n"], _point(r)) for r in rows if r["dim"] == dim and r["kind"] == kind)
            sizes = [n for n, _ in series]
            axes[0][col].plot(sizes, [p["ms_per_image"] for _, p in series], "o-", color=colour[kind], label=kind)
            axes[1][col].plot(sizes, [p["recall_at_16"] for _, p in series], "o-", color=colour[kind], label=kind)
        axes[0][col].set(title=f"d = {dim}", xscale="log", yscale="log", ylabel="ms per image (64 queries)")
        axes[1][col].set(xscale="log", ylim=(0, 1.02), xlabel="memory entries", ylabel="recall@16 vs exact")
        for ax in axes[:, col]:
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Restricted k=16 search per image, " + ", ".join(f"{k} {v}" for k, v in SETTING.items()))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    import sys

    sys.path.insert(0, str(REPO))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("result", nargs="?", default=str(REPO / "results" / "perf" / "latest.json"))
    parser.add_argument("--out", default=None, help="default: next to the JSON, <name>-latency-recall.png")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else png_path(Path(args.result))
    plot(json.loads(Path(args.result).read_text()), out)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Latency and recall against memory size, per index kind, from a JSON written by benchmarks/perf.py.

Run: ``.venv/bin/python benchmarks/perf_plot.py [results/perf/latest.json] [--out PNG]``; the PNG goes next to
the JSON by default (``results/perf/latest-latency-recall.png``), and perf.py draws it after writing its JSON.
The drawing is :func:`bench.report.latency_recall_plot`, which ``make report`` also puts in the dashboard.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def png_path(result_json: Path) -> Path:
    return result_json.with_name(f"{result_json.stem}-latency-recall.png")


def plot(result: dict[str, Any], out: Path) -> None:
    sys.path.insert(0, str(REPO))
    from bench.report import latency_recall_plot

    latency_recall_plot(result, out)


def main(argv: list[str] | None = None) -> int:
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

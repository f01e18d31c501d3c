"""Text shared by the report's tables and plots: numbers as the report prints them, markdown tables, metric titles,
links moved between folders."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

METRIC_TITLES = {"miou": "mIoU", "pq": "PQ", "pq_things": "PQ things", "pq_stuff": "PQ stuff", "sq": "SQ",
                 "rq": "RQ"}


def metric_title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric)


def fmt(value: Any, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals for a float (``nan`` for NaN, no negative zero), ``""`` for None."""
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        text = f"{value:.{digits}f}"
        return text[1:] if text == f"-{0:.{digits}f}" else text
    return str(value)


def md_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    """Lines of a markdown table; a ``|`` inside a cell is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return lines


def relink(markdown: str, src: Path, dst: Path, images: bool = True) -> str:
    """``markdown`` written in folder ``src`` with its relative links (and images, unless ``images`` is False)
    made relative to folder ``dst``; web addresses, anchors and absolute paths stay as they are."""

    def one(m: re.Match[str]) -> str:
        label, target = m.group(1), m.group(2)
        if (label.startswith("!") and not images) or re.match(r"[a-z]+:|#|/", target):
            return m.group(0)
        return f"{label}({Path(os.path.relpath(src.resolve() / target, dst.resolve())).as_posix()})"

    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", one, markdown)

"""Run records as the cross-run report and the plots read them: finding ``record.json`` files, one ``Run`` per
record, and the few derived numbers (memory entries, mean over the tasks seen) that tables and plots share."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.record import load_record


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
    ["memory_entries"]`` (older records are migrated on load, :mod:`bench.record`); None without a memory."""
    sizes = record.get("state_size") or []
    t = len(sizes) - 1 if step is None else step - 1
    entries = sizes[t].get("memory_entries") if 0 <= t < len(sizes) else None
    return None if entries is None else int(entries)


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


def safe_name(text: str) -> str:
    """``text`` as a file-name part: runs of other characters than letters, digits, ``._-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every record under ``paths``, sorted by sequence, method and run id, each with a unique ``slug``."""
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
        slug, n = safe_name(f"{run.sequence}-{run.method}-{run.run_id}"), 2
        while slug in taken:  # the same run id found in two folders
            slug, n = safe_name(f"{run.sequence}-{run.method}-{run.run_id}-{n}"), n + 1
        taken.add(slug)
        run.slug = slug
    return runs


def number(value: Any) -> float | None:
    """A float, or None for a missing score; NaN stays NaN."""
    return None if value is None else float(value)


def row_means(matrix: Sequence[Sequence[float | None]]) -> list[float]:
    """Mean over the tasks seen after each filled step (row ``t``: tasks ``0..t``); stops at the first unfilled
    row. A NaN score makes its step's mean NaN."""
    out = []
    for t, row in enumerate(matrix):
        seen = [number(v) for v in row[: t + 1]]
        if not seen or any(v is None for v in seen):
            break
        out.append(math.fsum(seen) / len(seen))  # type: ignore[arg-type]
    return out

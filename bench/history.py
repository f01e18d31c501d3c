"""Scores across commits: one line per regression run and version, in a committed JSON-lines file.

Each line names the commit it belongs to, its date, where it came from (``reference``: a version of a
committed reference file; ``ci``: a regression run of the commit CI tested), the run's identity (sequence,
method, model, base, proposer, config hash), its headline scores (final average, average incremental, BWT and
mean forgetting of mIoU and, on panoptic data, PQ) and a ``status``:

- reference lines are compared with the previous version of the same sequence and method, on the final
  averages, with the reference's own final-average tolerance: ``regression`` (dropped beyond it), ``better``,
  ``ok``, or ``first``;
- ci lines carry the verdict of the full comparison with the reference (``bench.regress.compare``, every cell):
  ``regression`` exactly when ``make regress`` fails, else ``better`` or ``ok``.

``rebuild`` reads the git history of ``results/reference/``: one line per commit that changed a file (a file
re-committed with the same scores gives a line with the same numbers), and one ``uncommitted`` line for a file
whose working copy differs from HEAD (``make reference`` before the commit; rebuild after it to name it).
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.io import atomic_write_text

HISTORY_FILE = Path("results/history.jsonl")
REFERENCE_DIR = Path("results/reference")
HEADLINE_METRICS = ("miou", "pq")
HEADLINE_KEYS = ("final_average", "average_incremental", "bwt", "mean_forgetting")
UNCOMMITTED = "uncommitted"
STATUSES = ("first", "ok", "better", "regression")


def _config_hash(config: Mapping[str, Any]) -> str | None:
    """The run's config hash (:func:`bench.config.config_hash`) rebuilt from a reference's config; None when the
    config no longer parses with today's keys (a reference older than a removed setting)."""
    from bench.config import RUN_ONLY_KEYS, RunConfig, apply_mapping, config_hash
    from bench.errors import ConfigError

    cfg = RunConfig()
    try:
        apply_mapping(cfg, {k: v for k, v in config.items() if k not in RUN_ONLY_KEYS})
    except (ConfigError, ValueError, TypeError):
        return None
    return config_hash(cfg)


def _model_label(model: Mapping[str, Any]) -> str:
    note = model.get("pretrained") or model.get("weights")
    return f"{model.get('name', '?')} ({note})" if note else str(model.get("name", "?"))


def _clean(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def history_line(record: Mapping[str, Any], *, commit: str, date: str, source: str, status: str = "ok",
                 path: str = "", tolerances: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The history line of one record or reference (``source`` ``reference`` or ``ci``); ``tolerance`` is the
    final-average tolerance per headline metric the run is held to: ``tolerances`` (a ci run: its reference's)
    or the reference's own."""
    from bench.tolerances import DEFAULT_TOLERANCES, tolerance_for

    config = record.get("config") or {}
    summary = record.get("summary") or {}
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances if tolerances is not None else record.get("tolerances") or {})}
    scores = {m: {k: _clean((summary.get(m) or {}).get(k)) for k in HEADLINE_KEYS}
              for m in HEADLINE_METRICS if m in summary}
    if status not in STATUSES:
        raise ValueError(f"history status must be one of {', '.join(STATUSES)}, got {status!r}")
    return {"commit": commit, "date": date, "source": source, "sequence": str(record["sequence"]),
            "method": str(record["method"]), "model": _model_label(record.get("model") or {}),
            "base": str(record.get("base") or (config.get("base") or {}).get("kind", "")),
            "proposer": str(record.get("proposer") or (config.get("proposals") or {}).get("kind", "")),
            "config_hash": record.get("config_hash") or _config_hash(config),
            "scores": scores, "tolerance": {m: tolerance_for(tolerances, m, "final_average") for m in scores},
            "status": status, "file": path}


def step_status(previous: Mapping[str, Any] | None, line: Mapping[str, Any]) -> str:
    """A reference line against the previous line of its sequence and method, on the final averages."""
    if previous is None:
        return "first"
    worse = better = False
    for metric, scores in line["scores"].items():
        now, before = scores.get("final_average"), (previous["scores"].get(metric) or {}).get("final_average")
        if now is None or before is None:
            continue
        tol = line["tolerance"][metric]
        worse |= before - now > tol
        better |= now - before > tol
    return "regression" if worse else "better" if better else "ok"


def ci_status(rows: Sequence[Any]) -> str:
    """The verdict of a full comparison (``bench.regress.Row`` list) as a history status."""
    if any(r.failed for r in rows):
        return "regression"
    return "better" if any(r.status == "better" for r in rows) else "ok"


# ---------------------------------------------------------------- the file


def read_history(path: str | Path, missing_ok: bool = False) -> list[dict[str, Any]]:
    """Lines of a history file; with ``missing_ok`` an empty list for a file that does not exist."""
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return []
        raise FileNotFoundError(f"{path}: no history file (python -m bench history writes it from the git log)")
    lines = []
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON history line ({e.msg})") from None
        for key in ("commit", "sequence", "method", "scores", "status"):
            if key not in line:
                raise ValueError(f"{path}:{n}: history line has no {key!r} field")
        lines.append(line)
    return lines


def write_history(path: str | Path, lines: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))


def append_history(path: str | Path, line: Mapping[str, Any]) -> None:
    """Add one line (the whole file rewritten atomically, so a crash leaves the old file or the new one)."""
    write_history(path, [*read_history(path, missing_ok=True), line])


# ---------------------------------------------------------------- rebuilding from git


def _git(repo: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        raise OSError("git is not installed; `bench history` reads the git log of results/reference") from None
    except subprocess.CalledProcessError as e:
        raise ValueError(f"git {' '.join(args)} failed in {repo}: {e.stderr.strip()}") from None


def _versions(repo: Path, rel: str) -> list[tuple[str, str, str]]:
    """(commit, ISO commit date, path at that commit) for every commit that changed ``rel``, oldest first,
    following renames."""
    out = _git(repo, "log", "--follow", "--format=%x00%H %cI", "--name-only", "--", rel)
    versions = []
    for block in out.split("\x00")[1:]:
        head, *names = [x for x in block.splitlines() if x.strip()]
        commit, date = head.split(" ", 1)
        versions.append((commit, date, names[-1] if names else rel))
    return versions[::-1]


def _parse(text: str, where: str) -> dict[str, Any]:
    from bench.record import migrate

    try:
        return migrate(json.loads(text), where)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not a reference JSON ({e.msg})") from None


def rebuild(repo: str | Path = ".", reference_dir: str | Path = REFERENCE_DIR) -> list[dict[str, Any]]:
    """History lines of every reference file now in ``reference_dir``: one per commit that changed it, plus an
    ``uncommitted`` one when the working copy differs from HEAD's; ordered by date, then sequence and method."""
    repo = Path(repo).resolve()
    ref_dir = Path(reference_dir)
    ref_dir = ref_dir if ref_dir.is_absolute() else repo / ref_dir
    files = sorted(ref_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{ref_dir}: no reference *.json files (make reference writes them)")
    lines = []
    for file in files:
        rel = file.resolve().relative_to(repo).as_posix()
        committed = None
        for commit, date, path in _versions(repo, rel):
            committed = _git(repo, "show", f"{commit}:{path}")
            lines.append(history_line(_parse(committed, f"{commit[:10]}:{path}"), commit=commit, date=date,
                                      source="reference", path=path))
        text = file.read_text()
        if committed is None or _parse(text, rel) != _parse(committed, rel):
            mtime = datetime.fromtimestamp(file.stat().st_mtime, UTC).isoformat(timespec="seconds")
            lines.append(history_line(_parse(text, rel), commit=UNCOMMITTED, date=mtime, source="reference",
                                      path=rel))
    return with_statuses(sorted(lines, key=lambda x: (x["date"], x["sequence"], x["method"])))


def with_statuses(lines: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reference lines with ``status`` set against the previous reference line of their sequence and method
    (ci lines keep theirs: it came from the full comparison)."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    out = []
    for line in lines:
        if line["source"] == "reference":
            key = (line["sequence"], line["method"])
            line = {**line, "status": step_status(last.get(key), line)}
            last[key] = line
        out.append(line)
    return out


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- what the trend plot draws


def trend_data(lines: Sequence[Mapping[str, Any]], sequence: str, metric: str) -> dict[str, Any]:
    """What the trend plot of one sequence and metric draws: ``commits`` (x positions, in the order the lines
    first name them; short hashes), and per method its ``points`` (x, commit, value, source, regression) and the
    tolerance ``band`` around its latest reference value. Lines without the metric are left out."""
    seq_lines = [x for x in lines if x["sequence"] == sequence and (x["scores"].get(metric) or {}).get(
        "final_average") is not None]
    commits = list(dict.fromkeys(x["commit"] for x in seq_lines))
    methods: dict[str, Any] = {}
    for line in seq_lines:
        entry = methods.setdefault(line["method"], {"points": [], "band": None})
        value = line["scores"][metric]["final_average"]
        entry["points"].append({"x": commits.index(line["commit"]), "commit": _short(line["commit"]),
                                "value": value, "source": line["source"],
                                "regression": line["status"] == "regression"})
        if line["source"] == "reference":
            tol = (line.get("tolerance") or {}).get(metric, 0.0)
            entry["band"] = [value - tol, value + tol]
    return {"sequence": sequence, "metric": metric, "commits": [_short(c) for c in commits], "methods": methods}


def _short(commit: str) -> str:
    if commit == UNCOMMITTED:
        return commit
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")

"""Regression gate: compare a run record with a committed reference, exit 1 when a score got worse.

Every matrix cell ``R[t][j]`` and every summary value present in the reference is compared with the same
entry of the record. For forgetting (per task and mean) a *rise* is the bad direction; for every other value
(scores, averages, BWT) a *drop* is. An improvement beyond tolerance is reported but passes: the reference
then only needs refreshing with ``make reference``.

Why the default tolerances are small: runs are deterministic on CPU (fixed seeds, no data-order randomness,
no GPU kernels), so the same commit gives the same numbers on the same machine. Across machines, BLAS
builds and float summation order can flip a few pixel argmaxes or kNN ties, which moves an mIoU on the small
CI evaluation sets by hundredths to a few tenths of a point. 0.5 points absolute absorbs that and still
catches a real regression (a broken retrieval on the embedded sequence costs tens of points). Forgetting and
BWT are differences of two cells, each allowed 0.5, hence 1.0. A reference file may override any of these
under ``"tolerances"``: ``{"matrix": 1.0}`` for all metrics, ``{"pq.matrix": 2.0}`` for one metric,
``{"default": 0.5}`` for anything not named.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bench.io import atomic_write_json
from bench.record import load_record, load_reference
from bench.tolerances import DEFAULT_TOLERANCES, tolerance_for

# Summary values for which a higher number is worse.
RISE_IS_WORSE = frozenset({"forgetting", "mean_forgetting"})
REFERENCE_KEYS = ("record_version", "sequence", "method", "model", "tasks", "matrix", "summary", "config", "git_commit")
# Config keys that say where or how visibly a run went, not what it computed.
_IGNORED_CONFIG = frozenset({"output_dir", "progress", "num_workers", "data_root", "max_steps", "run_id"})


class ReferenceMismatch(ValueError):
    """The record and the reference are not runs of the same sequence, method and tasks."""


@dataclass(frozen=True)
class Row:
    """One compared value. ``delta`` = current − reference; ``status``: ``ok`` (within tolerance), ``better``
    (improved beyond it), ``WORSE`` (dropped, or for forgetting risen, beyond it), ``MISSING`` (no value in
    the record where the reference has one)."""

    metric: str
    reference: float | None
    current: float | None
    delta: float | None
    tolerance: float
    status: str

    @property
    def failed(self) -> bool:
        return self.status in ("WORSE", "MISSING")


def _check(name: str, ref: Any, cur: Any, tol: float, rise_is_worse: bool) -> Row | None:
    if ref is None:
        return None  # nothing to guard: the reference has no score here either
    ref = float(ref)
    if cur is None:
        return Row(name, ref, None, None, tol, "MISSING")
    cur = float(cur)
    if math.isnan(ref) or math.isnan(cur):
        same = math.isnan(ref) and math.isnan(cur)
        return Row(name, ref, cur, None, tol, "ok" if same else "WORSE")
    delta = cur - ref
    worse = delta if rise_is_worse else -delta
    status = "WORSE" if worse > tol else "better" if -worse > tol else "ok"
    return Row(name, ref, cur, delta, tol, status)


def check_same_run(record: dict[str, Any], reference: dict[str, Any]) -> None:
    """Raise ReferenceMismatch unless sequence, method and tasks agree."""
    for key in ("sequence", "method", "tasks"):
        if key not in reference:
            raise ReferenceMismatch(f"reference has no {key!r} field; expected a record.json or a trimmed copy")
        if record.get(key) != reference[key]:
            raise ReferenceMismatch(f"{key} differs: record has {record.get(key)!r}, reference has "
                                    f"{reference[key]!r}; compare runs of the same sequence and method")


def compare(record: dict[str, Any], reference: dict[str, Any],
            tolerances: dict[str, Any] | None = None) -> list[Row]:
    """Compare every matrix cell and summary value that the reference holds. Tolerances: ``tolerances``
    over the reference's ``"tolerances"`` over DEFAULT_TOLERANCES. Raises ReferenceMismatch when the two are
    not runs of the same sequence, method and tasks."""
    check_same_run(record, reference)
    tol = {**DEFAULT_TOLERANCES, **(reference.get("tolerances") or {}), **(tolerances or {})}
    tasks = reference["tasks"]
    rows: list[Row] = []
    for metric, ref_rows in (reference.get("matrix") or {}).items():
        cur_rows = (record.get("matrix") or {}).get(metric) or []
        t_cell = tolerance_for(tol, metric, "matrix")
        for t, ref_row in enumerate(ref_rows):
            for j, ref in enumerate(ref_row):
                cur = cur_rows[t][j] if t < len(cur_rows) and j < len(cur_rows[t]) else None
                row = _check(f"{metric} R[{t + 1} {tasks[t]}][{tasks[j]}]", ref, cur, t_cell, False)
                if row:
                    rows.append(row)
    for metric, ref_summary in (reference.get("summary") or {}).items():
        cur_summary = (record.get("summary") or {}).get(metric) or {}
        for key, ref in ref_summary.items():
            t_key = tolerance_for(tol, metric, key)
            cur = cur_summary.get(key)
            if isinstance(ref, list):
                cur_list = cur if isinstance(cur, list) else []
                for j, ref_j in enumerate(ref):
                    cur_j = cur_list[j] if j < len(cur_list) else None
                    row = _check(f"{metric} {key}[{tasks[j]}]", ref_j, cur_j, t_key, key in RISE_IS_WORSE)
                    if row:
                        rows.append(row)
            else:
                row = _check(f"{metric} {key}", ref, cur, t_key, key in RISE_IS_WORSE)
                if row:
                    rows.append(row)
    return rows


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def format_rows(rows: list[Row]) -> str:
    header = ("metric", "reference", "current", "delta", "tolerance", "status")
    table = [header] + [(r.metric, _num(r.reference), _num(r.current), _num(r.delta, signed=True),
                         f"{r.tolerance:.2f}", r.status) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(line, widths))).rstrip() for line in table)


def summary_markdown(record: dict[str, Any], rows: list[Row], reference_path: str | Path) -> str:
    """The comparison as markdown for a CI job summary: the verdict, then the final averages and every value not
    within tolerance."""
    failed = sum(r.failed for r in rows)
    better = sum(r.status == "better" for r in rows)
    verdict = f"**FAIL**: {failed} worse beyond tolerance" if failed else "ok"
    shown = [r for r in rows if r.status != "ok" or r.metric.endswith(" final_average")]
    lines = [f"### {record['sequence']} · {record['method']}: {verdict}", "",
             f"{len(rows)} values compared with `{reference_path}`; {failed} worse, {better} better beyond "
             "tolerance.", "", "| value | reference | current | delta | tolerance | status |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.metric} | {_num(r.reference)} | {_num(r.current)} | {_num(r.delta, signed=True)} | "
              f"{r.tolerance:.2f} | {r.status} |" for r in shown]
    return "\n".join(lines) + "\n\n"


def _notes(record: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    notes = []
    ref_model, cur_model = reference.get("model") or {}, record.get("model") or {}
    for key in ("name", "pretrained"):
        if key in ref_model and ref_model.get(key) != cur_model.get(key):
            notes.append(f"model {key} differs: reference {ref_model.get(key)!r}, record {cur_model.get(key)!r}")
    ref_cfg, cur_cfg = reference.get("config") or {}, record.get("config") or {}
    changed = sorted(k for k in set(ref_cfg) | set(cur_cfg)
                     if k not in _IGNORED_CONFIG and ref_cfg.get(k) != cur_cfg.get(k))
    if ref_cfg and changed:
        notes.append(f"config differs in: {', '.join(changed)}")
    if not record.get("complete", True):
        notes.append(f"record is incomplete ({record.get('steps_done')} of {len(record.get('tasks', []))} steps)")
    return notes


def regress_main(reference_path: str | Path, run_dir_or_record: str | Path,
                 tolerances: dict[str, Any] | None = None, out: TextIO | None = None,
                 history_out: str | Path | None = None, summary_out: str | Path | None = None) -> int:
    """Print the diff table; return 0 when nothing got worse beyond tolerance, 1 when something did, 2 when
    the files cannot be read or are not runs of the same sequence, method and tasks. With ``history_out``, the
    run's history line (:mod:`bench.history`, source ``ci``, status ``regression`` exactly when this fails) is
    appended to that file; with ``summary_out`` (a CI job summary) the markdown of :func:`summary_markdown`."""
    out = out or sys.stdout
    try:
        reference = load_reference(reference_path)
        record = load_record(run_dir_or_record)
        rows = compare(record, reference, tolerances)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"regress: {run_dir_or_record} against {reference_path} "
          f"({record['sequence']} · {record['method']}; reference commit {reference.get('git_commit')})", file=out)
    for note in _notes(record, reference):
        print(f"note: {note}", file=out)
    print(format_rows(rows), file=out)
    failed = [r for r in rows if r.failed]
    better = [r for r in rows if r.status == "better"]
    verdict = f"FAIL: {len(failed)} worse beyond tolerance" if failed else "ok: nothing worse beyond tolerance"
    extra = f"; {len(better)} better beyond tolerance (refresh with `make reference`)" if better else ""
    print(f"{len(rows)} values compared, {verdict}{extra}", file=out)
    if not rows:
        print("error: the reference holds no values to compare", file=sys.stderr)
        return 2
    if history_out is not None:
        from bench.history import append_history, ci_status, history_line, now_iso

        data = record.to_json()
        append_history(history_out, history_line(
            data, commit=data.get("git_commit") or "unknown", date=now_iso(), source="ci", status=ci_status(rows),
            path=str(run_dir_or_record), tolerances={**(reference.get("tolerances") or {}), **(tolerances or {})}))
        print(f"history line ({ci_status(rows)}) appended to {history_out}", file=out)
    if summary_out is not None:
        with open(summary_out, "a") as f:  # the CI runner's summary file: appended to, as it expects
            f.write(summary_markdown(record, rows, reference_path))
    return 1 if failed else 0


def make_reference(run_dir: str | Path, out_path: str | Path,
                   tolerances: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a trimmed copy of a complete run's record (the keys in REFERENCE_KEYS plus ``tolerances``, the
    defaults unless given) to ``out_path``, atomically; returns it."""
    record = load_record(run_dir)
    if not record.get("complete"):
        raise ValueError(f"{run_dir}: run is incomplete ({record.get('steps_done')} of "
                         f"{len(record.get('tasks', []))} steps); a reference must come from a finished run")
    missing = [k for k in REFERENCE_KEYS if k not in record]
    if missing:
        raise ValueError(f"{run_dir}: run record lacks {', '.join(missing)}")
    data = record.to_json()
    reference = {k: data[k] for k in REFERENCE_KEYS}
    reference["tolerances"] = dict(tolerances or DEFAULT_TOLERANCES)
    atomic_write_json(out_path, reference)
    return reference

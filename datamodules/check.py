"""``bench data check``: for each task of a sequence, what is on disk, what is missing, and the layout expected.

Loads no model. The sequence YAML has been checked field by field when it was loaded. Each split's paths come
from its reader's ``expected_layout``; when they are all present the reader is built (indexing files and
parsing annotation json) to count the samples, and its first sample is read, relabelled to the task's classes
and checked against the data contract, to surface the first error a run would meet. :func:`preflight` does
the same for the eval splits at the start of a run, so a broken eval file stops the run before its first
adapt pass, not after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datamodules.contract import DataError
from datamodules.labelmaps import LayoutEntry
from datamodules.paths import expand_root
from datamodules.registry import Reader, get_reader
from datamodules.sequence import ReaderKey, SequenceSpec, SplitSpec, TaskDataset, TaskSpec, open_reader


@dataclass
class SplitReport:
    role: str  # "adapt" or "eval"
    split: str
    present: list[LayoutEntry] = field(default_factory=list)
    missing: list[LayoutEntry] = field(default_factory=list)
    samples: int | None = None  # None: not counted (something missing, or counting disabled)
    error: str | None = None
    note: str | None = None
    layout: str | None = None  # which of the reader's layouts is on disk (a reader may accept several)
    notes: list[str] = field(default_factory=list)  # what the reader found worth saying (e.g. unmatched names)

    @property
    def ok(self) -> bool:
        return not self.missing and self.error is None


@dataclass
class TaskReport:
    task: str
    format: str
    root: Path
    vocabulary_size: int
    splits: list[SplitReport] = field(default_factory=list)
    error: str | None = None  # a problem with the task itself (unknown format, bad options)

    @property
    def ok(self) -> bool:
        return self.error is None and all(s.ok for s in self.splits)


def _check_split(task: TaskSpec, role: str, split: SplitSpec, data_root: str | Path, count: bool,
                 readers: dict[ReaderKey, Reader]) -> SplitReport:
    report = SplitReport(role, split.split)
    reader_cls = get_reader(task.format)
    layout = getattr(reader_cls, "expected_layout", None)
    if layout is None:  # e.g. synth: generated on first use, nothing to find on disk
        report.note = "no fixed layout to check (this format makes or finds its data when first read)"
        return report
    root = expand_root(task.root, data_root)
    for e in layout(root, split.split, task.reader_vocabulary, **task.options):
        (report.present if e.exists() else report.missing).append(e)
    found = getattr(reader_cls, "layout_found", None)
    report.layout = found(root, split.split, task.reader_vocabulary, **task.options) if found else \
        f"the {task.format} layout"
    if count and not report.missing:
        try:
            report.samples = open_first_sample(task, split, data_root, readers)
            report.notes = list(getattr(open_reader(task, split, data_root, readers), "check_notes", ()))
        except (DataError, TypeError, OSError) as e:
            report.error = str(e)
    return report


def open_first_sample(task: TaskSpec, split: SplitSpec, data_root: str | Path,
                      readers: dict[ReaderKey, Reader] | None = None) -> int:
    """Build one split's reader, read its first sample as a run would (relabelled, checked against the
    contract) and return the number of samples the split gives (its ``limit`` applied)."""
    dataset = TaskDataset(task, split, data_root, readers=readers)
    if len(dataset):
        dataset[0]
    return len(dataset)


def preflight(spec: SequenceSpec, data_root: str | Path, roles: tuple[str, ...] = ("eval",),
              readers: dict[ReaderKey, Reader] | None = None) -> None:
    """Open the first sample of the given splits of every task; raise :class:`DataError` naming the task and
    the split at the first that fails. Cheap next to a run (one reader and one image per split), and it finds a
    missing or truncated eval file before any adapt pass is spent. ``readers``: a reader cache the run's
    DataModule then reuses."""
    readers = {} if readers is None else readers
    for task in spec.tasks:
        for role in roles:
            split = getattr(task, role)
            try:
                open_first_sample(task, split, data_root, readers)
            except (DataError, TypeError, OSError) as e:
                raise DataError(f"{spec.path}: task {task.name!r}, {role} split {split.split!r}: {e}") from e


def check_sequence(spec: SequenceSpec, data_root: str | Path, count: bool = True) -> list[TaskReport]:
    """One report per task of ``spec``, its data looked for under ``data_root``.

    ``count``: build each reader whose paths are all present, to count samples, and read its first sample, to
    catch annotation and label errors (parsing a large json such as LVIS train takes a while); without it only
    paths are checked.
    """
    reports = []
    readers: dict[ReaderKey, Reader] = {}
    for task in spec.tasks:
        root = expand_root(task.root, data_root)
        report = TaskReport(task.name, task.format, root, len(task.vocabulary))
        try:
            for role, split in (("adapt", task.adapt), ("eval", task.eval)):
                report.splits.append(_check_split(task, role, split, data_root, count, readers))
        except (DataError, TypeError) as e:
            report.error = str(e)
        reports.append(report)
    return reports


def format_check(reports: list[TaskReport], spec: SequenceSpec | None = None) -> str:
    """Human-readable text of :func:`check_sequence`'s reports, one block per task, a summary line last."""
    lines = [f"sequence {spec.name} ({spec.path})"] if spec is not None else []
    for r in reports:
        lines.append(f"{'ok     ' if r.ok else 'MISSING'} task {r.task!r}: format {r.format}, "
                     f"{r.vocabulary_size} classes, root {r.root}")
        if r.error:
            lines.append(f"    error: {r.error}")
        for s in r.splits:
            count = f", {s.samples} samples" if s.samples is not None else ""
            lines.append(f"    {s.role} split {s.split!r}{count}" + (f", layout: {s.layout}" if s.layout else ""))
            lines += [f"      found   {e.path}  ({e.what})" for e in s.present]
            lines += [f"      MISSING {e.path}  ({e.what})" for e in s.missing]
            if s.error:
                lines.append(f"      error: {s.error}")
            if s.note:
                lines.append(f"      note: {s.note}")
            lines += [f"      note: {n}" for n in s.notes]
    bad = sum(not r.ok for r in reports)
    lines.append(f"{len(reports) - bad}/{len(reports)} tasks ready" + (f"; {bad} need data or fixes" if bad else ""))
    return "\n".join(lines)

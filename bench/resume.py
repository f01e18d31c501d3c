"""Claiming a run folder and going back to an earlier step.

A run folder is used by one command at a time: the launching process holds ``<run dir>/.lock`` (DDP children,
started by Lightning with the same command, compute under their parent's lock). A run goes back to an earlier step
when asked (``--recompute-from t``: the state and record rows of steps >= t are deleted and the run resumes from
step t-1's state) or when the state of its last finished step is gone (deleted after a damaged-state message).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.distributed import is_rank_zero
from bench.errors import ConfigError
from bench.io import atomic_write_json, lock_dir, make_dirs
from bench.record import RunRecord

ARTEFACTS = ("table.txt", "heatmap-*.png")  # written when a run completes


@contextlib.contextmanager
def claim(out: Path) -> Iterator[None]:
    """Create the run folder (so that an unwritable output folder stops the run before a model loads) and hold its
    lock for the block. A folder this call created and nothing else wrote into is removed again."""
    if not is_rank_zero():
        yield
        return
    existed = out.exists()
    make_dirs(out, "cannot create run folder")
    try:
        with lock_dir(out):
            yield
    finally:
        if not existed and [p.name for p in out.iterdir()] == [".lock"]:
            with contextlib.suppress(OSError):
                (out / ".lock").unlink()
                out.rmdir()


def step_state(out: Path, step: int) -> list[Path]:
    """Everything kept for step ``step`` (1-based): ``<out>/*/step-<step>`` folders and ``step-<step>.*`` files
    (memory, adapter and its checksum, an interrupted step's checkpoints)."""
    return sorted({*out.glob(f"*/step-{step}"), *out.glob(f"*/step-{step}.*")})


def check_recompute_from(recompute_from: int | None, total: int) -> None:
    if recompute_from is not None and not 1 <= recompute_from <= total:
        raise ConfigError(f"--recompute-from must be a step between 1 and {total}, got {recompute_from}")


def rewind(out: Path, method: Any, previous: RunRecord | None, recompute_from: int | None, total: int,
           resummarize: Callable[[RunRecord], None]) -> RunRecord | None:
    """The record to resume from: ``previous``, or, going back to an earlier step, that record cut to the steps
    whose state is kept (None: start afresh). Rank 0 deletes the later state and writes the cut record."""
    check_recompute_from(recompute_from, total)
    if previous is None:
        return None
    keep = previous.steps_done
    if recompute_from is not None and recompute_from <= keep:
        keep = recompute_from - 1
        say(f"recomputing {out} from step {recompute_from}")
    elif not previous.complete:
        while keep > 0 and (state := method.state_path(out, keep)) is not None and not state.exists():
            say(f"{state} is missing: step {keep} will be recomputed")
            keep -= 1
    if keep == previous.steps_done and not (recompute_from is not None and previous.complete):
        return previous
    if is_rank_zero():
        _delete_after(out, keep, total)
    if keep == 0:
        if is_rank_zero():
            with contextlib.suppress(FileNotFoundError):
                (out / "record.json").unlink()
        return None
    record = cut(previous, keep, resummarize)
    if is_rank_zero():
        atomic_write_json(out / "record.json", record.to_json())
    return record


def _delete_after(out: Path, keep: int, total: int) -> None:
    for step in range(keep + 1, total + 2):  # total + 1: nothing is kept beyond the last step, but be thorough
        for path in step_state(out, step):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    for pattern in ARTEFACTS:
        for path in out.glob(pattern):
            path.unlink()


def cut(record: RunRecord, steps: int, resummarize: Callable[[RunRecord], None]) -> RunRecord:
    """A copy of ``record`` holding only its first ``steps`` steps (rows of later steps empty), not complete."""
    record = record.model_copy(deep=True)
    for rows in record.matrix.values():
        for t in range(steps, len(rows)):
            rows[t] = [None] * len(rows[t])
    record.per_class_iou = record.per_class_iou[:steps]
    record.state_size = record.state_size[:steps]
    record.memory_classes = record.memory_classes[:steps]
    record.memory_index = record.memory_index[:steps]
    record.cumulative = {metric: rows[:steps] for metric, rows in record.cumulative.items()}
    record.intervals = {}  # of the last step; the next finished step computes them again
    record.timings["steps"] = [s for s in record.timings.get("steps", []) if s.get("step", 0) <= steps]
    record.steps_done, record.complete = steps, False
    resummarize(record)
    return record


def say(text: str) -> None:
    if is_rank_zero():
        print(text, flush=True)

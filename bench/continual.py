"""The result matrix of a continual run and its summaries (average incremental, forgetting, BWT).

``R[t][j]`` is the score (percent) on task ``j`` after step ``t``, 0-based; entries with ``j > t`` are
``None`` (and ignored if present). A run in progress has only its first rows filled: later rows are missing
or all ``None``, and every summary is computed from the filled rows, i.e. over the tasks seen so far. A NaN
score (a task with no valid class) propagates into every summary that uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ResultMatrix = Sequence[Sequence[float | None]]


def _filled(R: ResultMatrix) -> np.ndarray:
    """The filled lower triangle as float64 ``S×S`` (S = filled rows), NaN above the diagonal."""
    rows: list[list[float]] = []
    for t, row in enumerate(R):
        seen = list(row[: t + 1])
        if len(seen) < t + 1:
            raise ValueError(f"result matrix row {t} has {len(row)} entries, expected at least {t + 1}")
        if all(v is None for v in seen):
            rows.append([])
            continue
        if any(v is None for v in seen):
            raise ValueError(f"result matrix row {t} is partly filled: {list(seen)}; expected a score for "
                             f"every task 0..{t}")
        if rows and not rows[-1]:
            raise ValueError(f"result matrix row {t} is filled but row {t - 1} is not")
        rows.append([float(v) for v in seen])
    while rows and not rows[-1]:
        rows.pop()
    if not rows:
        raise ValueError("result matrix has no filled row")
    out = np.full((len(rows), len(rows)), np.nan)
    for t, row in enumerate(rows):
        out[t, : t + 1] = row
    return out


def average_incremental(R: ResultMatrix) -> float:
    """Mean over steps ``t`` of the mean score over tasks ``0..t``."""
    A = _filled(R)
    return float(np.mean([np.mean(A[t, : t + 1]) for t in range(len(A))]))


def final_average(R: ResultMatrix) -> float:
    """Mean score over all seen tasks after the last filled step."""
    A = _filled(R)
    return float(np.mean(A[-1]))


def forgetting(R: ResultMatrix) -> list[float | None]:
    """Per seen task ``j``: best score before the last step minus the score after it; ``None`` for the last
    task, which has no earlier step to forget from. Positive means forgotten."""
    A = _filled(R)
    last = len(A) - 1
    return [float(np.max(A[j:last, j]) - A[last, j]) for j in range(last)] + [None]


def backward_transfer(R: ResultMatrix) -> float | None:
    """Mean over tasks ``j`` before the last of (score after the last step − score right after learning
    ``j``); ``None`` with a single task. Negative means forgetting."""
    A = _filled(R)
    last = len(A) - 1
    if last == 0:
        return None
    return float(np.mean(A[last, :last] - np.diagonal(A)[:last]))


def forward_transfer(R: ResultMatrix, initial: Sequence[float | None]) -> float | None:
    """Mean over tasks ``j >= 1`` seen so far of ``R[j-1][j] - initial[j]``: how much adapting to the earlier
    tasks changed task j's score before it was adapted to (``initial``: the scores before any step, the base
    alone). The upper-triangle form of GEM's forward transfer (Lopez-Paz & Ranzato, NeurIPS 2017) with the
    base model as the reference; needs ``eval_future``. None with one step or when a needed cell is missing."""
    steps = sum(1 for row in R if any(v is not None for v in row))
    gains = []
    for j in range(1, steps):
        before, alone = R[j - 1][j] if j < len(R[j - 1]) else None, initial[j] if j < len(initial) else None
        if before is None or alone is None:
            return None
        gains.append(float(before) - float(alone))
    return float(np.mean(gains)) if gains else None


def summarize(R: ResultMatrix) -> dict[str, float | list[float | None] | None]:
    """All summaries of a (possibly partial) result matrix: ``average_incremental``, ``final_average``,
    ``forgetting`` (list, one per seen task), ``mean_forgetting`` (None with one task) and ``bwt``."""
    per_task = forgetting(R)
    known = [f for f in per_task if f is not None]
    return {
        "average_incremental": average_incremental(R),
        "final_average": final_average(R),
        "forgetting": per_task,
        "mean_forgetting": math.fsum(known) / len(known) if known else None,
        "bwt": backward_transfer(R),
    }

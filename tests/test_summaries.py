"""PQ rows and summaries of a run record, on hand-built results whose expected numbers are worked out by hand.

A sequence may mix panoptic tasks (PQ scored) with semantic-only ones (no PQ: ``None`` results). Its PQ
summary cannot be a continual one (forgetting needs every task scored); it is the *mean* over the panoptic
tasks of the last row. The values below are chosen so that the mean differs from the max, the min, the last
and first value, the median, the sum over all tasks divided by their number, and the mean of the diagonal.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.run import _record_pq

TASKS = ["a", "b", "c", "d"]  # "b" is semantic-only


def _result(pq: float, sq: float, rq: float, things: float, stuff: float) -> dict[str, Any]:
    """A PanopticQuality result (fractions); the three groups differ so a swapped group shows."""
    return {"All": {"pq": pq, "sq": sq, "rq": rq, "n": 3}, "Things": {"pq": things, "sq": 0.99, "rq": 0.99, "n": 1},
            "Stuff": {"pq": stuff, "sq": 0.98, "rq": 0.98, "n": 2}}


def _record(tasks: list[str]) -> dict[str, Any]:
    T = len(tasks)
    return {"tasks": tasks, "matrix": {"miou": [[None] * T for _ in range(T)]}, "summary": {}}


# results[t] = what module.pq_results holds after step t: one entry per task seen so far.
A0, A3 = _result(0.30, 0.90, 0.40, 0.45, 0.35), _result(0.10, 0.50, 0.20, 0.05, 0.15)
C2, C3 = _result(0.25, 0.60, 0.35, 0.30, 0.20), _result(0.20, 0.55, 0.30, 0.25, 0.16)
D3 = _result(0.90, 0.80, 0.95, 0.60, 0.80)
MIXED_STEPS = [[A0], [A0, None], [A0, None, C2], [A3, None, C3, D3]]


def _run_mixed() -> dict[str, Any]:
    record = _record(TASKS)
    for t, results in enumerate(MIXED_STEPS):
        _record_pq(record, results, t)
    return record


def test_mixed_sequence_pq_summary_is_the_mean_over_panoptic_tasks_of_the_last_row():
    """Guards: the mixed panoptic/semantic PQ summary taking the max (or min, last, sum/T, diagonal) of the
    scored cells instead of their mean (``bench/run.py`` ``_record_pq``)."""
    record = _run_mixed()
    # Last row, in percent: a=10, c=20, d=90 (b has no PQ). Mean 40; max/last 90, min 10, median 20,
    # sum/4 = 30, diagonal mean (30 + 25 + 90) / 3 = 48.33.
    assert record["matrix"]["pq"][3] == [10.0, None, 20.0, 90.0]
    expected = {"pq": (10 + 20 + 90) / 3, "sq": (50 + 55 + 80) / 3, "rq": (20 + 30 + 95) / 3,
                "pq_things": (5 + 25 + 60) / 3, "pq_stuff": (15 + 16 + 80) / 3}
    for metric, value in expected.items():
        summary = record["summary"][metric]
        assert summary["final_average"] == pytest.approx(value, abs=1e-9), metric
        # No continual summary: the semantic task has no PQ to forget.
        assert summary["average_incremental"] is None and summary["mean_forgetting"] is None, metric
        assert summary["bwt"] is None and summary["forgetting"] == [None] * 4, metric
    assert expected["pq"] == 40.0


def test_mixed_sequence_pq_rows_and_intermediate_summaries():
    """Guards: PQ cells written to the wrong row or column, a semantic task given a 0 instead of no cell, and
    the intermediate summaries (a run stopped after step t) averaging anything but row t's panoptic cells."""
    record = _record(TASKS)
    expected_final = [30.0, 30.0, (30 + 25) / 2, 40.0]
    for t, results in enumerate(MIXED_STEPS):
        _record_pq(record, results, t)
        assert record["summary"]["pq"]["final_average"] == pytest.approx(expected_final[t], abs=1e-9), t
    assert record["matrix"]["pq"] == [[30.0, None, None, None], [30.0, None, None, None],
                                      [30.0, None, 25.0, None], [10.0, None, 20.0, 90.0]]
    assert record["matrix"]["pq_things"][3] == [5.0, None, 25.0, 60.0]
    assert record["matrix"]["pq_stuff"][3] == [15.0, None, 16.0, 80.0]
    assert record["matrix"]["sq"][2] == [90.0, None, 60.0, None]
    assert record["matrix"]["rq"][3] == [20.0, None, 30.0, 95.0]
    assert record["matrix"]["miou"] == [[None] * 4 for _ in range(4)]  # PQ leaves the mIoU matrix alone


def test_all_panoptic_sequence_gets_the_continual_pq_summary():
    """Guards: an all-panoptic sequence losing its PQ forgetting/BWT (the continual summary must be used when every
    task is scored). R = [[50, -], [40, 70]]: final 55, average incremental (50 + 55) / 2, forgetting [10, -]."""
    record = _record(["a", "b"])
    _record_pq(record, [_result(0.5, 0.5, 0.5, 0.5, 0.5)], 0)
    _record_pq(record, [_result(0.4, 0.4, 0.4, 0.4, 0.4), _result(0.7, 0.7, 0.7, 0.7, 0.7)], 1)
    summary = record["summary"]["pq"]
    assert summary["final_average"] == pytest.approx(55.0, abs=1e-9)
    assert summary["average_incremental"] == pytest.approx(52.5, abs=1e-9)
    assert summary["forgetting"][0] == pytest.approx(10.0, abs=1e-9) and summary["forgetting"][1] is None
    assert summary["mean_forgetting"] == pytest.approx(10.0, abs=1e-9)
    assert summary["bwt"] == pytest.approx(-10.0, abs=1e-9)


def test_a_sequence_without_panoptic_tasks_gets_no_pq_entries():
    record = _record(["a", "b"])
    _record_pq(record, [None], 0)
    _record_pq(record, [None, None], 1)
    assert set(record["matrix"]) == {"miou"} and record["summary"] == {}


def test_a_semantic_first_task_then_a_panoptic_one():
    """The first panoptic task arrives at step 2: rows before it hold ``None`` cells; the summary of step 1 has no
    PQ average (nothing scored), step 2's is task b's alone."""
    record = _record(["a", "b"])
    _record_pq(record, [None], 0)
    _record_pq(record, [None, _result(0.6, 0.6, 0.6, 0.6, 0.6)], 1)
    assert record["matrix"]["pq"] == [[None, None], [None, 60.0]]
    assert record["summary"]["pq"]["final_average"] == pytest.approx(60.0, abs=1e-9)

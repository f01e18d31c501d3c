"""Result matrix summaries on hand-worked matrices."""

from __future__ import annotations

import math

import pytest

from bench.continual import average_incremental, backward_transfer, final_average, forgetting, summarize

# After step 1, task 0 went up (50 -> 55): its forgetting uses that best score, BWT uses the diagonal.
R3 = [
    [50.0, None, None],
    [55.0, 60.0, None],
    [30.0, 54.0, 72.0],
]


def test_hand_worked_3x3() -> None:
    # per-step averages: 50, (55 + 60) / 2 = 57.5, (30 + 54 + 72) / 3 = 52
    assert average_incremental(R3) == pytest.approx((50 + 57.5 + 52) / 3)
    assert final_average(R3) == pytest.approx(52.0)
    # task 0: max(50, 55) - 30 = 25; task 1: 60 - 54 = 6; task 2: never revisited
    assert forgetting(R3) == pytest.approx([25.0, 6.0, None])
    # ((30 - 50) + (54 - 60)) / 2
    assert backward_transfer(R3) == pytest.approx(-13.0)
    summary = summarize(R3)
    assert summary["forgetting"] == pytest.approx([25.0, 6.0, None])
    del summary["forgetting"]
    assert summary == pytest.approx({
        "average_incremental": 159.5 / 3,
        "final_average": 52.0,
        "mean_forgetting": 15.5,
        "bwt": -13.0,
    })


@pytest.mark.parametrize("partial", [R3[:2], [*R3[:2], [None, None, None]]])
def test_partial_matrix_uses_filled_rows(partial: list) -> None:
    summary = summarize(partial)
    assert summary["average_incremental"] == pytest.approx((50 + 57.5) / 2)
    assert summary["final_average"] == pytest.approx(57.5)
    assert summary["forgetting"] == pytest.approx([-5.0, None])  # task 0 improved
    assert summary["mean_forgetting"] == pytest.approx(-5.0)
    assert summary["bwt"] == pytest.approx(5.0)


@pytest.mark.parametrize("single", [[[42.0]], [[42.0, None, None], [None, None, None]]])
def test_single_task(single: list) -> None:
    assert summarize(single) == {
        "average_incremental": 42.0,
        "final_average": 42.0,
        "forgetting": [None],
        "mean_forgetting": None,
        "bwt": None,
    }


def test_nan_propagates() -> None:
    summary = summarize([[math.nan, None], [50.0, 60.0]])
    assert math.isnan(summary["average_incremental"])
    assert summary["final_average"] == pytest.approx(55.0)  # task 0 recovered a score
    assert math.isnan(summary["forgetting"][0]) and summary["forgetting"][1] is None
    assert math.isnan(summary["mean_forgetting"])
    assert math.isnan(summary["bwt"])


def test_nan_in_last_row() -> None:
    summary = summarize([[40.0, None], [math.nan, 60.0]])
    assert math.isnan(summary["final_average"])
    assert math.isnan(summary["forgetting"][0])
    assert math.isnan(summary["bwt"])


@pytest.mark.parametrize(("matrix", "message"), [
    ([], "no filled row"),
    ([[None]], "no filled row"),
    ([[50.0, None], [None, 60.0]], "partly filled"),
    ([[None, None], [50.0, 60.0]], "row 0 is not"),
    ([[50.0], [55.0]], "at least 2"),
])
def test_malformed_matrix_raises(matrix: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summarize(matrix)

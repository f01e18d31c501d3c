"""How far a score may move from its reference before the regression gate calls it worse (or better): the defaults,
and the lookup from a reference's ``tolerances`` (per metric and kind of value). Read by bench.regress and
bench.history."""

from __future__ import annotations

from typing import Any

DEFAULT_TOLERANCES: dict[str, float] = {
    "default": 0.5,
    "matrix": 0.5,
    "average_incremental": 0.5,
    "final_average": 0.5,
    "bwt": 1.0,
    "forgetting": 1.0,
    "mean_forgetting": 1.0,
}


def tolerance_for(tolerances: dict[str, Any], metric: str, kind: str) -> float:
    for key in (f"{metric}.{kind}", kind, "default"):
        if key in tolerances:
            return float(tolerances[key])
    return DEFAULT_TOLERANCES["default"]

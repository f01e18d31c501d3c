"""benchmarks/gpu_check.py: the record comparison (hand-worked) and the skip where no GPU exists."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check


def _record(miou, pq=None):
    matrix = {"miou": miou}
    if pq is not None:
        matrix["pq"] = pq
    return {"matrix": matrix}


def test_cell_differences_beyond_the_tolerance_are_listed():
    cpu = _record([[50.0, None], [49.0, 30.0]], pq=[[20.0, None], [21.0, None]])
    assert gpu_check.cell_differences(cpu, _record([[50.2, None], [49.0, 30.4]], pq=[[20.0, None], [21.0, None]]),
                                      0.5) == []
    diff = gpu_check.cell_differences(cpu, _record([[50.6, None], [49.0, None]], pq=[[20.0, None], [21.0, None]]),
                                      0.5)
    assert diff == ["miou[0][0]: cpu 50.0, gpu 50.6", "miou[1][1]: cpu 30.0, gpu None"]
    assert gpu_check.cell_differences(cpu, _record([[50.0, None], [49.0, 30.0]]), 0.5) == ["pq: in one record only"]


def test_it_skips_with_a_message_where_there_is_no_gpu(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the check itself runs (make gpu-check)")
    assert gpu_check.main(["--out", str(tmp_path / "x.json")]) == 0
    assert "gpu-check skipped: torch" in capsys.readouterr().out and not (tmp_path / "x.json").exists()

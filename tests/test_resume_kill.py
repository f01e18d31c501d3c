"""A run killed with SIGKILL (no Python cleanup at all) resumes from its last finished step and ends with the
record an uninterrupted run writes; the lock of the killed process does not block the rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS = ["SEQ=synth", "adapt_limit=8", "eval_limit=4", "progress=false", "wandb=false"]
VARYING = ("timings", "git_commit", "versions")


def _bench(out: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "bench", "run", *ARGS, f"output_dir={out}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _comparable(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in VARYING}
    out["config"] = {k: v for k, v in record["config"].items() if k != "output_dir"}
    return out


def test_sigkill_after_a_step_resumes_to_the_uninterrupted_record(tmp_path: Path) -> None:
    whole = _bench(tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, whole.stdout.read()[-2000:]
    (expected,) = (tmp_path / "whole").glob("synth/knn/*/record.json")

    killed = _bench(tmp_path / "cut")
    deadline = time.monotonic() + 600
    record_path = None
    while time.monotonic() < deadline and killed.poll() is None:
        found = list((tmp_path / "cut").glob("synth/knn/*/record.json"))
        if found and json.loads(found[0].read_text() or "{}").get("steps_done", 0) >= 1:
            record_path = found[0]
            break
        time.sleep(0.05)
    assert record_path is not None and killed.poll() is None, "the run ended before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    partial = json.loads(record_path.read_text())
    assert not partial["complete"] and 1 <= partial["steps_done"] < 3

    again = _bench(tmp_path / "cut")
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output[-2000:]
    assert "resuming" in output
    assert _comparable(json.loads(record_path.read_text())) == _comparable(json.loads(expected.read_text()))
